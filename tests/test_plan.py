"""`kinema plan`: its memory estimate against the measured peak of real training steps on this CPU (within
15%), exact parameter/optimizer/EMA counts, FSDP2 sharding, and the refusal of a run that cannot fit."""

from __future__ import annotations

import pytest
import torch

from kinema.cli import main
from kinema.plan import GIB, check_fits, make_plan, measured_peak_bytes


@pytest.mark.parametrize("preset, channels, batch", [("tiny", 4, 16), ("xs", 16, 32),
                                                     pytest.param("shapes", 16, 32, marks=pytest.mark.slow)])
def test_the_memory_estimate_is_within_15_percent_of_the_measured_peak(preset, channels, batch):
    plan = make_plan(preset, batch=batch, in_channels=channels, step_time=False)
    measured = measured_peak_bytes(preset, batch, (channels, 5, 8, 8))
    assert 0.85 < plan.total("single") / measured < 1.15, (plan.lines(), measured)


def test_state_is_counted_exactly_and_sharded_under_fsdp():
    plan = make_plan("xs", batch=8, gpus=4, calibrate=False)
    from kinema.dit.model import DiT
    from kinema.presets import dit_preset

    n = sum(p.numel() for p in DiT(dit_preset("xs", 16)).parameters())
    assert plan.params == n
    assert plan.state_bytes["ddp"] == {"params": 4 * n, "grads": 4 * n, "optimizer": 8 * n, "ema": 4 * n}
    assert plan.state_bytes["fsdp"]["optimizer"] == pytest.approx(2 * n)
    assert plan.total("fsdp") < plan.total("ddp")
    assert plan.flops_per_step > 0 and plan.act_per_sample > 0


def test_the_largest_batch_fits_and_one_more_does_not():
    plan = make_plan("xs", batch=8, calibrate=False, memory_gib=0.05)
    b = plan.largest_batch("single", plan.memory_bytes)
    assert plan.total("single", b) <= plan.memory_bytes < plan.total("single", b + 1)


def test_a_run_that_cannot_fit_is_refused_unless_forced():
    plan = make_plan("shapes", batch=64, calibrate=False, memory_gib=0.01)
    with pytest.raises(ValueError, match="largest batch that fits"):
        check_fits(plan)
    check_fits(plan, force=True)


def test_plan_command_and_the_train_summary(tiny_latents, tmp_path, capsys):
    torch.set_num_threads(2)
    assert main(["plan", "--preset", "tiny", "--latent-channels", "4", "--vae-spatial", "4", "--frames", "5",
                 "--size", "32", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "largest batch in" in out and "plan: tiny" in out
    assert main(["dit", "train", "--latents", str(tiny_latents), "--preset", "tiny", "--out", str(tmp_path / "r"),
                 "--steps", "1", "--batch-size", "2"]) == 0
    assert "plan: tiny" in capsys.readouterr().out
    # with --width / --depth the summary plans that model, not the preset's (it said the preset's size before)
    from kinema.dit.model import DiT, DiTConfig
    from kinema.io.weights import load_model

    assert main(["dit", "train", "--latents", str(tiny_latents), "--preset", "tiny", "--out", str(tmp_path / "w"),
                 "--steps", "1", "--batch-size", "2", "--width", "128", "--heads", "4", "--depth", "4"]) == 0
    n = sum(p.numel() for p in load_model(tmp_path / "w" / "model", "dit", DiT, DiTConfig).parameters())
    assert n > 1e6 and f"plan: tiny, {n / 1e6:.1f} M params" in capsys.readouterr().out  # the preset: 0.1 M
    assert GIB == 1024**3
