"""The learning-efficiency ladder: rungs compose one factor at a time; a rung trains, scores and reports."""

import dataclasses
import json

from kinema.data.world import WorldConfig, sample_scene
from kinema.eval.fresh import swapped, varied_attributes
from kinema.experiments.ladder import (
    LadderExperiment,
    Rung,
    default_rungs,
    report_table,
    run_rung,
)


def test_each_rung_changes_what_it_says_and_keeps_the_rest():
    rungs = default_rungs()
    base, abs_pos = rungs["base"], rungs["abs-pos"]
    assert abs_pos.dit == {**base.dit, "abs_pos": True}  # merged into the base's DiT, not replacing it
    assert (abs_pos.world, abs_pos.train, abs_pos.vae) == (base.world, base.train, base.vae)
    assert rungs["no-clip"].train == {**base.train, "grad_clip": 100.0}
    cur, objects = rungs["w-objects-cur"], rungs["w-objects"]
    assert cur.init_from in rungs and (cur.world, cur.dit) == (objects.world, objects.dit)
    assert rungs[cur.init_from].world == {**objects.world, "max_objects": 1}  # the same world with single objects


def test_swapped_reverses_directions_and_varied_attributes_follow_the_world():
    scene = sample_scene(WorldConfig(max_objects=3, min_objects=3, motions=("left", "up", "still")), 4)
    flipped = swapped(scene)
    pairs = {"left": "right", "up": "down", "still": "still"}
    assert [pairs[o.motion] for o in scene.objects] == [o.motion for o in flipped.objects]
    assert [o.start for o in scene.objects] == [o.start for o in flipped.objects]
    assert varied_attributes(WorldConfig(sizes=("large",), speeds=("quickly",), backgrounds=("black",))) == \
        ["count", "color", "shape", "motion"]
    assert set(varied_attributes(WorldConfig())) >= {"size", "speed", "background"}


def test_a_rung_trains_scores_and_reports_then_reads_back(tiny_vae_dir, tmp_path):
    rung = Rung("tiny", "a tiny DiT on a tiny VAE", vae=str(tiny_vae_dir), clips=16,
                dit={"dim": 32, "depth": 1, "heads": 2, "frame_conditioning": False, "abs_pos": True})
    exp = LadderExperiment(tmp_path, steps=3, batch_size=4, frames=5, size=32, eval_n=3, eval_steps=2)
    result = run_rung(exp, rung)
    for key in ("all_correct", "color", "shape", "motion", "count", "temporal", "ceiling"):
        assert 0.0 <= result[key] <= 1.0, key
    assert isinstance(result["word_swap"], float) and result["n"] == 3 and result["steps"] == 3
    assert isinstance(result["memorisation"], float) and result["memorisation"] > -1  # a ratio of two losses, less 1
    assert result["by_count"] == {"1": {"all_correct": result["all_correct"], "n": 3}}  # one object per scene here
    assert result["motion_by_object"] == [result["motion"]]  # with one object, the first object's motion is all of it
    assert result["by_sizes"] == {"large": {"all_correct": result["all_correct"], "n": 3}}  # the rung's one size
    assert [p["correct"] for p in result["prompts"]].count(True) == round(3 * result["all_correct"])
    assert all(p["correct"] == (p["wrong"] == []) for p in result["prompts"])  # a prompt is right when nothing is wrong
    assert (tmp_path / "tiny" / "eval.png").exists()
    assert json.loads((tmp_path / "tiny" / "result.json").read_text()) == result
    assert run_rung(exp, rung) == result  # a finished rung is read back, not retrained
    older = {k: v for k, v in result.items() if k != "ceiling"}  # recorded before rungs had ceilings
    (tmp_path / "tiny" / "result.json").write_text(json.dumps(older))
    assert run_rung(exp, rung) == result  # gets the same (cached) ceiling
    assert f"| tiny | a tiny DiT on a tiny VAE | 3 | **{result['all_correct']:.0%}** | {result['ceiling']:.0%} |" \
        in report_table([result])
    assert "| - | - | - |" in report_table([result])  # size, speed, background: fixed in this world

    # another sampler scores the trained rung again, into its own files; the training is reused, not run again
    metrics = (tmp_path / "tiny" / "metrics.jsonl").read_text()
    ancestral = run_rung(dataclasses.replace(exp, sampler="euler-a"), rung)
    assert (ancestral["sampler"], result["sampler"]) == ("euler-a", "euler") and ancestral["n"] == 3
    assert (tmp_path / "tiny" / "metrics.jsonl").read_text() == metrics
    assert json.loads((tmp_path / "tiny" / "result-euler-a.json").read_text()) == ancestral
    assert (tmp_path / "tiny" / "eval-euler-a.png").exists()
    assert json.loads((tmp_path / "tiny" / "result.json").read_text()) == result

    # a curriculum rung starts from the finished rung's model and counts its steps and minutes too
    cur = rung.then("tiny-cur", "tiny, continued", init_from="tiny")
    second = run_rung(exp, cur, {"tiny": rung})
    assert second["total_steps"] == 6 and second["train_minutes"] > result["train_minutes"]
    index = json.loads((tmp_path / "tiny-cur" / "model" / "model_index.json").read_text())
    assert index["init_from"] == str(tmp_path / "tiny" / "model")
    assert "| tiny-cur | tiny, continued | 6 |" in report_table([result, second])


def test_the_doc_table_is_replaced_between_its_markers_and_the_prose_kept(tmp_path):
    import pytest

    from kinema.experiments.ladder import TABLE_END, TABLE_START, write_doc

    doc = tmp_path / "ladder.md"
    write_doc(doc, "| first |\n")
    doc.write_text("# Title\n\nprose before\n\n" + doc.read_text().split("\n", 2)[2] + "\nprose after\n")
    write_doc(doc, "| second |\n")
    text = doc.read_text()
    assert "prose before" in text and "prose after" in text and "| second |" in text and "| first |" not in text
    assert text.count(TABLE_START) == text.count(TABLE_END) == 1
    (tmp_path / "hand.md").write_text("# written by hand\n")
    with pytest.raises(ValueError, match="hand.md: has no ladder-table markers"):
        write_doc(tmp_path / "hand.md", "| x |\n")


def test_memorisation_is_zero_when_the_fresh_scenes_are_the_training_clips(tiny_vae_dir, tmp_path, monkeypatch):
    """The fresh-over-training loss ratio compares like with like: with the training clips standing in for the fresh
    scenes (same renders, same captions, same noise) it is exactly 0."""
    from kinema.data.shards import clip_seed, make_clip
    from kinema.eval import fresh
    from kinema.experiments.ladder import DATA_SEED, world_config
    from kinema.pipeline import TextToVideoPipeline

    rung = Rung("tiny", "a tiny DiT on a tiny VAE", vae=str(tiny_vae_dir), clips=16,
                dit={"dim": 32, "depth": 1, "heads": 2, "frame_conditioning": False, "abs_pos": True})
    exp = LadderExperiment(tmp_path, steps=2, batch_size=4, frames=5, size=32, eval_n=3, eval_steps=2)
    run_rung(exp, rung)
    pipe = TextToVideoPipeline.from_pretrained(tmp_path / "tiny" / "model")
    world = world_config(rung, exp.frames, exp.size)
    seen = [make_clip(world, clip_seed(DATA_SEED, i))[1] for i in range(3)]
    monkeypatch.setattr(fresh, "eval_scenes", lambda w, n: seen)
    monkeypatch.setattr(fresh, "caption", lambda s, level, i, state_count=False: s.captions[level])
    assert fresh.memorisation(pipe, world, "medium", train_seed=DATA_SEED, n=3) == 0.0
    assert fresh.memorisation(pipe, world, "medium", train_seed=DATA_SEED + 1, n=3) != 0.0  # other clips, other loss


def test_fresh_scene_scoring_samples_with_the_sampler_it_is_given(tiny_model_dir, tmp_path):
    import pytest

    from kinema.eval.fresh import evaluate

    world = WorldConfig(frames=5, height=32, width=32)
    with pytest.raises(ValueError, match="does not fit"):  # a DDPM sampler on this flow model reaches the pipeline
        evaluate(tiny_model_dir, world, "medium", 1, 2, 4.0, tmp_path, sampler="ddim")
    scores = evaluate(tiny_model_dir, world, "medium", 1, 2, 4.0, tmp_path, sampler="euler-a")
    assert 0.0 <= scores["all_correct"] <= 1.0 and scores["n"] == 1
    assert scores["sampler"] == "euler-a"  # the result names the sampler it was scored with
