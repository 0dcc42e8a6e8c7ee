"""Scaling study pieces: FLOP counting, the fixed validation loss, the power-law fit, the 3D U-Net baseline,
and the experiment end to end at toy scale."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from kinema.diffusion.objectives import FlowObjective
from kinema.eval.scaling import fit_power_law, pareto_front, training_flops_per_sample, validation_loss
from kinema.unet.model import UNet3D, UNetConfig


def test_power_law_fit_recovers_exponent_and_r2():
    c = np.geomspace(1e9, 1e13, 6)
    law = fit_power_law(c, 3.0 * c ** -0.07)
    assert law.exponent == pytest.approx(-0.07, abs=1e-9) and law.a == pytest.approx(3.0, rel=1e-6)
    assert law.r2 == pytest.approx(1.0)
    noisy = fit_power_law(c, 3.0 * c ** -0.07 * np.exp(np.random.default_rng(0).normal(0, 0.05, 6)))
    assert noisy.r2 < 1.0 and noisy.exponent == pytest.approx(-0.07, abs=0.03)
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_power_law([1.0], [1.0])


def test_pareto_front_keeps_points_no_cheaper_point_beats():
    pts = [(1, 5.0), (2, 4.0), (3, 4.5), (4, 3.0), (5, 3.5)]
    assert pareto_front(pts) == [(1, 5.0), (2, 4.0), (4, 3.0)]


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 8, bias=False)
        self.cfg = type("Cfg", (), {"text_dim": 16})()  # a backbone's config names its text width

    def forward(self, x, t, text, text_mask):
        return self.lin(x.flatten(1))


def test_flop_counter_counts_3x_forward_matmuls():
    # one (1 x 4) @ (4 x 8) matmul = 64 FLOPs forward; training = 3x
    assert training_flops_per_sample(_Linear(), (4,)) == 3 * 2 * 4 * 8


def test_unet_same_signature_zero_init_any_size_and_masked_text():
    cfg = UNetConfig(in_channels=4, channels=16, mults=(1, 2), heads=2, text_dim=8)
    model = UNet3D(cfg)
    x, t = torch.randn(2, 4, 3, 8, 12), torch.rand(2)
    text, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(model(x, t, text=text, text_mask=mask), torch.zeros_like(x))  # zero-initialised output
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    out = model(x, t, text=text, text_mask=mask)
    assert out.shape == x.shape and out.abs().sum() > 0
    changed = text.clone()
    changed[0, 3:] = 100.0  # masked tokens of clip 0
    assert torch.allclose(model(x, t, text=changed, text_mask=mask)[0], out[0], atol=1e-5)
    assert cfg.patch == (1, 2, 2)
    with pytest.raises(ValueError, match="must divide by heads"):
        UNetConfig(channels=20, mults=(1,), heads=3)


def test_validation_loss_is_deterministic_and_model_dependent(tiny_latents):
    from kinema.data.latents import LatentDataset
    from kinema.dit.model import DiT
    from kinema.presets import DIT_PRESETS

    data = LatentDataset(tiny_latents)
    torch.manual_seed(0)
    model = DiT(dataclasses.replace(DIT_PRESETS["tiny"](), text_dim=data.meta["text_dim"]))
    a = validation_loss(model, FlowObjective(), data, list(range(8)), batch_size=4)
    assert a == validation_loss(model, FlowObjective(), data, list(range(8)), batch_size=4)
    for p in model.final_layer.parameters():
        p.data.normal_(0, 0.1)
    assert validation_loss(model, FlowObjective(), data, list(range(8)), batch_size=4) != a


def test_scaling_experiment_end_to_end(tiny_latents, tmp_path):
    from kinema.cli import main
    from kinema.pipeline import TextToVideoPipeline

    doc = tmp_path / "docs" / "scaling.md"
    argv = ["experiment", "scaling", "--latents", str(tiny_latents), "--out", str(tmp_path / "exp"), "--sizes",
            "32x1", "128x1", "--steps", "4", "--batch-size", "4", "--evals", "2", "--val-clips", "4",
            "--unet-match", "128x1", "--eval-n", "2", "--eval-steps", "2", "--world-n", "1", "--doc", str(doc)]
    assert main(argv) == 0
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert set(results["runs"]) == {"dit-32x1", "dit-128x1", "unet"}
    small, big = results["runs"]["dit-32x1"], results["runs"]["dit-128x1"]
    assert big["flops_per_clip"] > small["flops_per_clip"] and big["params"] > small["params"]
    assert [p["step"] for p in small["points"]] == [2, 4]
    assert small["points"][1]["compute"] == pytest.approx(4 * 4 * small["flops_per_clip"])
    unet = results["runs"]["unet"]
    assert abs(np.log(unet["flops_per_clip"] / big["flops_per_clip"])) < np.log(2)  # matched compute
    assert results["fit_final"]["points"] == 2
    # the adherence prompts come from the data's own world (tiny_latents: a 5x32x32 shapes world), with the
    # direction-word sensitivity beside them
    assert {"all_correct", "color", "motion", "word_swap", "temporal"} <= set(small["adherence"])
    assert small["train_minutes"] >= 0 and "velocity_residual" in small["adherence"]["world"]["motion"]["real"]
    assert "World-simulator metrics along the sizes" in doc.read_text()
    assert TextToVideoPipeline.from_pretrained(tmp_path / "exp" / "unet" / "model").dit.__class__ is UNet3D
    assert "Power-law fits" in doc.read_text() and doc.with_suffix(".png").exists()
    assert doc.with_name(doc.stem + "-world.png").stat().st_size > 1000  # world metrics against compute
