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
