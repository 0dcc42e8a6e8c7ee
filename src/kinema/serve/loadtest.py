"""A load test of the HTTP server: N clients against 127.0.0.1, each submitting jobs and polling them to the
end. The server runs in its own process with a stand-in runner (a fixed mp4 after `job_ms`), so what is
measured is the server: queueing, the database, files, memory. 429 answers are retried after Retry-After.

    python -m kinema.serve.loadtest --clients 50 --jobs 20        # prints the report as JSON

Report: sent (POSTs), accepted (202), rejected (429), completed (done), failed, lost (accepted and never done),
latency p50 / p95 (accept -> done, seconds), server RSS before and after (MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_stand_in(port: int, state_dir: str, job_ms: float, max_queued: int, keep_finished: int) -> None:
    """The server process: the real app with a stand-in runner."""
    import numpy as np
    import uvicorn

    from kinema.io.video import encode_mp4
    from kinema.serve.app import create_app

    video = encode_mp4(np.zeros((5, 16, 16, 3), np.uint8))

    def run(job) -> bytes:
        time.sleep(job_ms / 1000)
        return video

    app = create_app(runner=run, state_dir=state_dir, max_queued=max_queued, keep_finished=keep_finished)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def load_test(clients: int = 50, jobs: int = 20, job_ms: float = 5.0, max_queued: int = 64,
              keep_finished: int = 200, timeout_s: float = 600.0) -> dict:
    import httpx

    port, state = _free_port(), tempfile.mkdtemp(prefix="kinema-load-")
    server = subprocess.Popen([sys.executable, "-m", "kinema.serve.loadtest", "--serve", str(port), "--state", state,
                               "--job-ms", str(job_ms), "--max-queued", str(max_queued),
                               "--keep-finished", str(keep_finished)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(base + "/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        rss_before = _rss_mib(server.pid)
        counts = {"sent": 0, "accepted": 0, "rejected": 0, "completed": 0, "failed": 0, "lost": 0}
        latencies: list[float] = []
        lock = threading.Lock()
        stop = time.time() + timeout_s

        def client(c: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                for j in range(jobs):
                    while True:
                        r = http.post("/v1/generate", json={"prompt": f"a red circle {c} {j}", "seed": j})
                        with lock:
                            counts["sent"] += 1
                        if r.status_code != 429 or time.time() > stop:
                            break
                        with lock:
                            counts["rejected"] += 1
                        time.sleep(float(r.headers.get("Retry-After", "1")) * 0.1)  # a polite, eager client
                    if r.status_code != 202:
                        continue
                    accepted, job_id = time.time(), r.json()["id"]
                    with lock:
                        counts["accepted"] += 1
                    status = "queued"
                    while status in ("queued", "running") and time.time() < stop:
                        time.sleep(0.02)
                        status = http.get(f"/v1/jobs/{job_id}").json()["status"]
                    with lock:
                        key = {"done": "completed", "failed": "failed"}.get(status, "lost")
                        counts[key] += 1
                        if status == "done":
                            latencies.append(time.time() - accepted)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - started
        rss_after = _rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    return {**counts, "clients": clients, "jobs_per_client": jobs, "job_ms": job_ms, "wall_s": round(wall, 1),
            "jobs_per_s": round(counts["completed"] / wall, 1), "p50_s": round(q(0.5), 3), "p95_s": round(q(0.95), 3),
            "rss_before_mib": round(rss_before, 1), "rss_after_mib": round(rss_after, 1),
            "videos_on_disk": len(list((Path(state) / "videos").glob("*.mp4"))), "cpu_count": os.cpu_count()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--jobs", type=int, default=20, help="jobs per client")
    p.add_argument("--job-ms", type=float, default=5.0, help="the stand-in runner's time per job")
    p.add_argument("--max-queued", type=int, default=64)
    p.add_argument("--keep-finished", type=int, default=200)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: be the server on this port
    p.add_argument("--state", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve_stand_in(args.serve, args.state, args.job_ms, args.max_queued, args.keep_finished)
        return
    print(json.dumps(load_test(args.clients, args.jobs, args.job_ms, args.max_queued, args.keep_finished), indent=2))


if __name__ == "__main__":
    main()
