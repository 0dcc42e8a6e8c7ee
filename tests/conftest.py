"""Shared fixtures: tiny datasets made once per session."""

from __future__ import annotations

import pytest
import torch

from kinema.data.shards import synth_dataset
from kinema.data.world import WorldConfig

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    """24 clips of 5x32x32 in three shards."""
    out = tmp_path_factory.mktemp("shapes")
    cfg = WorldConfig(frames=5, height=32, width=32)
    return synth_dataset(out, 24, cfg, seed=3, shard_size=10, progress=False)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory):
    """A randomly initialised tiny VAE (x4 time, x4 space, 4 channels) saved as a weights folder."""
    from kinema.io.weights import save_model
    from kinema.presets import vae_tiny
    from kinema.vae.model import VideoVAE

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("vae")
    save_model(out, "vae", VideoVAE(vae_tiny()), vae_tiny())
    return out


@pytest.fixture(scope="session")
def tiny_latents(tiny_dataset, tiny_vae_dir, tmp_path_factory: pytest.TempPathFactory):
    from kinema.encode import encode_dataset

    return encode_dataset(tiny_vae_dir, tiny_dataset, tmp_path_factory.mktemp("latents"), progress=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_latents, tmp_path_factory: pytest.TempPathFactory):
    """A complete model folder (briefly trained tiny DiT + tiny VAE) for pipeline tests."""
    from kinema.config import TrainConfig
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_PRESETS
    from kinema.train.dit_task import DiTTask
    from kinema.train.loop import train

    data = LatentDataset(tiny_latents)
    out = tmp_path_factory.mktemp("dit")
    task = DiTTask(data, DIT_PRESETS["tiny"](), FlowObjective(), batch_size=4, vae_dir=data.meta["vae"],
                   sample_prompts=["a red circle"], sample_steps=2)
    train(task, TrainConfig(steps=10, batch_size=4, warmup_steps=2, log_every=5, ckpt_every=10), out, progress=False)
    return out / "model"
