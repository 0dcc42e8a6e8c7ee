import pytest
import torch

from kinema.data.shards import make_clip
from kinema.data.world import (
    BACKGROUNDS,
    COLORS,
    WorldConfig,
    object_coverage,
    render,
    sample_scene,
)

CFG = WorldConfig()


def test_same_seed_same_clip_and_other_seed_differs():
    a, scene_a = make_clip(CFG, 7)
    b, scene_b = make_clip(CFG, 7)
    c, _ = make_clip(CFG, 8)
    assert torch.equal(a, b) and scene_a.to_dict() == scene_b.to_dict()
    assert not torch.equal(a, c)


def test_attribute_ranges_are_covered_and_respected():
    scenes = [sample_scene(CFG, s) for s in range(400)]
    counts = {len(s.objects) for s in scenes}
    assert counts == {1, 2, 3}
    seen = {k: set() for k in ("shape", "color", "size", "motion", "speed")}
    for s in scenes:
        colors = [o.color for o in s.objects]
        assert len(set(colors)) == len(colors), "objects in one clip have distinct colors"
        for o in s.objects:
            for k in seen:
                seen[k].add(getattr(o, k))
            assert (o.speed is None) == (o.motion == "still")
    assert seen["shape"] == set(CFG.shapes) and seen["color"] == set(COLORS)
    assert seen["motion"] == set(CFG.motions) and seen["speed"] == {None, "slowly", "quickly"}
    assert {s.background for s in scenes} == set(BACKGROUNDS)


def test_pixels_are_palette_colors_away_from_edges():
    for seed in range(20):
        frames, scene = make_clip(CFG, seed)
        palette = {BACKGROUNDS[scene.background]} | {COLORS[o.color] for o in scene.objects}
        # pixels where every object's coverage is exactly 0 or 1 are flat fills: no blending
        covs = [object_coverage(o, scene.frames, scene.height, scene.width) for o in scene.objects]
        flat = torch.stack([(c == 0) | (c == 1) for c in covs]).all(0)  # (F, H, W)
        values = {tuple(v.tolist()) for v in frames[flat].unique(dim=0)}
        assert values <= palette, values - palette
        assert flat.float().mean() > 0.9


def _centroids(frames: torch.Tensor, color: tuple[int, int, int]) -> torch.Tensor:
    mask = (frames == torch.tensor(color, dtype=torch.uint8)).all(-1)  # (F, H, W)
    ys, xs = torch.meshgrid(torch.arange(frames.shape[1]), torch.arange(frames.shape[2]), indexing="ij")
    n = mask.sum((1, 2)).clamp(min=1)
    return torch.stack([(mask * xs).sum((1, 2)) / n, (mask * ys).sum((1, 2)) / n], dim=1)  # (F, 2)


def test_objects_move_in_the_stated_direction():
    checked = 0
    for seed in range(60):
        cfg = WorldConfig(min_objects=1, max_objects=1)
        frames, scene = make_clip(cfg, seed)
        obj = scene.objects[0]
        c = _centroids(frames, COLORS[obj.color])
        dx, dy = (c[-1] - c[0]).tolist()
        expected = {"left": dx < -4, "right": dx > 4, "up": dy < -4, "down": dy > 4,
                    "still": abs(dx) < 0.5 and abs(dy) < 0.5}[obj.motion]
        assert expected, (obj, dx, dy)
        if obj.motion != "still":
            speed = (abs(dx) + abs(dy)) / (scene.frames - 1)
            want = scene.height / 64 if obj.speed == "slowly" else scene.height / 32
            assert speed == pytest.approx(want, rel=0.25)
        checked += 1
    assert checked == 60


def test_objects_stay_mostly_inside_the_frame():
    for seed in range(100):
        scene = sample_scene(CFG, seed)
        for o in scene.objects:
            c = o.centers(scene.frames, scene.height)
            assert (c >= 0).all() and (c[:, 0] <= scene.width).all() and (c[:, 1] <= scene.height).all()


def test_other_sizes_and_frame_counts_render():
    cfg = WorldConfig(frames=33, height=48, width=80)
    frames, _ = make_clip(cfg, 1)
    assert frames.shape == (33, 48, 80, 3) and frames.dtype == torch.uint8


def test_holdout_pairs_are_never_generated():
    cfg = WorldConfig(holdout=("red circle", "blue square"))
    for seed in range(300):
        for o in sample_scene(cfg, seed).objects:
            assert f"{o.color} {o.shape}" not in cfg.holdout


@pytest.mark.parametrize("kwargs, field", [
    ({"colors": ("red", "magenta")}, "colors"),
    ({"shapes": ("hexagon",)}, "shapes"),
    ({"backgrounds": ("pink",)}, "backgrounds"),
    ({"holdout": ("red",)}, "holdout"),
])
def test_unknown_names_give_errors_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        WorldConfig(**kwargs)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="colour"):
        WorldConfig.from_dict({"colour": ["red"]})


def test_scene_json_round_trip():
    _, scene = make_clip(CFG, 4)
    from kinema.data.world import Scene
    again = Scene.from_dict(scene.to_dict())
    assert torch.equal(render(again), render(scene))


def test_a_featured_new_color_leads_its_share_of_clips_and_appears_nowhere_else():
    from kinema.data.captions import caption_scene
    from kinema.data.world import NEW_COLORS, RGB

    assert "pink" in NEW_COLORS and "pink" not in COLORS and "pink" not in CFG.colors  # not in the default world
    cfg = WorldConfig(colors=(*COLORS, "pink"), featured=("pink",), featured_share=0.5)
    scenes = [sample_scene(cfg, s) for s in range(400)]
    led = [s.objects[0].color == "pink" for s in scenes]
    assert 0.42 < sum(led) / len(led) < 0.58
    assert all(o.color != "pink" for s in scenes for o in s.objects[1:])
    scene = next(s for s in scenes if s.objects[0].color == "pink")
    assert tuple(render(scene)[0].reshape(-1, 3).tolist()).count(list(RGB["pink"])) > 20  # painted in its RGB
    assert "pink" in caption_scene(scene, __import__("random").Random(0))["detailed"]
    # the default world's scenes do not change: the featured path draws nothing when no color is featured
    assert sample_scene(CFG, 5).to_dict() == sample_scene(WorldConfig(featured=(), featured_share=0.0), 5).to_dict()


@pytest.mark.parametrize("kwargs, match", [
    ({"featured": ("pink",), "featured_share": 0.5}, "featured"),  # pink is not among the colors
    ({"colors": (*COLORS, "pink"), "featured_share": 0.5}, "featured_share"),  # a share without a color
    ({"colors": (*COLORS, "pink"), "featured": ("pink",), "featured_share": 1.5}, "featured_share"),
])
def test_featured_colors_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**kwargs)
