"""`kinema generate`: arguments -> pipeline call -> files (mp4, optional gif and trajectory sheet)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kinema.io.video import contact_sheet, read_video, save_image, write_gif, write_mp4
from kinema.pipeline import FrameCondition, TextToVideoPipeline

BUNDLED_MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes-64"


def default_model() -> Path:
    if not (BUNDLED_MODEL / "model_index.json").exists():
        raise FileNotFoundError(f"{BUNDLED_MODEL}: the bundled model is not there; pass --model DIR")
    return BUNDLED_MODEL


def frame_condition(args: argparse.Namespace, frames: int) -> FrameCondition | None:
    """The --image / --extend / --extend-backward / --connect / --edit flags as one FrameCondition."""
    given = [k for k in ("image", "extend", "extend_backward", "connect", "edit") if getattr(args, k, None)]
    if len(given) > 1:
        raise ValueError(f"use one of --image, --extend, --extend-backward, --connect, --edit; got {given}")
    if not given:
        return None
    if args.image:
        from PIL import Image

        image = np.asarray(Image.open(args.image).convert("RGB"))
        return FrameCondition(image[None], [0])
    if args.extend:  # the last 5 frames of the input start the new clip
        clip = read_video(args.extend)[-5:]
        return FrameCondition(clip, list(range(len(clip))))
    if args.extend_backward:  # the first 5 frames of the input end the new clip
        clip = read_video(args.extend_backward)[:5]
        return FrameCondition(clip, list(range(frames - len(clip), frames)))
    if args.connect:
        a, b = read_video(args.connect[0])[-1:], read_video(args.connect[1])[:1]
        return FrameCondition(np.concatenate([a, b]), [0, frames - 1])
    return FrameCondition(read_video(args.edit), [], strength=args.strength)


def generate_to_files(args: argparse.Namespace) -> list[Path]:
    from kinema.text.expand import expand_prompt

    pipe = TextToVideoPipeline.from_pretrained(args.model or default_model())
    pipe.bf16 = False if getattr(args, "fp32", False) else "auto"
    frames = args.frames or pipe.defaults["frames"]
    height, width = args.size or (pipe.defaults["height"], pipe.defaults["width"])
    prompt = args.prompt if args.no_expand else expand_prompt(args.prompt, args.seed)
    if prompt != args.prompt:
        print(f"expanded prompt: {prompt}")
    trajectory: list[np.ndarray] = []
    video = pipe(prompt, negative_prompt=args.negative_prompt, frames=frames, height=height, width=width,
                 steps=args.steps, guidance=args.guidance, seed=args.seed, sampler=args.sampler,
                 condition=frame_condition(args, frames),
                 callback=(lambda i, x: trajectory.append(x)) if args.show_steps else None,
                 callback_every=max(1, (args.steps or pipe.defaults["steps"]) // 8))
    out = Path(args.out)
    fps = pipe.defaults.get("fps", 8)
    written = [write_mp4(out, video, fps) if out.suffix != ".gif" else write_gif(out, video, fps)]
    if args.gif and out.suffix != ".gif":
        written.append(write_gif(out.with_suffix(".gif"), video, fps))
    if args.show_steps:
        every = max(1, (args.steps or pipe.defaults["steps"]) // 8)
        rows = [*trajectory, video]
        labels = [f"step {every * i}" for i in range(len(trajectory))] + ["final"]
        written.append(save_image(out.with_name(out.stem + "_steps.png"), contact_sheet(rows, labels, scale=2)))
    return written
