"""The facts with one owner: ModelIndex, VAEConfig's frame arithmetic, the sampler registry, GenerateOptions."""

from __future__ import annotations

import json

import pytest
import torch

from kinema.config import from_dict
from kinema.diffusion.objectives import FlowObjective
from kinema.diffusion.samplers import SAMPLERS, register_sampler, sample, samplers_for
from kinema.generate import GenerateOptions
from kinema.model_index import ModelIndex, model_index_for, read_model_index, write_model_index
from kinema.vae.model import VAEConfig


def test_model_index_round_trips_and_names_bad_fields(tmp_path):
    index = model_index_for(FlowObjective(), "minilm:0,6", VAEConfig(spatial_compression=4), (5, 16, 16),
                            steps=25, init_from="somewhere")
    assert (index.frames, index.height, index.width) == (17, 64, 64)
    write_model_index(tmp_path, index)
    assert read_model_index(tmp_path) == index
    raw = json.loads((tmp_path / "model_index.json").read_text())
    assert "distilled" not in raw  # unset provenance is not written
    for bad, needle in (({"frames": 17}, "missing field"), ({**raw, "steps": "30"}, "'steps'"),
                        ({**raw, "fps": True}, "'fps'"), ({**raw, "colour": 1}, "unknown field"),
                        ({**raw, "frames": 0}, "frames"), ({**raw, "sampler": "heun"}, "sampler"),
                        ({**raw, "guidance_interval": [0.9, 0.1]}, "guidance_interval")):
        (tmp_path / "model_index.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=needle) as e:
            read_model_index(tmp_path)
        assert "model_index.json" in str(e.value) or needle in ("frames", "sampler", "guidance_interval")


def test_the_bundled_model_index_reads():
    from kinema.generate import BUNDLED_MODEL

    index = read_model_index(BUNDLED_MODEL)
    assert index.objective["kind"] == "flow" and (index.frames, index.height) == (17, 64)


def test_default_sampler_is_the_folders_else_its_objectives_first():
    assert ModelIndex(objective={"kind": "flow"}).default_sampler == samplers_for("flow")[0] == "euler"
    assert ModelIndex(objective={"kind": "ddpm"}).default_sampler == samplers_for("ddpm")[0] == "ddim"
    assert ModelIndex(objective={"kind": "flow"}, sampler="euler-a").default_sampler == "euler-a"


def test_from_dict_rejects_bools_as_ints_but_takes_ints_as_floats():
    assert from_dict(ModelIndex, {"objective": {"kind": "flow"}, "guidance": 4}).guidance == 4
    with pytest.raises(ValueError, match="'frames'"):
        from_dict(ModelIndex, {"objective": {"kind": "flow"}, "frames": False})


@pytest.mark.parametrize("t", [1, 2, 4, 8])
def test_vae_frame_arithmetic_is_consistent(t):
    cfg = VAEConfig(temporal_compression=t, spatial_compression=8)
    for latent in range(1, 6):
        frames = cfg.pixel_frames(latent)
        assert cfg.latent_frames(frames) == latent
        groups = cfg.frame_groups(frames)
        assert len(groups) == latent and [i for g in groups for i in g] == list(range(frames))
        assert list(groups[0]) == [0]  # causal: frame 0 alone
        assert cfg.latent_shape(frames, 64, 32)[1:] == (latent, 8, 4)
        assert cfg.pixel_shape(latent, 8, 4) == (frames, 64, 32)
    assert cfg.fit_shape(cfg.pixel_frames(3) + t - 1, 70, 65) == (cfg.pixel_frames(3), 64, 64)
    for bad in ((0, 64, 64), (1, 0, 64), (1, 64, 60)):
        if t > 1 or bad[0] < 1 or bad[1:] != (64, 64):
            with pytest.raises(ValueError):
                cfg.latent_shape(*bad)


def test_a_registered_sampler_is_usable_everywhere():
    @register_sampler("test-midpoint", "flow", "midpoint steps (test)")
    def midpoint(obj, fn, x, levels, generator, start, callback, correct):
        for a, b in zip(levels[start:-1], levels[start + 1:], strict=True):
            x = correct(x, torch.full((x.shape[0],), a)) if correct else x
            mid = x + (b - a) / 2 * fn(x, torch.full((x.shape[0],), a))
            x = x + (b - a) * fn(mid, torch.full((x.shape[0],), (a + b) / 2))
        return x

    try:
        assert "test-midpoint" in samplers_for("flow")
        target = torch.randn(2, 3)
        velocity = lambda x, t: (x - target) / t[:, None]  # noqa: E731 (the exact field of paths that end at target)
        out = sample(FlowObjective(), velocity, torch.randn(2, 3), 8, "test-midpoint")
        assert torch.allclose(out, target, atol=1e-4)
        with pytest.raises(ValueError, match="does not fit"):
            sample(FlowObjective(), lambda x, t: x, torch.randn(2, 3), 4, "ddim")
    finally:
        del SAMPLERS["test-midpoint"]


def test_generate_options_checks_before_anything_loads():
    assert GenerateOptions("a red circle", steps=30, guidance=4).guidance == 4
    for kwargs, needle in (({"steps": 0}, "steps"), ({"guidance": float("nan")}, "guidance"),
                           ({"guidance": -1.0}, "guidance"), ({"frames": 0}, "frames"), ({"size": (0, 64)}, "size"),
                           ({"steps": True}, "steps"), ({"image": "a", "connect": ("b", "c")}, "use one of"),
                           ({"strength": 2.0}, "strength"), ({"guidance_interval": (0.5, 0.2)}, "interval")):
        with pytest.raises(ValueError, match=needle):
            GenerateOptions("a red circle", **kwargs)
    for prompt in ("", "   ", "x" * 2000, "bad \udcff byte"):
        with pytest.raises(ValueError):
            GenerateOptions(prompt)
