"""Slow fault injection (`make test-slow`): kill -9 a training run at random moments until it finishes, kill -9
the server with jobs queued and restart it, and 50 clients against the server. The fast fault cases (bit
flips, a NaN loss, a crashed worker, fuzzed requests) are in test_train_loop.py and test_serve.py."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from kinema.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def _train(latents, out, steps):
    return [sys.executable, "-m", "kinema.cli", "dit", "train", "--latents", str(latents), "--preset", "tiny",
            "--out", str(out), "--steps", str(steps), "--ckpt-every", "20", "--batch-size", "4"]


def test_kill_9_at_random_moments_until_done_matches_a_straight_run(tiny_latents, tmp_path):
    steps, env, rng = 300, {**os.environ, "OMP_NUM_THREADS": "1"}, random.Random(0)
    started = time.perf_counter()
    subprocess.run(_train(tiny_latents, tmp_path / "straight", steps), check=True, env=env, capture_output=True)
    whole = time.perf_counter() - started  # a run from scratch, startup included
    kills = 0
    while True:
        proc = subprocess.Popen(_train(tiny_latents, tmp_path / "killed", steps), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:  # kills land anywhere in a run (steps and checkpoint writes), each resume gets a little further
            proc.wait(timeout=rng.uniform(0.35, 0.5) * whole)
            assert proc.returncode == 0
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    assert kills >= 3, "the run finished before it could be killed a few times"
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / f"step-{steps:07d}.safetensors")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / f"step-{steps:07d}.safetensors")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*.tmp"))  # killed writes cleaned up
    steps_logged = [int(line.split('"step": ')[1].split(",")[0])
                    for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(set(steps_logged))  # every step once, in order


def test_kill_9_the_server_with_queued_jobs_and_restart(tmp_path):
    import httpx

    from kinema.serve.loadtest import _free_port

    def start(port):
        return subprocess.Popen([sys.executable, "-m", "kinema.serve.loadtest", "--serve", str(port), "--state",
                                 str(tmp_path), "--job-ms", "300"])

    def wait_up(base):
        for _ in range(300):
            try:
                return httpx.get(base + "/health", timeout=1).json()
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("server did not start")

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = start(port)
    wait_up(base)
    ids = [httpx.post(base + "/v1/generate", json={"prompt": f"p{i}"}).json()["id"] for i in range(8)]
    time.sleep(0.5)  # one or two done, one running, the rest queued
    server.send_signal(signal.SIGKILL)
    server.wait()
    server = start(port)
    try:
        wait_up(base)
        deadline = time.time() + 60
        while time.time() < deadline:
            states = [httpx.get(f"{base}/v1/jobs/{i}").json()["status"] for i in ids]
            if all(s == "done" for s in states):
                break
            time.sleep(0.2)
        assert states == ["done"] * 8  # nothing accepted is lost
    finally:
        server.terminate()
        server.wait(10)


def test_fifty_clients_lose_nothing_and_memory_stays_flat():
    from kinema.serve.loadtest import load_test

    r = load_test(clients=50, jobs=6, max_queued=16, keep_finished=100)
    assert r["lost"] == 0 and r["failed"] == 0 and r["completed"] == r["accepted"] == 300
    assert r["rejected"] > 0  # the bounded queue pushed back (429 + Retry-After) and the clients retried
    assert r["videos_on_disk"] == 100 and r["rss_after_mib"] - r["rss_before_mib"] < 50
