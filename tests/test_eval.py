import numpy as np
import pytest
import torch

from kinema.data.shards import make_clip
from kinema.data.world import Scene, WorldConfig, render
from kinema.eval.adherence import CATEGORIES, HOLDOUT, prompt_set, run_adherence
from kinema.eval.frechet import frechet_distance
from kinema.eval.metrics import psnr, ssim
from kinema.eval.probe import probe_clip, probe_features
from kinema.eval.train_probe import validate_probe


def test_frechet_distance_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 6)), rng.normal(1.0, 2.0, size=(150, 6)) @ rng.normal(size=(6, 6))
    mu_a, mu_b, ca, cb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, b[:, :3])


def test_probe_is_at_least_99_percent_right_on_clean_clips_and_reports_degraded():
    acc = validate_probe(n=150, degradations=("clean", "blur+noise"))
    assert all(v >= 0.99 for v in acc["clean"].values()), acc["clean"]
    assert all(v >= 0.85 for v in acc["blur+noise"].values()), acc["blur+noise"]


def test_probe_reads_a_known_scene():
    frames, scene = make_clip(WorldConfig(min_objects=2, max_objects=2), 42)
    result = probe_clip(frames.numpy())
    assert result.background == scene.background and result.count == 2
    for obj in scene.objects:
        got = result.by_color()[obj.color]
        assert (got.shape, got.size, got.motion, got.speed) == (obj.shape, obj.size, obj.motion, obj.speed)


def _with_copy(clip: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) clip with its objects pasted again half a frame to the right (backgrounds are plain)."""
    shifted = np.roll(clip, clip.shape[2] // 2, axis=2)
    background = clip[:, :1, :1]  # (F, 1, 1, 3)
    return np.where((shifted != background).any(-1, keepdims=True), shifted, clip)


def test_the_probe_counts_copies_of_one_color_as_separate_objects():
    """A scene's colors are distinct, so two blobs of one color are two objects (a model that draws a
    single-object prompt as copies fails the count), while one object stays one through its whole clip."""
    frames, scene = make_clip(WorldConfig(max_objects=1, sizes=("small",)), 3)
    a = frames.numpy()
    assert probe_clip(a).count == 1
    result = probe_clip(_with_copy(a))
    assert result.count == 2 and result.by_color()[scene.objects[0].color].pieces == 2


def test_prompt_set_is_fixed_and_covers_the_categories():
    a, b = prompt_set(3), prompt_set(3)
    assert [p.prompt for p in a] == [p.prompt for p in b]
    assert {p.category for p in a} == set(CATEGORIES)
    for p in a:
        pairs = {f"{o['color']} {o['shape']}" for o in p.scene["objects"]}
        assert bool(pairs & set(HOLDOUT)) == (p.category == "unseen")


def _oracle(prompts):
    clips = {p.prompt: render(Scene.from_dict(p.scene)).numpy() for p in prompts}
    return lambda prompt, seed: clips[prompt]


def test_adherence_of_the_matching_real_clip_is_about_100_percent(tmp_path):
    prompts = prompt_set(5)
    report = run_adherence(_oracle(prompts), prompts, tmp_path, progress=False)
    for cat, m in report.by_category.items():
        assert m["all_correct"] >= 0.8 and m["color"] == 1.0, (cat, m)
    assert np.mean([m["all_correct"] for m in report.by_category.values()]) >= 0.95
    assert all(m["temporal_consistency"] > 0.8 for m in report.by_category.values())
    assert (tmp_path / "adherence.json").exists()


def test_adherence_names_why_a_count_fails():
    """Each single-object prompt answered with its clip plus a copy reads as copies (not missing or extra); the
    two-object prompts answered with one object dropped read as missing; the true clips read none of the three."""
    prompts = [p for p in prompt_set(4) if p.category in ("single", "two")]
    oracle = _oracle(prompts)

    def wrong(prompt, seed):
        p = next(q for q in prompts if q.prompt == prompt)
        if p.category == "single":
            return _with_copy(oracle(prompt, seed))
        return render(Scene.from_dict({**p.scene, "objects": p.scene["objects"][:1]})).numpy()  # the first only

    true = run_adherence(oracle, prompts, progress=False).by_category
    assert all(true[c][k] == 0.0 for c in ("single", "two") for k in ("copies", "missing", "extra")), true
    bad = run_adherence(wrong, prompts, progress=False)
    got = bad.by_category
    assert got["single"]["copies"] == 1.0 and got["single"]["missing"] == got["single"]["extra"] == 0.0, got
    assert got["two"]["missing"] == 1.0 and got["two"]["extra"] == 0.0, got
    assert any(line.startswith("prompts with single copies") for line in bad.lines())


def test_temporal_consistency_drops_when_objects_flicker():
    frames, _ = make_clip(WorldConfig(max_objects=1), 5)
    steady = probe_clip(frames.numpy()).temporal_consistency()
    flicker = frames.numpy().copy()
    flicker[1::2] = flicker[0, 0, 0]  # every other frame: background only
    assert steady > 0.9 and probe_clip(flicker).temporal_consistency() < 0.6


def test_adherence_of_shuffled_real_clips_is_low(tmp_path):
    prompts = prompt_set(5)
    oracle = _oracle(prompts)
    shuffled = {p.prompt: prompts[(i + 7) % len(prompts)].prompt for i, p in enumerate(prompts)}
    report = run_adherence(lambda prompt, seed: oracle(shuffled[prompt], seed), prompts, tmp_path, progress=False)
    assert max(m["all_correct"] for m in report.by_category.values()) <= 0.2
    assert report.frechet >= 0  # same distribution of clips: no claim beyond sanity
    assert (tmp_path / "failures.png").exists()


def test_probe_features_have_a_fixed_length():
    a = probe_features(make_clip(WorldConfig(), 1)[0].numpy())
    b = probe_features(make_clip(WorldConfig(frames=9, height=48, width=48), 2)[0].numpy())
    assert a.shape == b.shape == (8 * 6 + 3 + 7,)


def test_psnr_and_ssim_basics():
    x = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    assert torch.isinf(psnr(x, x)).all() or (psnr(x, x) > 100).all()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-4)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
    assert (psnr(noisy, x) < 40).all() and (ssim(noisy, x) < 1).all()


def test_report_is_self_contained_html(tmp_path):
    import json

    from kinema.eval.report import write_report

    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in (1, 2, 3)))
    from PIL import Image
    Image.new("RGB", (8, 8)).save(run / "samples" / "samples-0000003.png")
    adh = tmp_path / "adh"
    prompts = prompt_set(2)
    run_adherence(_oracle(prompts), prompts, adh, progress=False)
    out = write_report(tmp_path / "report.html", runs=[str(run)], adherence=[str(adh)])
    html = out.read_text()
    assert html.count("data:image/png;base64,") >= 3  # loss curve, adherence bars, sample sheet
    assert "Prompt adherence" in html and "src=\"http" not in html
    assert "<table" in html and "<th>all correct</th>" in html and '"by_category"' not in html


def test_small_samples_come_with_warnings(tmp_path):
    prompts = prompt_set(2)
    report = run_adherence(_oracle(prompts), prompts, progress=False)
    text = "\n".join(report.lines())
    assert "nan%" not in text
    assert "warning: few prompts" in text and "warning: the Fréchet distances rest on" in text


def test_probe_features_are_the_same_for_read_only_frames_and_pixel_stats_are_in_0_1():
    frames = make_clip(WorldConfig(), 3)[0].numpy()
    locked = frames.copy()
    locked.flags.writeable = False
    a, b = probe_features(frames), probe_features(locked)
    assert np.array_equal(a, b)
    assert np.all((a[-7:] >= -1e-6) & (a[-7:] <= 1 + 1e-6))  # pixel statistics of [0, 1] images


def test_the_probe_reads_a_new_color_only_when_asked():
    from kinema.eval.probe import WORLD_COLORS

    cfg = WorldConfig(max_objects=1, colors=("pink",))
    frames, scene = make_clip(cfg, 3)
    obj = scene.objects[0]
    got = probe_clip(frames.numpy(), (*WORLD_COLORS, "pink")).by_color()["pink"]
    assert (got.shape, got.size, got.motion) == (obj.shape, obj.size, obj.motion)
    assert "pink" not in probe_clip(frames.numpy()).by_color()  # the default world's palette has no pink


def test_concept_prompts_judge_the_new_color(tmp_path):
    from kinema.eval.adherence import concept_prompts
    from kinema.eval.probe import WORLD_COLORS

    prompts = concept_prompts("pink", 6)
    assert [p.prompt for p in prompts] == [p.prompt for p in concept_prompts("pink", 6)]
    assert all("pink" in p.prompt and p.scene["objects"][0]["color"] == "pink" for p in prompts)
    report = run_adherence(_oracle(prompts), prompts, tmp_path, progress=False, colors=(*WORLD_COLORS, "pink"))
    assert report.by_category["new"]["color"] == 1.0 and report.by_category["new"]["all_correct"] >= 0.8
    blind = run_adherence(_oracle(prompts), prompts, None, progress=False)  # a judge without pink
    assert blind.by_category["new"]["color"] == 0.0
