"""HTTP API and one static page over `TextToVideoPipeline` (FastAPI).

    POST /v1/generate          {"prompt", "seed", "steps", "guidance", "frames", "size", "expand", "image"}
                               -> 202 {"id", "status"}; 422 names the field; 429 with Retry-After when full
    GET  /v1/jobs/{id}         status (queued / running / done / failed), progress, queue position, the
                               expanded prompt, error
    GET  /v1/jobs/{id}/video.mp4
    GET  /v1/jobs              recent jobs (the page's gallery)
    GET  /v1/model             the model's defaults and the request limits (the page reads its defaults here)
    GET  /health
    GET  /                     the page: prompt box, optional first-frame image, progress, player, gallery

Jobs live in SQLite in a state folder with their videos as files (serve/jobs.py): they survive a restart, and
old ones are removed. One worker thread owns the pipeline and runs jobs one at a time, off the event loop. A
request is checked in full at submit time (the same GenerateOptions the CLI builds, and the model's own size
checks), so a job that is accepted can run. Binds 127.0.0.1 by default.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kinema.serve.jobs import JobStore, QueueFull

STATIC = Path(__file__).with_name("static")
MAX_PROMPT = 500
MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_ECHO = 1024  # a 422 never repeats more of the request than this
MAX_CANDIDATES = 4  # a request may ask for up to this many starting noises (each more costs ~0.3-0.6x one clip)


class GenerateRequest(BaseModel):
    # unknown fields are errors, and strict types: true is not 1, "3" is not 3
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    steps: int | None = Field(default=None, ge=1, le=200)
    guidance: float | None = Field(default=None, ge=0.0, le=30.0, allow_inf_nan=False)
    frames: int | None = Field(default=None, ge=1, le=65)
    size: list[int] | None = Field(default=None, min_length=2, max_length=2, description="[height, width]")
    expand: bool = True
    candidates: int | None = Field(default=None, ge=1, le=MAX_CANDIDATES, description="starting noises sampled, "
                                   "the clip the model judges closest to the prompt kept (default: the model's)")
    image: str | None = Field(default=None, description="image-to-video: the first frame, base64 PNG or JPEG "
                              "(a data: URL is fine)", max_length=MAX_IMAGE_BYTES * 4 // 3 + 64)

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
    """What a runner sees: the request (with `image` a file path by then) and where to report progress."""

    id: str
    request: GenerateRequest
    progress: float = 0.0
    prompt: str | None = None  # set by the runner: the prompt as expanded


def options(request: GenerateRequest):
    """The request as the GenerateOptions every caller passes (kinema.generate); raises ValueError."""
    from kinema.generate import GenerateOptions

    return GenerateOptions(request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
                           guidance=request.guidance, seed=request.seed, frames=request.frames,
                           size=tuple(request.size) if request.size else None, expand=request.expand,
                           image=request.image, candidates=request.candidates)


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


def pipeline_checker(pipe):
    """The model's own checks (frames and size its VAE and patch take, sampler), with its defaults filled in."""

    def check(request: GenerateRequest) -> None:
        opts, index = options(request), pipe.index
        height, width = opts.size or (index.height, index.width)
        pipe.check(opts.prompt, opts.frames or index.frames, height, width, opts.steps or index.steps,
                   index.guidance if opts.guidance is None else opts.guidance, opts.sampler)

    return check


class Worker:
    """One thread that owns the runner: claims the oldest queued job, runs it, stores the result."""

    def __init__(self, store: JobStore, run):
        self.store, self.run = store, run
        self.current: Job | None = None
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            record = self.store.claim()
            if record is None:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            job = Job(record.id, GenerateRequest.model_construct(**record.request))
            self.current = job
            try:
                video = self.run(job)
                self.store.finish(job.id, video, job.prompt)
            except ValueError as e:  # the pipeline's argument checks
                self.store.fail(job.id, str(e))
            except Exception as e:  # noqa: BLE001 (a failed job must not kill the worker)
                self.store.fail(job.id, f"{type(e).__name__}: {e}")
            finally:
                self.current = None


def _save_image(data: str, folder: Path, name: str) -> str:
    """A base64 image (or data: URL) -> a PNG file; ValueError for anything PIL cannot read as an image."""
    from PIL import Image, UnidentifiedImageError

    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image: not valid base64") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise ValueError(f"image: {len(raw)} bytes; at most {MAX_IMAGE_BYTES}")
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError):
        raise ValueError("image: not an image PIL can read (PNG, JPEG, ...)") from None
    if max(image.size) > 1024:
        raise ValueError(f"image: {image.size[0]}x{image.size[1]}; at most 1024 pixels a side")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    image.convert("RGB").save(path)
    return str(path)


def _error(status: int, detail: list[dict], headers: dict | None = None) -> JSONResponse:
    body = json.dumps({"detail": detail}, ensure_ascii=True)  # lone surrogates come back escaped, not as a 500
    while len(body) > MAX_ECHO and len(detail) > 1:
        detail = detail[:-1]
        body = json.dumps({"detail": detail}, ensure_ascii=True)
    return JSONResponse(json.loads(body), status_code=status, headers=headers)


def create_app(pipe=None, model_dir: str | Path | None = None, max_queued: int = 8, runner=None,
               state_dir: str | Path | None = None, keep_finished: int = 200, max_age_s: float = 24 * 3600,
               checker=None) -> FastAPI:
    """The app. Pass a pipeline, a model folder, or (for tests) a `runner(job) -> mp4 bytes`. Jobs are kept in
    `state_dir` (a temporary folder when not given, so they last as long as the process)."""
    from kinema.model_index import ModelIndex

    if runner is None:
        if pipe is None:
            from kinema.generate import default_model
            from kinema.pipeline import TextToVideoPipeline

            pipe = TextToVideoPipeline.from_pretrained(model_dir or default_model())
        runner = pipeline_runner(pipe)
    if checker is None and pipe is not None:
        checker = pipeline_checker(pipe)
    index = pipe.index if pipe is not None else ModelIndex(objective={"kind": "flow"})
    state = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="kinema-serve-"))
    store = JobStore(state, max_queued, keep_finished, max_age_s)
    worker = Worker(store, runner)
    app = FastAPI(title="kinema", description="text-to-video on the shapes world")
    app.state.store, app.state.worker = store, worker

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))[:200],
                   "type": e.get("type", "")} for e in exc.errors()[:10]]
        return _error(422, detail)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "jobs": store.counts()}

    @app.get("/v1/model")
    def model() -> dict:
        return {"defaults": {"frames": index.frames, "height": index.height, "width": index.width,
                             "steps": index.steps, "guidance": index.guidance, "fps": index.fps,
                             "sampler": index.default_sampler},
                "limits": {"prompt_chars": MAX_PROMPT, "steps": [1, 200], "guidance": [0, 30], "frames": [1, 65],
                           "size": [16, 256], "image_bytes": MAX_IMAGE_BYTES, "queue": max_queued},
                "objective": index.objective.get("kind"), "text_encoder": index.text_encoder}

    @app.post("/v1/generate", status_code=202)
    def generate(request: GenerateRequest):
        try:
            if request.image is not None:
                import uuid

                request = request.model_copy(update={"image": _save_image(request.image, state / "inputs",
                                                                            uuid.uuid4().hex[:12])})
            options(request)  # the checks every caller gets
            if checker is not None:
                checker(request)
        except ValueError as e:
            return _error(422, [{"loc": ["body"], "msg": str(e)[:500], "type": "value_error"}])
        try:
            job_id = store.submit(request.model_dump())
        except QueueFull as e:
            return _error(429, [{"msg": str(e)}], headers={"Retry-After": str(e.retry_after)})
        worker.wake.set()
        return {"id": job_id, "status": "queued"}

    def _job(job_id: str):
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    def _status(job) -> dict:
        running = worker.current if worker.current is not None and worker.current.id == job.id else None
        progress = 1.0 if job.status == "done" else running.progress if running else 0.0
        return {"id": job.id, "status": job.status, "progress": progress, "error": job.error,
                "prompt": job.prompt or (running.prompt if running else None), "request_prompt": job.request["prompt"],
                "position": store.position(job) if job.status == "queued" else None,
                "video": f"/v1/jobs/{job.id}/video.mp4" if job.status == "done" else None}

    @app.get("/v1/jobs/{job_id}")
    def job_status(job_id: str) -> dict:
        return _status(_job(job_id))

    @app.get("/v1/jobs")
    def jobs(limit: int = 20) -> list[dict]:
        return [_status(j) for j in store.recent(max(1, min(limit, 100)))]

    @app.get("/v1/jobs/{job_id}/video.mp4")
    def job_video(job_id: str) -> FileResponse:
        job = _job(job_id)
        if job.status != "done":
            raise HTTPException(409, f"job {job_id} is {job.status}, not done")
        return FileResponse(store.video_path(job), media_type="video/mp4")

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app
