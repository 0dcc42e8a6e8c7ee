import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from kinema.io.video import encode_mp4, read_video  # noqa: E402
from kinema.serve.app import create_app, pipeline_runner  # noqa: E402


def _fake_runner(delay=0.0, gate: threading.Event | None = None):
    def run(job):
        if gate:
            gate.wait(5)
        time.sleep(delay)
        if "explode" in job.request.prompt:
            raise ValueError("frames must be 1 + 4*k")
        frames = np.full((job.request.frames or 5, 16, 16, 3), job.request.seed % 255, dtype=np.uint8)
        return encode_mp4(frames)
    return run


def _wait(client, job_id, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.02)
    raise AssertionError("job did not finish")


def test_health_and_page():
    client = TestClient(create_app(runner=_fake_runner()))
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "<video" in page.text and "/v1/generate" in page.text


def test_job_lifecycle_and_video():
    client = TestClient(create_app(runner=_fake_runner()))
    r = client.post("/v1/generate", json={"prompt": "a red circle", "seed": 3, "frames": 9})
    assert r.status_code == 202
    status = _wait(client, r.json()["id"])
    assert status["status"] == "done" and status["progress"] == 1.0
    video = client.get(status["video"])
    assert video.headers["content-type"] == "video/mp4"
    assert read_video(video.content).shape[0] == 9


@pytest.mark.parametrize("body, field", [
    ({"prompt": ""}, "prompt"), ({"prompt": "   "}, "prompt"), ({"prompt": "x" * 501}, "prompt"),
    ({"prompt": "a", "steps": 0}, "steps"), ({"prompt": "a", "frames": 999}, "frames"),
    ({"prompt": "a", "size": [64]}, "size"), ({"prompt": "a", "size": [8, 64]}, "size"),
    ({"prompt": "a", "guidance": -1}, "guidance"),
])
def test_validation_errors_name_the_field(body, field):
    client = TestClient(create_app(runner=_fake_runner()))
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422
    assert any(field in str(err["loc"]) for err in r.json()["detail"])


def test_unknown_job_and_unfinished_video():
    gate = threading.Event()
    client = TestClient(create_app(runner=_fake_runner(gate=gate)))
    assert client.get("/v1/jobs/nope").status_code == 404
    job = client.post("/v1/generate", json={"prompt": "a"}).json()
    assert client.get(f"/v1/jobs/{job['id']}/video.mp4").status_code == 409
    gate.set()
    _wait(client, job["id"])


def test_failed_job_reports_the_error():
    client = TestClient(create_app(runner=_fake_runner()))
    job = client.post("/v1/generate", json={"prompt": "explode"}).json()
    status = _wait(client, job["id"])
    assert status["status"] == "failed" and "1 + 4*k" in status["error"]


def test_concurrent_jobs_all_finish_and_the_queue_is_bounded():
    gate = threading.Event()
    client = TestClient(create_app(runner=_fake_runner(gate=gate), max_queued=3))
    ids = [client.post("/v1/generate", json={"prompt": f"p{i}", "seed": i}).json()["id"] for i in range(4)]
    assert client.post("/v1/generate", json={"prompt": "one too many"}).status_code == 429  # 1 running + 3 queued
    gate.set()
    for i, job_id in enumerate(ids):
        status = _wait(client, job_id)
        assert status["status"] == "done"
        assert read_video(client.get(status["video"]).content)[0, 0, 0, 0] == i


def test_real_pipeline_runner(tiny_model_dir):
    from kinema.pipeline import TextToVideoPipeline

    client = TestClient(create_app(runner=pipeline_runner(TextToVideoPipeline.from_pretrained(tiny_model_dir))))
    job = client.post("/v1/generate", json={"prompt": "a red circle moving left", "steps": 3}).json()
    status = _wait(client, job["id"], timeout=60)
    assert status["status"] == "done", status
    assert read_video(client.get(status["video"]).content).shape == (5, 32, 32, 3)
