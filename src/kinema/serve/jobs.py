"""Durable generation jobs: a SQLite table in a state folder, result videos as files beside it.

    store = JobStore("out/serve", max_queued=8)
    job_id = store.submit({"prompt": ...})            # QueueFull (with a Retry-After estimate) when full
    job = store.claim()                               # the oldest queued job, now running (one worker)
    store.finish(job.id, mp4_bytes) / store.fail(job.id, "why")

A restart finds the jobs that were queued and re-queues the one that was running when the process died, so
nothing accepted is lost. Finished jobs are kept up to `keep_finished` and `max_age_s`, then deleted with their
files, so disk and memory stay flat however long the server runs.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,            -- queued, running, done, failed
    request TEXT NOT NULL,           -- the validated request, JSON
    prompt TEXT,                     -- as the model saw it (expanded)
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    video TEXT                       -- file name under videos/, when done
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created);
"""


class QueueFull(Exception):
    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"the queue is full ({queued} jobs waiting); try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class JobRecord:
    id: str
    status: str
    request: dict
    prompt: str | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    video: str | None


class JobStore:
    def __init__(self, state_dir: str | Path, max_queued: int = 8, keep_finished: int = 200,
                 max_age_s: float = 24 * 3600):
        self.dir = Path(state_dir)
        (self.dir / "videos").mkdir(parents=True, exist_ok=True)
        self.max_queued, self.keep_finished, self.max_age_s = max_queued, keep_finished, max_age_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.dir / "jobs.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        with self._lock:  # a job running when the last process died runs again
            self._db.execute("UPDATE jobs SET status='queued', started=NULL WHERE status='running'")
        for tmp in (self.dir / "videos").glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    # -----------------------------------------------------------------------------------------------

    def submit(self, request: dict) -> str:
        with self._lock:
            queued = self._count("queued")
            if queued >= self.max_queued:
                raise QueueFull(queued, self._retry_after())
            job_id = uuid.uuid4().hex[:12]
            self._db.execute("INSERT INTO jobs (id, status, request, created) VALUES (?, 'queued', ?, ?)",
                             (job_id, json.dumps(request), time.time()))
        return job_id

    def claim(self) -> JobRecord | None:
        """The oldest queued job, marked running; None when there is none."""
        with self._lock:
            row = self._db.execute("SELECT id FROM jobs WHERE status='queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE jobs SET status='running', started=? WHERE id=?", (time.time(), row[0]))
        return self.get(row[0])

    def finish(self, job_id: str, video: bytes, prompt: str | None = None) -> None:
        name = f"{job_id}.mp4"
        tmp = self.dir / "videos" / f"{name}.tmp"
        tmp.write_bytes(video)
        os.replace(tmp, self.dir / "videos" / name)
        with self._lock:
            self._db.execute("UPDATE jobs SET status='done', video=?, prompt=?, finished=? WHERE id=?",
                             (name, prompt, time.time(), job_id))
        self.prune()

    def fail(self, job_id: str, error: str) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET status='failed', error=?, finished=? WHERE id=?",
                             (error[:2000], time.time(), job_id))
        self.prune()

    def set_prompt(self, job_id: str, prompt: str) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET prompt=? WHERE id=?", (prompt, job_id))

    # -----------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT id, status, request, prompt, error, created, started, finished, video "
                                   "FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            return None
        return JobRecord(row[0], row[1], json.loads(row[2]), *row[3:])

    def video_path(self, job: JobRecord) -> Path | None:
        return self.dir / "videos" / job.video if job.video else None

    def position(self, job: JobRecord) -> int:
        """Jobs ahead of a queued job (0: next)."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status='queued' AND created < ?",
                                    (job.created,)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    def recent(self, limit: int = 20) -> list[JobRecord]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM jobs ORDER BY created DESC LIMIT ?", (limit,))]
        return [j for j in map(self.get, ids) if j is not None]

    def prune(self) -> int:
        """Delete finished jobs beyond `keep_finished` (oldest first) or older than `max_age_s`, with their files."""
        with self._lock:
            rows = self._db.execute("SELECT id, video, finished FROM jobs WHERE status IN ('done', 'failed') "
                                    "ORDER BY finished DESC").fetchall()
            cutoff = time.time() - self.max_age_s
            gone = [(i, v) for n, (i, v, f) in enumerate(rows) if n >= self.keep_finished or (f or 0) < cutoff]
            self._db.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i, _ in gone])
        for _, video in gone:
            if video:
                (self.dir / "videos" / video).unlink(missing_ok=True)
        return len(gone)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -----------------------------------------------------------------------------------------------

    def _count(self, status: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status,)).fetchone()[0]

    def _retry_after(self) -> int:
        """Seconds until a slot is likely free: the mean of recent job durations (1 s when none are known)."""
        rows = self._db.execute("SELECT finished - started FROM jobs WHERE status='done' AND started IS NOT NULL "
                                "ORDER BY finished DESC LIMIT 20").fetchall()
        mean = sum(r[0] for r in rows) / len(rows) if rows else 1.0
        return max(1, math.ceil(mean))
