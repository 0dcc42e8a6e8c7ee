"""`kinema generate`, the server and the demo: one `GenerateOptions` -> pipeline call -> video and files.

    opts = GenerateOptions("a large red circle moving quickly to the left", seed=3)
    result = generate(pipe, opts)             # result.video (F, H, W, 3) uint8, result.prompt (as expanded)
    write_outputs(result, "out/video.mp4")    # mp4 or gif by suffix

Every caller builds a GenerateOptions (the CLI from its flags, the server from its JSON, the demo from its
list), so limits, defaults and prompt expansion are checked and applied in one place, before anything loads.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from kinema.diffusion.samplers import check_guidance_interval
from kinema.dit.attention_guidance import check_attention_guidance
from kinema.io.video import contact_sheet, read_video, save_image, write_gif, write_mp4
from kinema.pipeline import MAX_CANDIDATES, MAX_PROMPT_CHARS, FrameCondition, TextToVideoPipeline

# the bundled model ships inside the package (a wheel install has it too); models/shapes-64 in the repository
# is a link to it, so the README's paths work from a checkout
BUNDLED_MODEL = Path(__file__).resolve().parent / "bundled" / "shapes-64"

MAX_STEPS = 1000  # sampling steps
MAX_GUIDANCE = 50.0
MAX_FRAMES = 257
MAX_SIDE = 1024  # pixels
CONDITIONING = ("image", "extend", "extend_backward", "connect", "edit")


def default_model() -> Path:
    if not (BUNDLED_MODEL / "model_index.json").exists():
        raise FileNotFoundError(f"{BUNDLED_MODEL}: the bundled model is not there; pass --model DIR")
    return BUNDLED_MODEL


@dataclass(frozen=True)
class GenerateOptions:
    """What to generate. None means the model's default (model_index.json)."""

    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    frames: int | None = None
    size: tuple[int, int] | None = None  # (height, width)
    sampler: str | None = None
    guidance_interval: tuple[float, float] | None = None  # guide only at noise levels t in [lo, hi]
    attention_guidance: tuple[float, ...] | None = None  # (strength, until[, motion]): dit/attention_guidance.py
    candidates: int | None = None  # starting noises, the best kept (diffusion/fit.py)
    expand: bool = True  # rewrite a short prompt into a training-style caption (text/expand.py)
    fp32: bool = False  # float32 instead of bf16 autocast where that is fast
    image: str | None = None  # image-to-video: the first frame
    extend: str | None = None  # continue this video forward
    extend_backward: str | None = None  # lead into this video
    connect: tuple[str, str] | None = None  # from the last frame of A to the first frame of B
    edit: str | None = None  # SDEdit this video toward the prompt
    strength: float = 0.6  # --edit: 0 keeps the input, 1 ignores it
    only_new: bool = False  # --extend*: write only the generated frames, not the source with them

    def __post_init__(self) -> None:
        check_prompt(self.prompt, "prompt")
        if self.negative_prompt is not None:
            check_prompt(self.negative_prompt, "negative prompt", allow_empty=True)
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("candidates", self.candidates, 1, MAX_CANDIDATES)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("frames", self.frames, 1, MAX_FRAMES)
        for side in self.size or ():
            _check_int("size", side, 1, MAX_SIDE)
        if self.guidance is not None and not (isinstance(self.guidance, int | float) and not isinstance(
                self.guidance, bool) and math.isfinite(self.guidance) and 0 <= self.guidance <= MAX_GUIDANCE):
            raise ValueError(f"guidance must be a finite number in [0, {MAX_GUIDANCE:g}], got {self.guidance!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.guidance_interval is not None:
            check_guidance_interval(self.guidance_interval)
        if self.attention_guidance is not None:
            check_attention_guidance(self.attention_guidance)
        given = [name for name in CONDITIONING if getattr(self, name)]
        if len(given) > 1:
            flags = ", ".join("--" + n.replace("_", "-") for n in CONDITIONING)
            raise ValueError(f"use one of {flags}; got {['--' + g.replace('_', '-') for g in given]}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerateOptions:
        """From `kinema generate`'s flags (those the CLI has; --no-expand is expand=False)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["expand"] = not getattr(args, "no_expand", False)
        if values.get("connect"):
            values["connect"] = tuple(values["connect"])
        return cls(**values)


def check_prompt(text: str, what: str = "prompt", allow_empty: bool = False) -> None:
    """Before expansion and before any model loads, so the CLI and the API reject the same prompts."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    if not allow_empty and not text.strip():
        raise ValueError(f"{what} must not be empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"{what} is {len(text)} characters; at most {MAX_PROMPT_CHARS}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid text: character {e.start} is a lone surrogate "
                         f"(not UTF-8)") from None


def _check_int(name: str, value, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------


@dataclass
class GenerateResult:
    video: np.ndarray  # (F, H, W, 3) uint8: what to write (with the source for --extend unless only_new)
    prompt: str  # the prompt the model saw (expanded unless expand=False)
    fps: float
    trajectory: list[np.ndarray]  # decoded intermediate states, when asked for
    trajectory_every: int


def frame_condition(opts: GenerateOptions, frames: int, context: int,
                    source: np.ndarray | None = None) -> FrameCondition | None:
    """The conditioning flags as one FrameCondition; `context` is how many source frames extension uses, and
    `source` the --extend / --extend-backward video when it is already read."""
    if opts.image:
        from PIL import Image, UnidentifiedImageError

        try:
            image = np.asarray(Image.open(opts.image).convert("RGB"))
        except UnidentifiedImageError:
            raise ValueError(f"{opts.image}: not an image file PIL can read (png, jpg, ...)") from None
        return FrameCondition(image[None], [0])
    if opts.extend:  # the last frames of the input start the new clip
        clip = (read_video(opts.extend) if source is None else source)[-context:]
        return FrameCondition(clip, list(range(len(clip))))
    if opts.extend_backward:  # the first frames of the input end the new clip
        clip = (read_video(opts.extend_backward) if source is None else source)[:context]
        return FrameCondition(clip, list(range(frames - len(clip), frames)))
    if opts.connect:
        a, b = read_video(opts.connect[0])[-1:], read_video(opts.connect[1])[:1]
        return FrameCondition(np.concatenate([a, b]), [0, frames - 1])
    if opts.edit:
        return FrameCondition(read_video(opts.edit), [], strength=opts.strength)
    return None


def frame_facts(condition: FrameCondition):
    """What the given frames show, as parsed caption facts for prompt expansion: background, and per object its
    color, shape, size, start cell (when the frames start the clip) and motion (when they show some), read by
    the shapes-world probe."""
    from kinema.data.captions import ParsedCaption, ParsedObject
    from kinema.data.world import position_name
    from kinema.eval.probe import probe_clip

    starts = bool(condition.at) and condition.at[0] == 0
    shown = probe_clip(condition.video[:_run_length(condition.at)])  # the frames that play in a row
    height, width = condition.video.shape[1:3]
    objects = []
    for obj in shown.objects:
        row, col = position_name(*obj.track[0], width, height) if starts else (None, None)
        moving = len(obj.track) > 1  # one frame shows no motion
        objects.append(ParsedObject(shape=obj.shape, color=obj.color, size=obj.size, row=row, col=col,
                                    motion=obj.motion if moving else None, speed=obj.speed if moving else None))
    return ParsedCaption(shown.background, objects)


def _run_length(at: list[int]) -> int:
    """How many of the indices `at` are consecutive from the first (the given frames that play in a row)."""
    n = 1
    while n < len(at) and at[n] == at[n - 1] + 1:
        n += 1
    return n


def generate(pipe: TextToVideoPipeline, opts: GenerateOptions, progress: Callable[[int, int], None] | None = None,
             trajectory_frames: int = 0) -> GenerateResult:
    """Run one GenerateOptions; `trajectory_frames` > 0 also decodes that many intermediate states."""
    from kinema.text.expand import expand_prompt

    pipe.bf16 = False if opts.fp32 else "auto"
    index = pipe.index
    frames = opts.frames or index.frames
    height, width = opts.size or (index.height, index.width)
    steps = opts.steps or index.steps
    context = pipe.vae.cfg.pixel_frames(2)  # extension keeps two latent frames of the source (5 at x4 time)
    extended = opts.extend or opts.extend_backward
    source = read_video(extended) if extended else None  # read once: conditioning and the written clip
    condition = frame_condition(opts, frames, context, source)
    known = frame_facts(condition) if condition is not None and condition.strength is None else None
    prompt = expand_prompt(opts.prompt, opts.seed, known=known) if opts.expand else opts.prompt
    trajectory: list[np.ndarray] = []
    every = max(1, steps // trajectory_frames) if trajectory_frames else 1
    video = pipe(prompt, negative_prompt=opts.negative_prompt, frames=frames, height=height, width=width,
                 steps=steps, guidance=opts.guidance, seed=opts.seed, sampler=opts.sampler,
                 guidance_interval=opts.guidance_interval, attention_guidance=opts.attention_guidance,
                 candidates=opts.candidates, condition=condition,
                 callback=(lambda i, x: trajectory.append(x)) if trajectory_frames else None,
                 progress=progress, callback_every=every)
    if source is not None and not opts.only_new:  # the source with its new frames, as Sora extends
        source = _fit_clip_size(source, height, width)
        video = (np.concatenate([source, video[context:]]) if opts.extend
                 else np.concatenate([video[:frames - context], source]))
    return GenerateResult(video, prompt, index.fps, trajectory, every)


def _fit_clip_size(video: np.ndarray, height: int, width: int) -> np.ndarray:
    from kinema.pipeline import fit_frame

    return np.stack([fit_frame(f, height, width) for f in video])


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------

VIDEO_SUFFIXES = (".mp4", ".gif")


def check_output(path: str | Path) -> Path:
    """The output path, checked before any work: a known container suffix and a writable folder."""
    import os

    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: output must end in {' or '.join(VIDEO_SUFFIXES)} (the container written), "
                         f"got {path.suffix or 'no suffix'!r}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ValueError(f"{path}: cannot write there ({folder} is not a writable folder)")
    return path


def write_outputs(result: GenerateResult, out: str | Path, gif: bool = False, show_steps: bool = False) -> list[Path]:
    out = check_output(out)
    written = [write_gif(out, result.video, result.fps) if out.suffix.lower() == ".gif"
               else write_mp4(out, result.video, result.fps)]
    if gif and out.suffix.lower() != ".gif":
        written.append(write_gif(out.with_suffix(".gif"), result.video, result.fps))
    if show_steps and result.trajectory:
        rows = [*result.trajectory, result.video]
        labels = [f"step {result.trajectory_every * i}" for i in range(len(result.trajectory))] + ["final"]
        written.append(save_image(out.with_name(out.stem + "_steps.png"), contact_sheet(rows, labels, scale=2)))
    return written


def generate_to_files(args: argparse.Namespace) -> list[Path]:
    """`kinema generate`: flags -> GenerateOptions (checked before the model loads) -> files."""
    opts = GenerateOptions.from_args(args)
    check_output(args.out)
    from tqdm import tqdm

    model = args.model or default_model()
    pipe = TextToVideoPipeline.from_pretrained(model, getattr(args, "lora", None), getattr(args, "lora_scale", 1.0))
    bar = None

    def progress(i: int, total: int) -> None:  # the bar starts with the first step, after every check passed
        nonlocal bar
        bar = bar or tqdm(total=total, desc="denoise", unit="step")
        bar.update(i + 1 - bar.n)

    try:
        result = generate(pipe, opts, progress=progress, trajectory_frames=8 if args.show_steps else 0)
    finally:
        if bar is not None:
            bar.close()
    if result.prompt != opts.prompt:
        print(f"expanded prompt: {result.prompt}")
    return write_outputs(result, args.out, gif=args.gif, show_steps=args.show_steps)
