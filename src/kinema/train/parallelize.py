"""Parallelism applied from outside the model, in one documented order (as torchtitan does):

    1. activation checkpointing   (each transformer/res block recomputes its activations in backward)
    2. torch.compile              (per block, so graphs stay small and reusable)
    3. data parallel              DDP (replicate) or FSDP2 (`fully_shard` each block, then the root)

Models expose their repeated blocks as `model.blocks` (an nn.ModuleList) for steps 1-3."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from kinema.config import TrainConfig
from kinema.precision import use_bf16
from kinema.train.distributed import DistInfo


def _checkpoint_forward(block: nn.Module) -> None:
    """Recompute the block's activations in backward; parameter names stay as they were."""
    forward = block.forward

    def checkpointed(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    block.forward = checkpointed


def data_parallel_mode(cfg: TrainConfig, info: DistInfo) -> str:
    """'none', 'ddp' or 'fsdp' for this run."""
    if not info.distributed:
        return "none"
    return "ddp" if cfg.parallel == "auto" else cfg.parallel


def parallelize(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """Return the module to train (the same model, wrapped or sharded in place)."""
    blocks = getattr(model, "blocks", None)
    if cfg.activation_checkpointing and blocks is not None:
        for block in blocks:
            _checkpoint_forward(block)
    if cfg.compile and blocks is not None:
        for block in blocks:
            block.compile()
    mode = data_parallel_mode(cfg, info)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.local_rank] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if info.device.type == "cuda" and use_bf16(cfg.bf16, info.device) else MixedPrecisionPolicy()
        for block in blocks or []:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


def full_state_dict(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU state dict on every rank, whatever the wrapping."""
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
