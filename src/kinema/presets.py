"""Named presets: plain functions returning component configs.

    tiny       seconds on a CPU, for tests
    shapes     the bundled shapes-world models (17x64x64), trained on this CPU in minutes
    gpu-*      the same code at sizes for one or more GPUs
"""

from __future__ import annotations

from kinema.config import TrainConfig
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


VAE_PRESETS = {"tiny": vae_tiny, "shapes": vae_shapes, "gpu": vae_gpu}

VAE_TRAIN = {
    "tiny": TrainConfig(steps=30, batch_size=4, lr=2e-3, warmup_steps=5, log_every=5, ckpt_every=15),
    "shapes": TrainConfig(steps=6000, batch_size=8, lr=1e-3, warmup_steps=200, log_every=25, ckpt_every=250,
                          sample_every=1000, weight_decay=0.0),
    "gpu": TrainConfig(steps=50_000, batch_size=32, lr=5e-4, warmup_steps=1000, log_every=50, ckpt_every=1000,
                       sample_every=5000),
}


def lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} preset {name!r}; expected one of {sorted(table)}")
    value = table[name]
    return value() if callable(value) else value
