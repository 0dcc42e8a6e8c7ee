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
    ({"prompt": "a", "guidance": -1}, "guidance"), ({"prompt": "a", "candidates": 0}, "candidates"),
    ({"prompt": "a", "candidates": 5}, "candidates"),
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


def _wait_running(client, job_id, timeout=5.0):
    deadline = time.time() + timeout
    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
        assert time.time() < deadline, "job did not start"
        time.sleep(0.01)


def test_concurrent_jobs_all_finish_and_the_queue_is_bounded():
    gate = threading.Event()
    client = TestClient(create_app(runner=_fake_runner(gate=gate), max_queued=3))
    ids = [client.post("/v1/generate", json={"prompt": "p0", "seed": 0}).json()["id"]]
    _wait_running(client, ids[0])
    ids += [client.post("/v1/generate", json={"prompt": f"p{i}", "seed": i}).json()["id"] for i in range(1, 4)]
    full = client.post("/v1/generate", json={"prompt": "one too many"})  # 1 running + 3 queued
    assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
    assert client.get(f"/v1/jobs/{ids[3]}").json()["position"] == 2
    gate.set()
    for i, job_id in enumerate(ids):
        status = _wait(client, job_id)
        assert status["status"] == "done"
        assert read_video(client.get(status["video"]).content)[0, 0, 0, 0] == i


def test_real_pipeline_runner(tiny_model_dir):
    from kinema.pipeline import TextToVideoPipeline

    client = TestClient(create_app(runner=pipeline_runner(TextToVideoPipeline.from_pretrained(tiny_model_dir))))
    job = client.post("/v1/generate", json={"prompt": "a red circle moving left", "steps": 3, "candidates": 2}).json()
    status = _wait(client, job["id"], timeout=60)
    assert status["status"] == "done", status
    assert read_video(client.get(status["video"]).content).shape == (5, 32, 32, 3)


# ---------------------------------------------------------------------------------------------------
# Validation: never a 500, never a long echo, strict types, checks at submit time
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, field", [
    ('{"prompt": "a", "guidance": NaN}', "guidance"), ('{"prompt": "a", "guidance": Infinity}', "guidance"),
    ('{"prompt": "a", "seed": NaN}', "seed"), ('{"prompt": "\\ud800 lone"}', "body"),
    ('{"prompt": "a", "colour": "red"}', "colour"), ('{"prompt": "a", "steps": true}', "steps"),
    ('{"prompt": "a", "seed": "3"}', "seed"), ('{"prompt": 5}', "prompt"), ('not json', "body"),
    ('{"prompt": "a", "image": "bm90IGFuIGltYWdl"}', "body"),
])
def test_bad_requests_are_422_with_a_short_answer(raw, field):
    client = TestClient(create_app(runner=_fake_runner()))
    r = client.post("/v1/generate", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert len(r.content) <= 1024
    assert any(field in " ".join(map(str, err.get("loc", ["body"]))) for err in r.json()["detail"])


def test_a_422_never_echoes_a_long_request():
    client = TestClient(create_app(runner=_fake_runner()))
    r = client.post("/v1/generate", json={"prompt": "x" * 400, **{f"f{i}": "y" * 300 for i in range(30)}})
    assert r.status_code == 422 and len(r.content) <= 1024 and "yyyy" not in r.text


def test_a_prompt_the_model_rejects_is_rejected_at_submit(tiny_model_dir):
    from kinema.pipeline import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(tiny_model_dir)
    ran = []
    client = TestClient(create_app(pipe=pipe, runner=lambda job: ran.append(job) or b""))
    r = client.post("/v1/generate", json={"prompt": "a red circle", "frames": 6})  # not 1 + 4k
    assert r.status_code == 422 and "1 + 4*k" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/generate", json={"prompt": "a red circle", "size": [36, 36]})  # not a multiple of 8
    assert r.status_code == 422 and "multiple" in r.json()["detail"][0]["msg"]
    assert ran == []


def test_model_defaults_and_limits(tiny_model_dir):
    from kinema.pipeline import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(tiny_model_dir)
    m = TestClient(create_app(pipe=pipe, runner=_fake_runner())).get("/v1/model").json()
    assert m["defaults"]["steps"] == pipe.index.steps and m["defaults"]["guidance"] == pipe.index.guidance
    assert m["defaults"]["sampler"] == "euler"  # a folder that names none: its objective's first
    assert m["limits"]["prompt_chars"] == 500


def test_an_uploaded_image_reaches_the_runner_as_a_file(tmp_path):
    import base64
    import io

    from PIL import Image

    seen = []

    def runner(job):
        seen.append(Image.open(job.request.image).getpixel((0, 0)))
        return encode_mp4(np.zeros((5, 16, 16, 3), np.uint8))

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    client = TestClient(create_app(runner=runner, state_dir=tmp_path))
    job = client.post("/v1/generate", json={"prompt": "it moves", "image": url}).json()
    assert _wait(client, job["id"])["status"] == "done" and seen == [(200, 10, 10)]


# ---------------------------------------------------------------------------------------------------
# Durability: a restart keeps queued jobs; finished ones are pruned with their files
# ---------------------------------------------------------------------------------------------------


def test_queued_jobs_survive_a_restart_and_run(tmp_path):
    def crash(job):  # the worker thread dies mid-job, as when the process is killed
        raise SystemExit

    first = TestClient(create_app(runner=crash, state_dir=tmp_path))
    ids = [first.post("/v1/generate", json={"prompt": f"p{i}", "seed": i}).json()["id"] for i in range(3)]
    _wait_running(first, ids[0])
    time.sleep(0.1)
    assert [first.get(f"/v1/jobs/{i}").json()["status"] for i in ids] == ["running", "queued", "queued"]
    second = TestClient(create_app(runner=_fake_runner(), state_dir=tmp_path))  # a new process, same state
    for i, job_id in enumerate(ids):
        status = _wait(second, job_id)
        assert status["status"] == "done"
        assert read_video(second.get(status["video"]).content)[0, 0, 0, 0] == i


def test_finished_jobs_are_pruned_with_their_files(tmp_path):
    client = TestClient(create_app(runner=_fake_runner(), state_dir=tmp_path, keep_finished=2))
    ids = []
    for i in range(5):
        ids.append(client.post("/v1/generate", json={"prompt": f"p{i}", "seed": i}).json()["id"])
        _wait(client, ids[-1])
    assert [client.get(f"/v1/jobs/{i}").status_code for i in ids] == [404, 404, 404, 200, 200]
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2
    assert [j["id"] for j in client.get("/v1/jobs").json()] == ids[:2:-1]


# ---------------------------------------------------------------------------------------------------
# Fuzz: whatever JSON arrives, the answer is 202, 422 or 429, never 500
# ---------------------------------------------------------------------------------------------------


def test_fuzzed_requests_never_get_a_500():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client = TestClient(create_app(runner=_fake_runner(), max_queued=1000))
    scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=40)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=8), inner, max_size=3), max_leaves=6)
    fields = st.sampled_from(["prompt", "seed", "steps", "guidance", "frames", "size", "expand", "image",
                              "negative_prompt", "other"])
    bodies = st.dictionaries(fields, values, max_size=5) | st.builds(lambda p, d: {"prompt": p, **d},
                                                                     st.text(max_size=60),
                                                                     st.dictionaries(fields, values, max_size=3))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def check(body):
        import json

        raw = json.dumps(body, allow_nan=True)  # NaN and Infinity too, as a careless client sends them
        r = client.post("/v1/generate", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code in (202, 422, 429), (body, r.status_code, r.text[:200])
        assert len(r.content) <= 1024

    check()
