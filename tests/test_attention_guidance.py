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
    DEFAULT_UNTIL,
    attention_corrector,
    attention_guidance_loss,
    check_attention_guidance,
    clause_maps,
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


def test_check_attention_guidance_reads_a_strength_or_a_pair_and_names_what_is_wrong():
    assert check_attention_guidance(0.05) == (0.05, DEFAULT_UNTIL)
    assert check_attention_guidance([0.1, 0.9]) == (0.1, 0.9)
    assert parse_attention_guidance("0.05,0.6") == (0.05, 0.6)
    for bad in (-1.0, (0.1, 2.0), "x", float("nan")):
        with pytest.raises(ValueError, match="STRENGTH"):
            check_attention_guidance(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="STRENGTH,UNTIL"):
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


def test_a_model_without_clause_tokens_refuses_attention_guidance(tiny_model_dir):
    pipe = TextToVideoPipeline.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match=r"\+clauses"):
        pipe("a red circle", steps=2, attention_guidance=0.05)
