"""bf16 autocast only where the hardware is fast at it: settings, resolution and where they reach."""

import pytest
import torch

from kinema import precision
from kinema.config import TrainConfig, from_dict


def test_settings_resolve():
    assert precision.use_bf16(True, "cpu") is True
    assert precision.use_bf16(False, "cpu") is False
    assert precision.use_bf16("auto", "cpu") == precision.bf16_is_fast("cpu")
    assert precision.use_bf16("auto", "meta") is False  # no fast bf16 known for other device types


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, "bf16"])
def test_bad_setting_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="TrainConfig.bf16"):
        TrainConfig(bf16=bad)


def test_train_config_defaults_to_auto_and_old_configs_still_load():
    assert TrainConfig().bf16 == "auto"
    assert from_dict(TrainConfig, {"bf16": True}).bf16 is True  # checkpoints written before "auto"


def test_auto_follows_the_hardware(monkeypatch):
    for fast in (True, False):
        monkeypatch.setattr(precision, "bf16_is_fast", lambda device_type, fast=fast: fast)
        with precision.autocast("cpu", precision.use_bf16("auto", "cpu")):
            y = torch.nn.Linear(8, 8)(torch.randn(2, 8))
        assert y.dtype == (torch.bfloat16 if fast else torch.float32)


def test_cpu_without_bf16_instructions_is_not_fast(monkeypatch):
    precision.bf16_is_fast.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert precision.bf16_is_fast("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    precision.bf16_is_fast.cache_clear()
    assert precision.bf16_is_fast("cpu") is True
    precision.bf16_is_fast.cache_clear()


@pytest.mark.parametrize(("flags", "bf16", "warmup"), [([], "auto", 200), (["--bf16"], True, 200),
                                                       (["--no-bf16", "--warmup-steps", "7"], False, 7)])
def test_train_flags_reach_the_train_config(flags, bf16, warmup, tmp_path):
    from kinema.cli import build_parser
    from kinema.cli.common import train_config
    from kinema.presets import VAE_TRAIN

    args = build_parser().parse_args(["vae", "train", "--data", str(tmp_path), "--out", str(tmp_path), *flags])
    cfg = train_config(VAE_TRAIN["shapes"], args)
    assert (cfg.bf16, cfg.warmup_steps) == (bf16, warmup)
