"""World-simulator metrics on real rendered clips: exact physics scores as exact, and each kind of violation
is caught (a teleport, swapped identities after an occlusion, a broken extension)."""

from __future__ import annotations

import dataclasses

import numpy as np

from kinema.data.world import COLORS, WorldConfig, render, sample_scene
from kinema.eval.world import clip_metrics, crossing_scene, extension_consistency, permanence

MOVING = WorldConfig(max_objects=1, motions=("left", "right", "up", "down"), speeds=("quickly",), sizes=("large",))


def test_a_constant_velocity_clip_scores_about_zero_residual():
    for seed in range(4):
        scene = sample_scene(MOVING, seed)
        m = clip_metrics(render(scene).numpy(), scene)
        assert m["velocity_residual"] < 0.5 and m["max_jump"] < 1.0, (seed, m)
        assert m["count_kept"] == 1.0 and m["shape_kept"] >= 0.9 and m["size_drift"] < 0.1
        assert m["speed_error"] < 0.15


def test_a_teleporting_object_is_caught():
    scene = sample_scene(MOVING, 1)
    clip = render(scene).numpy()
    jumped = np.concatenate([clip[:8], clip[12:], clip[8:12]])  # the object leaps ahead, then back
    real, fake = clip_metrics(clip, scene), clip_metrics(jumped, scene)
    assert fake["velocity_residual"] > 5 * max(real["velocity_residual"], 0.3)
    assert fake["max_jump"] > 4.0 > real["max_jump"]


def test_occlusion_passes_with_real_frames_and_fails_when_colors_swap_after_the_crossing():
    for seed in range(4):
        scene = crossing_scene(seed)
        clip = render(scene).numpy()
        assert permanence(clip, scene)["permanence"] == 1.0, seed
        a, b = (np.array(COLORS[o.color], np.uint8) for o in scene.objects)
        swapped = clip.copy()
        late = swapped[12:]
        is_a, is_b = (late == a).all(-1), (late == b).all(-1)
        late[is_a], late[is_b] = b, a
        assert permanence(swapped, scene)["permanence"] == 0.0, seed


def test_an_extension_that_continues_the_trajectory_scores_as_one():
    scene = sample_scene(dataclasses.replace(MOVING, frames=33), 2)
    scene.objects[0].start = (32.0, 32.0)  # room to move 64 px? keep it in frame: slow it down instead
    scene.objects[0].speed = "slowly"
    long = render(scene).numpy()
    source, extended = long[:17], long[12:29]  # the extension starts with the source's last 5 frames
    r = extension_consistency(source, extended, context=5)
    assert r["same_direction"] == 1.0 and 0.8 < r["speed_ratio"] < 1.25 and r["seam_jump_px"] < 1.0
    reversed_ext = np.concatenate([extended[:5], extended[5:][::-1]])  # goes back where it came from
    bad = extension_consistency(source, reversed_ext, context=5)
    assert bad["seam_jump_px"] > 3 * max(r["seam_jump_px"], 0.3)
