"""World-simulator metrics: does a generated clip obey the physics of the shapes world?

Sora's report claims emergent simulation (object permanence, consistent motion, 3D consistency). The shapes
world's physics is exact: every object keeps its color, shape and size and moves in a straight line at a
constant speed; nothing appears or vanishes. So each property can be measured on a generated clip:

- velocity residual: RMS distance (px) of an object's centroids from the least-squares straight line through
  them (frames where it is half hidden are left out); a teleporting or wandering object has a large one;
- speed error: |measured - prompted| speed, relative to the prompted one (moving objects);
- count kept: share of frames showing exactly the clip's number of objects;
- size drift: coefficient of variation of an object's area over its unhidden frames;
- shape kept: share of frames whose per-frame shape reading agrees with the object's majority;
- permanence (crossing clips): two objects whose paths cross; after the overlap each must reappear where its
  own line, fitted before the overlap, says, with its own shape;
- extension: an extended clip continues the source's trajectory (same direction, speed ratio, no jump).

Real rendered clips of the same scenes give the floor of each number.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import torch

from kinema.data.captions import caption_scene, detailed_caption
from kinema.data.world import COLORS, SIZE_RADIUS, SPEED_PX, ObjectSpec, Scene, WorldConfig, render, sample_scene
from kinema.eval.probe import SHAPES, _erode, label_map, mask_crop, shape_net

# single moving objects of both sizes and speeds (still objects have no trajectory to check)
MOVING_WORLD = WorldConfig(max_objects=1, motions=("left", "right", "up", "down"))


@dataclass
class Track:
    color: str
    present: np.ndarray  # (F,) bool
    centroid: np.ndarray  # (F, 2) (x, y); nan where absent
    area: np.ndarray  # (F,) pixels
    shape: list[str | None]  # per frame


def tracks(frames: np.ndarray, min_share: float = 1 / 3) -> list[Track]:
    """Every object color seen (after a 1-px erosion) in at least `min_share` of the frames, frame by frame."""
    labels = label_map(frames)  # (F, H, W)
    F_, H, W = labels.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    min_pixels = max(2, round(3 * (H / 64) ** 2))
    out = []
    for k, color in enumerate(COLORS):
        mask = labels == k
        present = (_erode(mask).sum((1, 2)) >= min_pixels).numpy()
        if present.sum() < max(1, F_ * min_share):
            continue
        m = mask.float()
        n = m.sum((1, 2)).clamp(min=1)
        centroid = torch.stack([(m * xs).sum((1, 2)) / n, (m * ys).sum((1, 2)) / n], 1).numpy()
        centroid[~present] = np.nan
        shapes: list[str | None] = [None] * F_
        idx = np.flatnonzero(present)
        with torch.no_grad():
            logits = shape_net()(torch.stack([mask_crop(m[int(i)]) for i in idx]))
        for i, s in zip(idx, logits.argmax(-1).tolist(), strict=True):
            shapes[i] = SHAPES[s]
        out.append(Track(color, present, centroid, m.sum((1, 2)).numpy(), shapes))
    return out


def _line_fit(t: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares x(t), y(t) lines: (velocity (2,), intercept (2,))."""
    A = np.stack([t, np.ones_like(t)], 1)
    coef, *_ = np.linalg.lstsq(A, xy, rcond=None)
    return coef[0], coef[1]


def _unhidden(track: Track) -> np.ndarray:
    """Frames where the object is present with at least 70% of its usual area (not half behind another)."""
    if not track.present.any():
        return track.present
    return track.present & (track.area >= 0.7 * np.median(track.area[track.present]))


def object_metrics(track: Track) -> dict[str, float]:
    frames = np.flatnonzero(_unhidden(track))
    out = {"size_drift": float(np.std(track.area[frames]) / max(np.mean(track.area[frames]), 1e-6))}
    shapes = [s for s in track.shape if s is not None]
    out["shape_kept"] = max(shapes.count(s) for s in set(shapes)) / len(shapes) if shapes else 0.0
    if len(frames) >= 3:
        v, b = _line_fit(frames.astype(float), track.centroid[frames])
        fitted = frames[:, None] * v + b
        out["velocity_residual"] = float(np.sqrt(((track.centroid[frames] - fitted) ** 2).sum(1).mean()))
        out["speed"] = float(np.abs(v).max())  # px/frame along the axis of motion
        steps = np.linalg.norm(np.diff(track.centroid[frames], axis=0), axis=1) / np.diff(frames)
        out["max_jump"] = float(steps.max() - np.linalg.norm(v))  # the largest step beyond the steady one
    return out


def clip_metrics(frames: np.ndarray, scene: Scene | None = None) -> dict[str, float]:
    """The mean over objects of each object metric, the share of frames with the clip's object count and, given
    the scene the clip was prompted with, the relative speed error of moving objects."""
    found = tracks(frames)
    height = frames.shape[1]
    per = [object_metrics(t) for t in found]
    out = {k: float(np.mean([p[k] for p in per if k in p])) for k in
           ("velocity_residual", "max_jump", "size_drift", "shape_kept") if any(k in p for p in per)}
    count = len(scene.objects) if scene is not None else len(found)
    present = np.stack([t.present for t in found]) if found else np.zeros((1, len(frames)), bool)
    out["count_kept"] = float((present.sum(0) == count).mean())
    if scene is not None:
        errors = []
        for obj in scene.objects:
            measured = next((p["speed"] for t, p in zip(found, per, strict=True) if t.color == obj.color
                             and "speed" in p), None)
            if obj.speed and measured is not None:
                want = SPEED_PX[obj.speed] * height
                errors.append(abs(measured - want) / want)
        if errors:
            out["speed_error"] = float(np.mean(errors))
    return out


# ---------------------------------------------------------------------------------------------------
# Permanence through occlusion
# ---------------------------------------------------------------------------------------------------


def crossing_scene(seed: int, frames: int = 17, size: int = 64, world: WorldConfig | None = None) -> Scene:
    """Two large objects on one row (or column) moving quickly toward each other: their paths cross mid-clip.
    Colors, shapes and backgrounds come from `world` (default: the full world)."""
    world = world or WorldConfig()
    rng = random.Random(seed)
    colors = rng.sample(list(world.colors), 2)
    shapes = [rng.choice(list(world.shapes)) for _ in range(2)]
    radius = SIZE_RADIUS["large"] * size
    travel = SPEED_PX["quickly"] * size * (frames - 1)
    lo, lane = (size - travel) / 2, rng.uniform(0.35, 0.65) * size
    horizontal = rng.random() < 0.5
    motions = ("right", "left") if horizontal else ("down", "up")
    starts = [(lo, lane), (lo + travel, lane)] if horizontal else [(lane, lo), (lane, lo + travel)]
    objects = [ObjectSpec(shapes[i], colors[i], "large", motions[i], "quickly", starts[i], radius) for i in range(2)]
    background = rng.choice(list(world.backgrounds))
    scene = Scene(background, objects, frames, size, size, 8, seed)
    detailed = detailed_caption(scene, rng)  # drawn first: the prompts docs/experiments/world-simulation.md used
    scene.captions = {**caption_scene(scene, random.Random(seed + 1)), "detailed": detailed}
    return scene


def _caption(scene: Scene, rng: random.Random, level: str) -> str:
    """The caption of `level`; the detailed one drawn first from rng (the prompts the published report used)."""
    return detailed_caption(scene, rng) if level == "detailed" else caption_scene(scene, rng)[level]


def permanence(frames: np.ndarray, scene: Scene, tolerance: float = 4.0) -> dict[str, float]:
    """Per object of a crossing scene: fit its line on the frames before the overlap, and check that after the
    overlap its color is where that line says (mean error < `tolerance` px at 64 px) with the shape it had."""
    height = frames.shape[1]
    a, b = scene.objects
    gap = (a.centers(scene.frames, height) - b.centers(scene.frames, height)).norm(dim=1).numpy()
    overlap = gap < (a.radius + b.radius)
    if not overlap.any():
        raise ValueError("permanence needs a scene whose two objects overlap (crossing_scene)")
    before = np.arange(scene.frames) < np.flatnonzero(overlap)[0]
    after = np.arange(scene.frames) > np.flatnonzero(overlap)[-1]
    found = {t.color: t for t in tracks(frames, min_share=0.2)}
    kept, errors = [], []
    for obj in scene.objects:
        track = found.get(obj.color)
        pre = np.flatnonzero(before & track.present) if track is not None else []
        post = np.flatnonzero(after & track.present) if track is not None else []
        if len(pre) < 2 or len(post) < 1:
            kept.append(False)
            errors.append(float(height))
            continue
        v, c = _line_fit(pre.astype(float), track.centroid[pre])
        error = float(np.linalg.norm(track.centroid[post] - (post[:, None] * v + c), axis=1).mean())
        shape_pre = max(set(s for s in np.array(track.shape, dtype=object)[pre] if s),
                        key=list(track.shape).count, default=None)
        shape_post = [s for s in np.array(track.shape, dtype=object)[post] if s]
        same_shape = bool(shape_post) and max(set(shape_post), key=shape_post.count) == shape_pre
        errors.append(error)
        kept.append(error < tolerance * height / 64 and same_shape)
    return {"permanence": float(np.mean(kept)), "reappear_error": float(np.mean(errors))}


# ---------------------------------------------------------------------------------------------------
# Extension
# ---------------------------------------------------------------------------------------------------


def extension_consistency(source: np.ndarray, extended: np.ndarray, context: int) -> dict[str, float]:
    """`extended` = the new clip that starts with the source's last `context` frames. For each object color in
    both: same direction of motion, speed ratio (new / source), and the jump at the seam (px from where the
    source's line puts it at the first new frame)."""
    height = source.shape[1]
    src = {t.color: t for t in tracks(source)}
    same_direction, ratios, jumps = [], [], []
    for track in tracks(extended):
        old = src.get(track.color)
        if old is None:
            continue
        f_old, f_new = np.flatnonzero(_unhidden(old)), np.flatnonzero(_unhidden(track))
        if len(f_old) < 3 or len(f_new) < 3:
            continue
        v_old, c_old = _line_fit(f_old.astype(float), old.centroid[f_old])
        v_new, _ = _line_fit(f_new.astype(float), track.centroid[f_new])
        moving = np.linalg.norm(v_old) > 0.3 * height / 64
        same_direction.append(bool(np.dot(v_old, v_new) > 0) if moving else np.linalg.norm(v_new) < 0.3 * height / 64)
        if moving:
            ratios.append(float(np.linalg.norm(v_new) / np.linalg.norm(v_old)))
        first_new = f_new[f_new >= context]  # new frame j is source time len(source) - context + j
        if len(first_new):
            predicted = (len(source) - context + first_new[0]) * v_old + c_old
            jumps.append(float(np.linalg.norm(track.centroid[first_new[0]] - predicted)))
    return {"same_direction": float(np.mean(same_direction)) if same_direction else 0.0,
            "speed_ratio": float(np.median(ratios)) if ratios else float("nan"),
            "seam_jump_px": float(np.mean(jumps)) if jumps else float("nan"), "objects": float(len(same_direction))}


# ---------------------------------------------------------------------------------------------------
# A model, measured: `kinema eval world`
# ---------------------------------------------------------------------------------------------------

METRICS = ("velocity_residual", "max_jump", "speed_error", "count_kept", "size_drift", "shape_kept")


def world_report(pipe, n: int = 16, steps: int | None = None, seed: int = 0, progress: bool = True,
                 world: WorldConfig | None = None, level: str = "detailed", guidance: float | None = None,
                 candidates: int | None = None) -> dict:
    """Generated vs real (the floor) on n single-object moving scenes, n crossing scenes and n extensions, drawn
    from `world` (default: the full world) and prompted with captions of `level`; `candidates` per clip (None: the
    model's)."""
    from tqdm import tqdm

    from kinema.pipeline import FrameCondition

    index = pipe.index
    base = world or MOVING_WORLD
    moving = tuple(m for m in base.motions if m != "still") or MOVING_WORLD.motions
    world = dataclasses.replace(base, min_objects=1, max_objects=1, motions=moving, frames=index.frames,
                                height=index.height, width=index.width)
    context = pipe.vae.cfg.pixel_frames(2)
    rows: dict[str, list[dict]] = {"generated": [], "real": []}
    cross: dict[str, list[dict]] = {"generated": [], "real": []}
    ext: dict[str, list[dict]] = {"generated": [], "real": []}
    for i in tqdm(range(n), desc="world", unit="scene", disable=not progress):
        scene = sample_scene(world, 5_000_000 + seed + i)
        prompt = _caption(scene, random.Random(i), level)
        clip = pipe(prompt, steps=steps, guidance=guidance, seed=seed + i, candidates=candidates)
        rows["generated"].append(clip_metrics(clip, scene))
        real = render(scene).numpy()
        rows["real"].append(clip_metrics(real, scene))
        # extension: the model continues its own clip; the floor continues the real one
        new = pipe(prompt, steps=steps, guidance=guidance, seed=seed + i + 1, candidates=candidates,
                   condition=FrameCondition(clip[-context:], list(range(context))))
        ext["generated"].append(extension_consistency(clip, new, context))
        longer = dataclasses.replace(scene, frames=2 * index.frames - context)
        full = render(longer).numpy()
        ext["real"].append(extension_consistency(full[:index.frames], full[index.frames - context:], context))
        crossing = crossing_scene(6_000_000 + seed + i, index.frames, index.height, world)
        cross["generated"].append(permanence(pipe(crossing.captions[level], steps=steps, guidance=guidance,
                                                  seed=seed + i, candidates=candidates), crossing))
        cross["real"].append(permanence(render(crossing).numpy(), crossing))

    def mean(items: list[dict]) -> dict:
        keys = sorted({k for d in items for k in d})
        return {k: float(np.nanmean([d[k] for d in items if k in d])) for k in keys}

    return {"n": n, "steps": steps or index.steps, "candidates": candidates or index.candidates,
            "motion": {k: mean(v) for k, v in rows.items()}, "permanence": {k: mean(v) for k, v in cross.items()},
            "extension": {k: mean(v) for k, v in ext.items()}}


def report_lines(report: dict) -> list[str]:
    lines = [f"n = {report['n']} scenes per test, {report['steps']} sampling steps, {report.get('candidates', 1)} "
             "candidate(s) per clip; real clips are the floor",
             f"{'metric':<26} {'generated':>10} {'real':>10}"]
    for group in ("motion", "permanence", "extension"):
        for key in report[group]["real"]:
            g, r = report[group]["generated"].get(key, float("nan")), report[group]["real"][key]
            lines.append(f"{group + '.' + key:<26} {g:>10.3f} {r:>10.3f}")
    return lines
