"""Attention guidance (dit/attention_guidance.py): the maps, the loss, the corrector, the samplers' hook and the
pipeline / CLI wiring."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from kinema.cli.common import parse_attention_guidance
from kinema.diffusion.objectives import FlowObjective
from kinema.diffusion.samplers import noise_levels, sample
from kinema.dit.attention_guidance import (
    DEFAULT_MOTION,
    DEFAULT_UNTIL,
    ObjectMotion,
    attention_corrector,
    attention_guidance_loss,
    centroids,
    check_attention_guidance,
    clause_maps,
    motion_loss,
    spread,
)
from kinema.dit.model import DiT, DiTConfig
from kinema.layers.attention import kept_cross_attention
from kinema.pipeline import TextToVideoPipeline
from kinema.text.encoder import load_text_encoder


def test_spread_is_zero_on_one_token_and_grows_with_the_distance_between_two():
    one = torch.zeros(4, 4)
    one[1, 2] = 0.3
    two = torch.zeros(4, 4)
    two[0, 0] = two[0, 2] = 0.1  # two equal blobs 2 tokens apart: variance 1
    far = torch.zeros(4, 4)
    far[0, 0] = far[3, 3] = 0.1  # (3, 3) apart: 2 x 1.5^2
    assert spread(torch.stack([one, two, far])).tolist() == pytest.approx([0.0, 1.0, 4.5])


def test_the_loss_prefers_each_object_read_strongly_in_one_place():
    def maps(*cells, value=0.5):  # (1, 1, 1, 4, 4): one object, one frame
        m = torch.full((4, 4), 0.01)
        for y, x in cells:
            m[y, x] = value
        return m.view(1, 1, 1, 4, 4)

    focused, split, faint = maps((1, 1)), maps((0, 0), (3, 3)), maps((1, 1), value=0.05)
    loss = attention_guidance_loss(torch.cat([focused, split, faint]))
    assert loss[0] < loss[1] and loss[0] < loss[2]


def _moving_blob(xs: list[int]) -> torch.Tensor:
    """(1, 1, f, 4, 4): one object's map with its peak at column xs[i] of row 1 in frame i, a faint haze elsewhere."""
    m = torch.full((len(xs), 4, 4), 0.02)
    for i, x in enumerate(xs):
        m[i, 1, x] = 0.6
    return m[None, None]


def test_centroids_follow_the_peak_more_closely_at_a_higher_power():
    m = _moving_blob([3])
    m[0, 0, 0, 3, 0] = 0.3  # a second, weaker blob at the far corner
    mass, peak = centroids(m)[0, 0, 0], centroids(m, 4.0)[0, 0, 0]
    strong = torch.tensor([1.0, 3.0])
    assert (peak - strong).norm() < 0.25  # on the strong blob (a 1/16 pull from the weak one)
    assert (mass - strong).norm() > 1.0  # the mass is pulled toward the weak blob and the haze


def test_the_motion_term_asks_for_the_prompted_direction_and_speed_and_stillness():
    times = [0.0, 4.0, 8.0]  # latent frame centres, 4 pixel frames apart
    right = ObjectMotion((0.0, 0.25))  # 0.25 tokens a pixel frame: 1 token per latent frame
    goes_right, goes_left, stays = _moving_blob([0, 1, 2]), _moving_blob([2, 1, 0]), _moving_blob([1, 1, 1])
    loss = motion_loss(torch.cat([goes_right, goes_left, stays]), [right], times)
    assert loss[0] == pytest.approx(0.0, abs=1e-3)  # moving 1 token a latent frame: more than half the speed asks
    assert loss[1] > 1.0 and loss[2] == pytest.approx(0.5, abs=0.05)  # wrong way; not moving: the margin, 0.5
    still = motion_loss(torch.cat([stays, goes_right]), [ObjectMotion((0.0, 0.0))], times)
    assert still[0] == pytest.approx(0.0, abs=1e-3) and still[1] > 0.9
    assert torch.equal(motion_loss(goes_left, [None], times), torch.zeros(1))  # the prompt says nothing: no term
    with pytest.raises(ValueError, match="2 motions"):
        motion_loss(goes_left, [right, right], times)


def test_check_attention_guidance_reads_a_strength_a_pair_or_a_triple_and_names_what_is_wrong():
    assert check_attention_guidance(0.05) == (0.05, DEFAULT_UNTIL, DEFAULT_MOTION)
    assert check_attention_guidance([0.1, 0.9]) == (0.1, 0.9, DEFAULT_MOTION)
    assert check_attention_guidance([0.1, 0.9, 1]) == (0.1, 0.9, 1.0)
    assert parse_attention_guidance("0.05,0.6") == (0.05, 0.6, DEFAULT_MOTION)
    assert parse_attention_guidance("0.05,0.6,2") == (0.05, 0.6, 2.0)
    for bad in (-1.0, (0.1, 2.0), (0.1, 0.5, -1), (0.1, 0.5, 1, 1), "x", float("nan")):
        with pytest.raises(ValueError, match="STRENGTH"):
            check_attention_guidance(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="STRENGTH"):
        parse_attention_guidance("0.05,")


def test_kept_cross_attention_nests():
    model = DiT(DiTConfig(in_channels=4, patch=(1, 2, 2), dim=32, depth=2, heads=2, text_dim=8,
                          frame_conditioning=False))
    x, text, mask = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    with kept_cross_attention(model) as outer:
        model(x, torch.ones(1), text, mask)
        with kept_cross_attention(model) as inner:
            model(x, torch.ones(1), text, mask)
        model(x, torch.ones(1), text, mask)  # the outer recorder again
    model(x, torch.ones(1), text, mask)  # nothing recorded
    assert len(inner) == 2 and len(outer) == 4


def _model_and_call():
    torch.manual_seed(0)
    model = DiT(DiTConfig(in_channels=4, patch=(1, 2, 2), dim=32, depth=2, heads=2, text_dim=8,
                          frame_conditioning=False))
    text, mask = torch.randn(1, 4, 8), torch.ones(1, 4, dtype=torch.bool)
    return model, lambda z, t: model(z, t, text, mask)


def _loss(model, call, x, tokens):
    with torch.no_grad(), kept_cross_attention(model) as kept:
        call(x, torch.ones(1))
    return float(attention_guidance_loss(clause_maps(kept, tokens, (2, 2, 2))).sum())


def test_a_corrector_step_lowers_the_guidance_loss():
    model, call = _model_and_call()
    x = torch.randn(1, 4, 2, 4, 4)
    correct = attention_corrector(model, call, tokens=[2, 3], strength=0.05)
    moved = correct(x, torch.ones(1))
    assert not torch.equal(moved, x)
    assert _loss(model, call, moved, [2, 3]) < _loss(model, call, x, [2, 3])
    # below `until`, at strength 0 or with no object tokens the state is left as it is
    assert torch.equal(correct(x, torch.full((1,), DEFAULT_UNTIL - 0.1)), x)
    assert torch.equal(attention_corrector(model, call, [2, 3], strength=0.0)(x, torch.ones(1)), x)
    assert torch.equal(attention_corrector(model, call, [], strength=0.05)(x, torch.ones(1)), x)
    with pytest.raises(ValueError, match="1 motions for 2 tokens"):  # one motion (or None) per object token
        attention_corrector(model, call, [2, 3], 0.05, motions=[ObjectMotion((0.0, 0.1))], frame_times=[0.0, 4.0],
                            motion_weight=1.0)


@pytest.mark.parametrize("sampler", ["euler", "euler-a", "renoise"])
def test_samplers_call_the_corrector_before_each_model_call(sampler):
    obj = FlowObjective()
    seen: list[float] = []

    def correct(x, t):
        seen.append(float(t[0]))
        return x

    noise = torch.randn(1, 2, 1, 2, 2)
    field = lambda x, t: -x  # noqa: E731
    plain = sample(obj, field, noise, 5, sampler, torch.Generator().manual_seed(0))
    hooked = sample(obj, field, noise, 5, sampler, torch.Generator().manual_seed(0), correct=correct)
    assert torch.equal(plain, hooked)  # an identity corrector changes nothing
    assert seen == pytest.approx(noise_levels(obj, 5)[:-1])


@pytest.fixture(scope="module")
def clause_pipe(tiny_model_dir):
    """The tiny model with a clause-token text encoder (the same width as its own)."""
    pipe = TextToVideoPipeline.from_pretrained(tiny_model_dir)
    name = "minilm:0,6+clauses"
    return TextToVideoPipeline(pipe.dit, pipe.vae, load_text_encoder(name), pipe.objective,
                               pipe.index.replace(text_encoder=name))


def test_the_pipeline_steers_the_object_clause_tokens(clause_pipe):
    prompt = "a red circle moving left and a blue square moving up, on a black background"
    _, mask = clause_pipe.encode_prompt([prompt])
    real = mask[0].nonzero().flatten().tolist()
    assert clause_pipe.object_clause_tokens(prompt, mask) == real[-3:-1]  # not the background clause
    plain = clause_pipe(prompt, steps=3, seed=1)
    guided = clause_pipe(prompt, steps=3, seed=1, attention_guidance=(0.5, 0.0))
    assert guided.shape == plain.shape and not np.array_equal(guided, plain)
    assert np.array_equal(clause_pipe(prompt, steps=3, seed=1, attention_guidance=0.0), plain)
    with pytest.warns(UserWarning, match="no clause"):  # nothing it knows to steer: said, not silently skipped
        clause_pipe("a dog runs through the park", steps=2, attention_guidance=0.05)


def test_the_pipeline_turns_each_prompted_motion_into_a_velocity_on_the_token_grid(clause_pipe):
    from kinema.data.world import SPEED_PX

    prompt = "a red circle moving quickly to the left, a blue square that does not move and a green triangle"
    _, mask = clause_pipe.encode_prompt([prompt])
    objects = [o for _, o in clause_pipe.object_clauses(prompt, mask)]
    assert [o.color for o in objects] == ["red", "blue", "green"]
    _, ph, pw = clause_pipe.dit.cfg.patch
    token = clause_pipe.vae.cfg.spatial_compression * pw  # pixels a token spans across
    left, still, unsaid = (clause_pipe.object_motion(o, 64) for o in objects)
    assert left.velocity == pytest.approx((0.0, -SPEED_PX["quickly"] * 64 / token))
    assert still.velocity == (0.0, 0.0) and unsaid is None
    plain = clause_pipe(prompt, steps=3, seed=1, attention_guidance=(0.5, 0.0))
    assert np.array_equal(clause_pipe(prompt, steps=3, seed=1, attention_guidance=(0.5, 0.0, 0.0)), plain)
    assert not np.array_equal(clause_pipe(prompt, steps=3, seed=1, attention_guidance=(0.5, 0.0, 1.0)), plain)


def test_a_model_without_clause_tokens_refuses_attention_guidance(tiny_model_dir):
    pipe = TextToVideoPipeline.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match=r"\+clauses"):
        pipe("a red circle", steps=2, attention_guidance=0.05)


def test_unread_flags_a_sample_with_an_object_no_token_reads():
    from kinema.dit.attention_guidance import UNREAD_SHARE, unread

    maps = torch.full((3, 2, 2, 4, 4), 0.001)  # (B, K objects, f, h, w)
    maps[:, :, :, 1, 1] = 0.1  # every object read somewhere in every frame
    maps[1, 1, :, 1, 1] = UNREAD_SHARE / 2  # sample 1: its second object read nowhere
    maps[2, 0, 0, 1, 1] = 0.0  # sample 2: its first object unread in one frame of two, read (0.1) in the other
    assert unread(maps).tolist() == [False, True, False]


def test_wrong_way_flags_an_object_whose_peak_travels_against_its_prompted_direction():
    from kinema.dit.attention_guidance import wrong_way

    def track(cols):  # one object's maps over len(cols) frames: a blob at row 1, column cols[i] in frame i
        maps = torch.full((len(cols), 4, 4), 0.001)
        for f, c in enumerate(cols):
            maps[f, 1, c] = 0.2
        return maps

    left, right, still = track([3, 2, 1, 0]), track([0, 1, 2, 3]), track([1, 1, 1, 1])
    times = [0.0, 2.5, 6.5, 10.5]  # uneven latent frame centres, as a causal VAE gives
    go_left, stay = ObjectMotion((0.0, -0.5)), ObjectMotion((0.0, 0.0))  # (dy, dx) tokens per pixel frame
    maps = torch.stack([torch.stack([left, still]), torch.stack([right, still]), torch.stack([still, right]),
                        torch.stack([track([3, 2, 1, 1]), still])])  # (B=4, K=2, f, h, w)
    # 0: goes left as asked; 1: goes right, asked left; 2: stays put (not against) while the still one moves (not
    # a direction: not flagged); 3: goes left, then stops: along its direction on the whole, not flagged
    assert wrong_way(maps, [go_left, stay], times).tolist() == [False, True, False, False]
    assert wrong_way(maps, [None, None], times).tolist() == [False] * 4  # no motion prompted: nothing to judge
    assert wrong_way(maps[:, :, :1], [go_left, stay], times[:1]).tolist() == [False] * 4  # one frame: no track
    with pytest.raises(ValueError, match="1 motions"):
        wrong_way(maps, [go_left], times)


def test_watch_flaws_reads_the_maps_of_the_call_at_its_level_and_averages_the_noises(clause_pipe, monkeypatch):
    import kinema.dit.attention_guidance as ag
    from kinema.layers.patches import token_grid

    prompt = "a red circle moving left and a blue square moving up, on a black background"
    text, mask = clause_pipe.encode_prompt([prompt])
    tokens = clause_pipe.object_clause_tokens(prompt, mask)
    calls, read = [], []

    def model_fn(x, t):
        calls.append(float(t[0]))
        n = x.shape[0]
        return clause_pipe.dit(x, t, text=text.expand(n, -1, -1), text_mask=mask.expand(n, -1))

    monkeypatch.setattr(ag, "unread", lambda maps: read.append(maps) or maps.flatten(1).sum(1) > 0)
    fn, flaws_in = ag.watch_flaws(clause_pipe.dit, model_fn, tokens, level=0.5)
    x = torch.randn(4, *clause_pipe.vae.cfg.latent_shape(5, 32, 32))  # 2 noises x 2 samples
    for level in (0.2, 0.9):
        assert fn(x, torch.full((4,), level)).shape == x.shape
    assert flaws_in(2).tolist() == [0, 0] and not read  # no call at 0.5 yet: nothing read, nothing flagged
    fn(x, torch.full((4,), 0.5))
    assert calls == pytest.approx([0.2, 0.9, 0.5])
    assert flaws_in(2).tolist() == [2, 2]  # unread: the worst flaw
    grid = token_grid(x.shape, clause_pipe.dit.cfg.patch)
    assert read[0].shape == (2, 2, *grid)  # the two noises averaged: one map per sample and object
    _, flaws_none = ag.watch_flaws(clause_pipe.dit, model_fn, [], level=0.5)
    assert flaws_none(2).tolist() == [0, 0]  # no object clauses: nothing to read
    # with motions: an object read everywhere but going the wrong way is flaw 1
    monkeypatch.setattr(ag, "unread", lambda maps: torch.zeros(maps.shape[0], dtype=torch.bool))
    monkeypatch.setattr(ag, "wrong_way", lambda maps, motions, times: torch.tensor([True, False]))
    times = [sum(g) / len(g) for g in clause_pipe.vae.cfg.frame_groups(5)]
    fn, flaws_in = ag.watch_flaws(clause_pipe.dit, model_fn, tokens, [ObjectMotion((0, -1)), None], times)
    fn(x, torch.full((4,), 0.5))
    assert flaws_in(2).tolist() == [1, 0]
    with pytest.raises(ValueError, match="1 motions for 2 tokens"):
        ag.watch_flaws(clause_pipe.dit, model_fn, tokens, [None], times)


def test_the_judge_ranks_a_flawed_candidate_last_and_tells_it_the_prompted_motions(clause_pipe, monkeypatch):
    import kinema.pipeline as pipeline

    prompt = "a red circle moving left and a blue square moving up, on a black background"
    judged = []

    def watch(model, model_fn, tokens, motions, frame_times, *args, **kwargs):  # candidate 0 (the error's choice)
        judged.append((list(tokens), motions, frame_times))  # is flawed
        return model_fn, lambda batch: torch.tensor([1] + [0] * (batch - 1))

    monkeypatch.setattr(pipeline, "denoising_error", lambda obj, fn, x, generator: torch.tensor([0.0, 1.0]))
    by_error = clause_pipe(prompt, steps=3, seed=1, candidates=2, attention_guidance=(0.5, 0.0))
    monkeypatch.setattr(pipeline, "watch_flaws", watch)
    by_flaws = clause_pipe(prompt, steps=3, seed=1, candidates=2, attention_guidance=(0.5, 0.0))
    tokens, motions, times = judged[0]
    assert len(tokens) == 2 and len(times) == clause_pipe.vae.cfg.latent_frames(clause_pipe.index.frames)
    vy, vx = motions[0].velocity  # the red circle moves left, the blue square up
    assert vx < 0 and vy == 0 and motions[1].velocity[0] < 0 and motions[1].velocity[1] == 0
    assert not np.array_equal(by_error, by_flaws)  # candidate 1 kept though its error is higher
    monkeypatch.setattr(pipeline, "denoising_error", lambda obj, fn, x, generator: torch.tensor([1.0, 0.0]))
    assert np.array_equal(clause_pipe(prompt, steps=3, seed=1, candidates=2, attention_guidance=(0.5, 0.0)),
                          by_flaws)  # the same candidate 1: best by the error and without a flaw
