"""HTTP API and one static page over `TextToVideoPipeline` (FastAPI).

    POST /v1/generate          {"prompt", "seed", "steps", "guidance", "frames", "size"} -> {"id", "status"}
    GET  /v1/jobs/{id}         status (queued / running / done / failed), progress in [0, 1], error
    GET  /v1/jobs/{id}/video.mp4
    GET  /health
    GET  /                     the page: prompt box, progress, <video> player

Jobs run one at a time on a worker thread, off the event loop; the queue is bounded (429 when full) and
every request field is validated with limits (422 with the field named). Binds 127.0.0.1 by default.
"""

from __future__ import annotations

import queue
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field, field_validator

STATIC = Path(__file__).with_name("static")


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=500)
    negative_prompt: str | None = Field(default=None, max_length=500)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    steps: int | None = Field(default=None, ge=1, le=200)
    guidance: float | None = Field(default=None, ge=0.0, le=30.0)
    frames: int | None = Field(default=None, ge=1, le=65)
    size: list[int] | None = Field(default=None, min_length=2, max_length=2, description="[height, width]")
    expand: bool = True

    @field_validator("prompt")
    @classmethod
    def not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be blank")
        return v

    @field_validator("size")
    @classmethod
    def size_in_range(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not all(16 <= s <= 256 for s in v):
            raise ValueError("size must be [height, width], each in [16, 256]")
        return v


@dataclass
class Job:
    id: str
    request: GenerateRequest
    status: str = "queued"
    progress: float = 0.0
    error: str | None = None
    prompt: str | None = None  # as the model saw it (expanded)
    video: bytes | None = field(default=None, repr=False)


class JobQueue:
    """A bounded queue with one worker thread that owns the pipeline."""

    def __init__(self, run, max_queued: int = 8):
        self.run, self.jobs, self.queue = run, {}, queue.Queue(maxsize=max_queued)
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    def submit(self, request: GenerateRequest) -> Job:
        job = Job(uuid.uuid4().hex[:12], request)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise HTTPException(429, f"the queue is full ({self.queue.maxsize} jobs); try again later") from None
        self.jobs[job.id] = job
        return job

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            job.status = "running"
            try:
                job.video = self.run(job)
                job.status, job.progress = "done", 1.0
            except ValueError as e:  # the pipeline's argument checks
                job.status, job.error = "failed", str(e)
            except Exception as e:  # noqa: BLE001 (a failed job must not kill the worker)
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"


def options(request: GenerateRequest):
    """The request as the GenerateOptions every caller passes (kinema.generate); raises ValueError."""
    from kinema.generate import GenerateOptions

    return GenerateOptions(request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
                           guidance=request.guidance, seed=request.seed, frames=request.frames,
                           size=tuple(request.size) if request.size else None, expand=request.expand)


def pipeline_runner(pipe):
    """Run one job on the pipeline; report progress through the sampler's callback."""
    from kinema.generate import generate
    from kinema.io.video import encode_mp4

    def run(job: Job) -> bytes:
        def progress(i: int, total: int) -> None:
            job.progress = min(0.99, (i + 1) / total)

        result = generate(pipe, options(job.request), progress=progress)
        job.prompt = result.prompt
        return encode_mp4(result.video, result.fps)

    return run


def create_app(pipe=None, model_dir: str | Path | None = None, max_queued: int = 8, runner=None) -> FastAPI:
    """The app. Pass a pipeline, a model folder, or (for tests) a `runner(job) -> mp4 bytes`."""
    if runner is None:
        if pipe is None:
            from kinema.generate import default_model
            from kinema.pipeline import TextToVideoPipeline

            pipe = TextToVideoPipeline.from_pretrained(model_dir or default_model())
        runner = pipeline_runner(pipe)
    jobs = JobQueue(runner, max_queued)
    app = FastAPI(title="kinema", description="text-to-video on the shapes world")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "queued": jobs.queue.qsize()}

    @app.post("/v1/generate", status_code=202)
    def generate(request: GenerateRequest) -> dict:
        job = jobs.submit(request)
        return {"id": job.id, "status": job.status}

    def _job(job_id: str) -> Job:
        if job_id not in jobs.jobs:
            raise HTTPException(404, f"no job {job_id!r}")
        return jobs.jobs[job_id]

    @app.get("/v1/jobs/{job_id}")
    def job_status(job_id: str) -> dict:
        job = _job(job_id)
        return {"id": job.id, "status": job.status, "progress": job.progress, "error": job.error,
                "video": f"/v1/jobs/{job.id}/video.mp4" if job.status == "done" else None}

    @app.get("/v1/jobs/{job_id}/video.mp4")
    def job_video(job_id: str) -> Response:
        job = _job(job_id)
        if job.status != "done":
            raise HTTPException(409, f"job {job_id} is {job.status}, not done")
        return Response(job.video, media_type="video/mp4")

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app
