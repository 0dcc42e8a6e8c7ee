"""The denoising error that ranks candidate samples (diffusion/fit.py), and the pipeline's `candidates`."""

import numpy as np
import pytest
import torch

from kinema.diffusion.fit import FIT_LEVELS, denoising_error
from kinema.diffusion.objectives import EpsilonObjective, FlowObjective
from kinema.pipeline import TextToVideoPipeline


def _oracle(obj, target: torch.Tensor):
    """A model that always implies the clean latent `target`, in the objective's own output."""
    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if isinstance(obj, FlowObjective):
            return target.expand_as(x_t) if obj.prediction == "x0" else (x_t - target) / t.view(-1, 1, 1, 1, 1)
        steps = (t * obj.schedule.num_train_timesteps).round().long()
        a = obj.schedule.alphas_cumprod()[steps].float().view(-1, 1, 1, 1, 1)
        return (x_t - a.sqrt() * target) / (1 - a).sqrt()  # the noise that leaves `target`
    return fn


@pytest.mark.parametrize("obj", [FlowObjective(prediction="x0"), FlowObjective(), EpsilonObjective()],
                         ids=["flow-x0", "flow-velocity", "ddpm-epsilon"])
def test_the_latent_the_model_expects_has_the_lowest_error(obj):
    target = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    near = target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    far = target + 1.0 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))
    err = denoising_error(obj, _oracle(obj, target), torch.cat([far, target, near]), torch.Generator().manual_seed(3))
    assert err.shape == (3,)
    assert err.argsort().tolist() == [1, 2, 0]  # target, then the nearer, then the farther


def test_the_error_is_seeded_and_the_draws_are_shared_by_the_batch():
    obj = FlowObjective(prediction="x0")
    calls = []

    def fn(x_t, t):  # a model that returns its input: its error depends on the noise drawn
        calls.append(x_t.shape[0])
        return x_t

    x = torch.randn(1, 4, 2, 4, 4).expand(3, -1, -1, -1, -1)  # three copies of one latent
    a = denoising_error(obj, fn, x, torch.Generator().manual_seed(5), noises=2)
    b = denoising_error(obj, fn, x, torch.Generator().manual_seed(5), noises=2)
    c = denoising_error(obj, fn, x, torch.Generator().manual_seed(6), noises=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a, a[0].expand(3))  # the same draws for each: equal latents, equal errors
    assert calls[:len(FIT_LEVELS)] == [3 * 2] * len(FIT_LEVELS)  # one batched call per level, both noises in it


@pytest.mark.parametrize("kwargs", [{"levels": ()}, {"levels": (0.5, 1.0)}, {"noises": 0}])
def test_bad_levels_or_noises_are_refused(kwargs):
    with pytest.raises(ValueError, match="denoising_error"):
        denoising_error(FlowObjective(), lambda x, t: x, torch.zeros(1, 1, 1, 1, 1), **kwargs)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return TextToVideoPipeline.from_pretrained(tiny_model_dir)


def test_the_pipeline_keeps_the_candidate_the_judge_ranks_first(pipe, monkeypatch):
    import kinema.pipeline as pipeline

    prompt = "a red circle moving left"
    assert np.array_equal(pipe(prompt, steps=3, seed=1, candidates=1), pipe(prompt, steps=3, seed=1))
    ranked = []

    def judge(order):
        def errors(obj, fn, x, generator):
            assert x.shape[0] == 2 and fn(x, torch.full((2,), 0.5)).shape == x.shape  # K latents, conditioned
            ranked.append(order)
            return torch.tensor(order)
        return errors

    monkeypatch.setattr(pipeline, "denoising_error", judge([0.0, 1.0]))
    first = pipe(prompt, steps=3, seed=1, candidates=2)
    monkeypatch.setattr(pipeline, "denoising_error", judge([1.0, 0.0]))
    second = pipe(prompt, steps=3, seed=1, candidates=2)
    assert len(ranked) == 2 and first.shape == second.shape == (5, 32, 32, 3)
    assert not np.array_equal(first, second)  # two noises, two clips: which one comes back is the judge's choice
    monkeypatch.undo()
    assert np.array_equal(pipe(prompt, steps=3, seed=1, candidates=2), pipe(prompt, steps=3, seed=1, candidates=2))


def test_candidates_keep_the_given_frame_of_image_to_video(pipe):
    from kinema.pipeline import FrameCondition

    frame = np.full((1, 32, 32, 3), 200, dtype=np.uint8)
    video = pipe("a red circle", steps=2, seed=0, candidates=3, condition=FrameCondition(frame, [0]))
    assert video.shape == (5, 32, 32, 3) and np.array_equal(video[0], frame[0])


@pytest.mark.parametrize("k", [0, 17, 1.5])
def test_bad_candidate_counts_are_refused(pipe, k):
    with pytest.raises(ValueError, match="candidates must be an integer"):
        pipe("a red circle", steps=2, candidates=k)


def test_a_model_folder_may_set_its_candidates(pipe):
    assert pipe.index.candidates == 1
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        pipe.index.replace(candidates=0)


def test_generate_cli_takes_candidates_and_names_a_bad_count(tiny_model_dir, tmp_path, capsys):
    from kinema.cli import main
    from kinema.io.video import read_video

    out = tmp_path / "v.mp4"
    assert main(["generate", "a red circle moving left", "--model", str(tiny_model_dir), "-o", str(out),
                 "--steps", "2", "--candidates", "2"]) == 0
    assert read_video(out).shape == (5, 32, 32, 3)
    assert main(["generate", "a red circle", "--model", str(tiny_model_dir), "-o", str(tmp_path / "bad.mp4"),
                 "--candidates", "0"]) == 2
    assert "candidates must be an integer in [1, 16], got 0" in capsys.readouterr().err


def test_the_callback_sees_the_kept_candidates_own_steps(pipe, monkeypatch):
    import kinema.pipeline as pipeline

    seen = {}
    for order in ([0.0, 1.0], [1.0, 0.0]):
        monkeypatch.setattr(pipeline, "denoising_error", lambda *a, order=order: torch.tensor(order))
        frames: list = []
        pipe("a red circle moving left", steps=3, seed=1, candidates=2,
             callback=lambda i, f, frames=frames: frames.append(f))
        seen[order.index(0.0)] = frames
    assert len(seen[0]) == len(seen[1]) == 3
    assert not np.array_equal(seen[0][1], seen[1][1])  # each path its own candidate's


def test_eval_world_takes_candidates(tiny_model_dir, tmp_path):
    import json

    from kinema.cli import main

    out = tmp_path / "world.json"
    assert main(["eval", "world", "--model", str(tiny_model_dir), "--n", "1", "--steps", "2", "--candidates", "2",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["candidates"] == 2 and set(report) >= {"motion", "permanence", "extension"}
