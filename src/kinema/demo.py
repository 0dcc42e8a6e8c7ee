"""The main job behind `make demo`: text-to-video with the bundled model (prompt -> mp4, gif, and a sheet
of the denoising trajectory), plus a captioned contact sheet of real shapes-world clips for comparison.
Without a bundled model it falls back to the shapes-world sample alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kinema.data.shards import make_clip
from kinema.data.world import WorldConfig
from kinema.io.video import contact_sheet, save_image, write_mp4

DEMO_PROMPTS = ["a large red circle moving quickly to the left", "a small yellow square moving slowly up",
                "a large green triangle moving right and a small blue circle moving down"]  # two objects: v7 on


def world_sample(out: Path, n: int = 4, seed: int = 0) -> list[Path]:
    """n real shapes-world clips tiled into one mp4, and a captioned contact sheet."""
    cfg = WorldConfig()
    clips, captions = [], []
    for i in range(n):
        frames, scene = make_clip(cfg, seed + i)
        clips.append(frames.numpy())
        captions.append(scene.captions["detailed"])
    tiled = np.concatenate(clips, axis=2)  # (F, H, n*W, 3)
    return [write_mp4(out / "shapes.mp4", tiled, fps=cfg.fps),
            save_image(out / "shapes_contact_sheet.png", contact_sheet(clips, captions, scale=2))]


def generated_sample(out: Path, model: Path) -> list[Path]:
    from kinema.generate import GenerateOptions, generate, write_outputs
    from kinema.pipeline import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(model)
    written, clips, captions = [], [], []
    for i, prompt in enumerate(DEMO_PROMPTS):
        result = generate(pipe, GenerateOptions(prompt, seed=i), trajectory_frames=5)
        name = "_".join(prompt.split()[1:4])
        written += write_outputs(result, out / f"{name}.mp4", gif=True)
        clips += [*result.trajectory, result.video]
        captions += [f"{prompt}  ->  {result.prompt}  (step {result.trajectory_every * k})"
                     for k in range(len(result.trajectory))] + ["final"]
    written.append(save_image(out / "generated_contact_sheet.png", contact_sheet(clips, captions, scale=2)))
    print(f"generated videos: {', '.join(str(p) for p in written if p.suffix == '.mp4')}")
    return written


def run_demo(out: Path) -> list[Path]:
    from kinema.generate import BUNDLED_MODEL

    written = world_sample(out)
    if (BUNDLED_MODEL / "model_index.json").exists():
        written += generated_sample(out, BUNDLED_MODEL)
    return written
