"""The main job behind `make demo`: shapes-world clips with their captions, as an mp4 and a contact sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kinema.data.shards import make_clip
from kinema.data.world import WorldConfig
from kinema.io.video import contact_sheet, save_image, write_mp4


def run_demo(out: Path, n: int = 4, seed: int = 0) -> list[Path]:
    """Render n clips, tile them side by side into one mp4, and write a captioned contact sheet."""
    cfg = WorldConfig()
    clips, captions = [], []
    for i in range(n):
        frames, scene = make_clip(cfg, seed + i)
        clips.append(frames.numpy())
        captions.append(scene.captions["detailed"])
    tiled = np.concatenate(clips, axis=2)  # (F, H, n*W, 3)
    mp4 = write_mp4(out / "shapes.mp4", tiled, fps=cfg.fps)
    sheet = save_image(out / "shapes_contact_sheet.png", contact_sheet(clips, captions, scale=2))
    (out / "captions.txt").write_text("\n".join(captions) + "\n")
    return [mp4, sheet, out / "captions.txt"]
