"""Named presets: plain functions returning component configs.

    tiny       seconds on a CPU, for tests
    shapes     the bundled shapes-world models (17x64x64), trained on this CPU in minutes
    gpu-*      the same code at sizes for one or more GPUs
"""

from __future__ import annotations

import dataclasses

from kinema.config import TrainConfig
from kinema.dit.model import DiTConfig
from kinema.vae.model import VAEConfig


def vae_tiny() -> VAEConfig:
    return VAEConfig(latent_channels=4, spatial_compression=4, temporal_compression=4, base_channels=8,
                     encoder_blocks=1, decoder_blocks=1)


def vae_shapes() -> VAEConfig:
    """x4 time, x8 space, 16 channels: 48x nominal compression; ~5.6M parameters."""
    return VAEConfig(latent_channels=16, spatial_compression=8, temporal_compression=4, base_channels=32)


def vae_gpu() -> VAEConfig:
    return VAEConfig(latent_channels=16, spatial_compression=8, temporal_compression=4, base_channels=96,
                     encoder_blocks=2, decoder_blocks=3)


def vae_shapes_s4() -> VAEConfig:
    """x4 time, x4 space, 4 channels: also 48x, a 16x16 latent grid for 64x64 (docs/experiments/vae-pilots.md)."""
    return VAEConfig(latent_channels=4, spatial_compression=4, temporal_compression=4, base_channels=32)


def vae_shapes_s4c8() -> VAEConfig:
    """x4 time, x4 space, 8 channels: 24x, a 16x16 latent grid for 64x64 that keeps small shapes' corners."""
    return VAEConfig(latent_channels=8, spatial_compression=4, temporal_compression=4, base_channels=32)


def vae_shapes_s4c8_lite() -> VAEConfig:
    """shapes-s4c8 with 64 channels instead of 128 at the deepest stage (2.0M parameters instead of 5.4M): 1.75x
    fewer FLOPs, 1.28x faster to train on a 2-core EPYC, probe ceiling 98.4% single-object; the from-scratch hour's
    VAE (docs/experiments/learning-efficiency.md, session 45)."""
    return dataclasses.replace(vae_shapes_s4c8(), max_channel_mult=2)


def vae_shapes_s4c8_slim() -> VAEConfig:
    """shapes-s4c8 with half its channels at every stage (16, 32, 64 instead of 32, 64, 128; 1.4M parameters):
    1.8-1.9x faster to train than `shapes-s4c8-lite` and 2.0-2.1x faster to encode in float32 on a 2-core AVX2 EPYC
    (`benchmarks/vae_presets.py`), where the convolutions at the pixel side are most of the VAE's time; probe
    ceiling 93.8% single-object after 6000 steps; `make shapes-hour`'s VAE (learning-efficiency.md, session 47)."""
    return dataclasses.replace(vae_shapes_s4c8(), base_channels=16)


VAE_PRESETS = {"tiny": vae_tiny, "shapes": vae_shapes, "shapes-s4": vae_shapes_s4, "shapes-s4c8": vae_shapes_s4c8,
               "shapes-s4c8-lite": vae_shapes_s4c8_lite, "shapes-s4c8-slim": vae_shapes_s4c8_slim, "gpu": vae_gpu}

VAE_TRAIN = {
    "tiny": TrainConfig(steps=30, batch_size=4, lr=2e-3, warmup_steps=5, log_every=5, ckpt_every=15),
    "shapes": TrainConfig(steps=6000, batch_size=8, lr=1e-3, warmup_steps=200, log_every=25, ckpt_every=250,
                          sample_every=1000, weight_decay=0.0),
    "gpu": TrainConfig(steps=50_000, batch_size=32, lr=5e-4, warmup_steps=1000, log_every=50, ckpt_every=1000,
                       sample_every=5000),
}
for _name in ("shapes-s4", "shapes-s4c8", "shapes-s4c8-lite", "shapes-s4c8-slim"):
    VAE_TRAIN[_name] = VAE_TRAIN["shapes"]


def lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} preset {name!r}; expected one of {sorted(table)}")
    value = table[name]
    return value() if callable(value) else value


# ---------------------------------------------------------------------------------------------------
# DiT: sizes share patch (1, 2, 2); `in_channels` comes from the latent cache (dit_preset), `text_dim` is
# MiniLM's 384. Absolute 3D sin/cos positions beside RoPE, lr 1e-3 at the small sizes: the ladder's evidence
# (docs/experiments/learning-efficiency.md:
# RoPE alone 55% vs 86% all-correct, lr 6e-4 67%, width 128 44%, on the same data and steps)
# ---------------------------------------------------------------------------------------------------


def dit(dim: int, depth: int, heads: int, in_channels: int = 16) -> DiTConfig:
    return DiTConfig(in_channels=in_channels, patch=(1, 2, 2), dim=dim, depth=depth, heads=heads, text_dim=384,
                     abs_pos=True)


DIT_PRESETS = {
    "tiny": lambda: dit(32, 2, 2, in_channels=4),
    "xs": lambda: dit(128, 4, 4),
    "ref": lambda: dit(192, 4, 6),  # the ladder's working small recipe (3.5M parameters)
    "s": lambda: dit(192, 6, 6),
    "shapes": lambda: dit(256, 6, 8),  # the bundled model
    "m": lambda: dit(384, 8, 6),
    "b": lambda: dit(768, 12, 12),  # DiT-B width: a GPU
    "l": lambda: dit(1024, 24, 16),  # DiT-L: GPUs
}

# The flow objective's noise levels for new `kinema dit train` runs: training noise levels logit-normal around 0.8
# (median 0.69, not 0.5) and sampling shift 2, both weighting the high-noise start where layout and motion are
# decided. Measured on the ladder (docs/experiments/learning-efficiency.md, session 19): the full single-object
# world 44 -> 70% all-correct at 3000 steps (motion 70 -> 100%, shape at the VAE's ceiling). FlowObjective's own
# defaults stay (0, 1), so the ladder's rungs and every saved model keep theirs.
FLOW_NOISE = {"logit_mean": 0.8, "shift": 2.0}

DIT_TRAIN = {
    "tiny": TrainConfig(steps=40, batch_size=4, lr=1e-3, warmup_steps=5, log_every=10, ckpt_every=20),
    "xs": TrainConfig(steps=1500, batch_size=32, lr=1e-3, warmup_steps=100, ema_decay=0.999, log_every=25,
                      ckpt_every=250),
    "ref": TrainConfig(steps=1500, batch_size=32, lr=1e-3, warmup_steps=100, ema_decay=0.998, log_every=25,
                       ckpt_every=250),
    "s": TrainConfig(steps=1500, batch_size=32, lr=1e-3, warmup_steps=100, ema_decay=0.999, log_every=25,
                     ckpt_every=250),
    "shapes": TrainConfig(steps=5000, batch_size=32, lr=1e-3, warmup_steps=100, ema_decay=0.999, log_every=25,
                          ckpt_every=250, sample_every=1000),
    "m": TrainConfig(steps=3000, batch_size=32, lr=4e-4, warmup_steps=200, ema_decay=0.999, log_every=25,
                     ckpt_every=250),
    "b": TrainConfig(steps=100_000, batch_size=64, lr=1e-4, warmup_steps=2000, ema_decay=0.9999, log_every=100,
                     ckpt_every=2000, sample_every=10_000),
    "l": TrainConfig(steps=400_000, batch_size=64, lr=1e-4, warmup_steps=5000, ema_decay=0.9999, log_every=100,
                     ckpt_every=5000, sample_every=20_000, activation_checkpointing=True, parallel="fsdp"),
}


def dit_preset(name: str, in_channels: int, patch: tuple[int, int, int] | None = None) -> DiTConfig:
    """The named DiT preset with its input channels set to a latent cache's, and its patch replaced if given."""
    import dataclasses

    cfg = dataclasses.replace(lookup(DIT_PRESETS, name, "dit"), in_channels=in_channels)
    return dataclasses.replace(cfg, patch=patch) if patch else cfg


# ---------------------------------------------------------------------------------------------------
# The other trainers: the few-step reflow student (train/reflow.py) and the video captioner
# ---------------------------------------------------------------------------------------------------

REFLOW_TRAIN = TrainConfig(steps=600, batch_size=32, lr=1e-4, warmup_steps=50, ema_decay=0.0, log_every=25,
                           ckpt_every=100)
CAPTIONER_TRAIN = TrainConfig(steps=1500, batch_size=32, lr=5e-4, warmup_steps=100, log_every=25, ckpt_every=250)
# LoRA fine-tuning of a trained DiT on a few hundred clips (kinema.train.lora_task): B starts at zero, so a high
# rate is safe; no EMA (short runs)
LORA_TRAIN = TrainConfig(steps=600, batch_size=16, lr=2e-3, warmup_steps=20, ema_decay=0.0, log_every=25,
                         ckpt_every=100)
