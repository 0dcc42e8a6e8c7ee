"""Low-rank adapters (LoRA, Hu et al. 2021) on a model's linear layers: teach a trained model a new concept with
a small file beside it instead of a new copy of it.

    names = add_lora(model, rank=8)              # attention and MLP linears gain A (r, in) and B (out, r)
    ...train only lora_parameters(model)...
    merge_lora(model)                            # fold B @ A into the weights: a plain model again

(Saving and loading adapter files: kinema.train.lora_task.)

y = W x + b + scale * (alpha / r) * B (A x). B starts at zero, so an adapter that has not trained changes
nothing. Our own ~80 lines rather than peft: the DiT's linears are plain nn.Linear under our names, the training
loop, EMA, checkpoints and DDP treat A and B as ordinary parameters, merging is one matmul, and the adapter file
holds exactly our keys in safetensors (no pickles, no adapter_config conventions to track).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# the DiT's attention (qkv, proj; cross-attention q, kv, proj) and MLP linears; embedders and adaLN stay frozen
DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "cross_attn.q", "cross_attn.kv", "cross_attn.proj", "mlp.0", "mlp.2")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base, self.rank, self.alpha = base, rank, float(alpha if alpha is not None else rank)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.scale = 1.0  # set at load time (--lora-scale): 0 turns the adapter off

    @property
    def factor(self) -> float:
        return self.scale * self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.factor * ((x @ self.lora_A.to(x.dtype).T) @ self.lora_B.to(x.dtype).T)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, last = name.split(".")
    module = model
    for p in path:
        module = getattr(module, p)
    return module, last


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, targets: tuple[str, ...] = DEFAULT_TARGETS,
             scope: str = "blocks.") -> list[str]:
    """Wrap every nn.Linear under `scope` (the transformer blocks) whose name ends with one of `targets`, in
    place; freeze everything else."""
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.startswith(scope) and n.endswith(targets)]
    if not names:
        raise ValueError(f"no linear layer of {type(model).__name__} matches the LoRA targets {targets}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent, last = _parent(model, name)
        setattr(parent, last, LoRALinear(getattr(parent, last), rank, alpha))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors out of a full state dict."""
    return {k: v for k, v in state.items() if k.endswith((".lora_A", ".lora_B"))}


def set_scale(model: nn.Module, scale: float) -> None:
    """How strongly every adapter of `model` acts (0: off, 1: as trained)."""
    for m in lora_modules(model).values():
        m.scale = scale


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its base weight (W += factor * B @ A) and unwrap: the same function, no adapter."""
    for name, m in lora_modules(model).items():
        m.base.weight += m.factor * (m.lora_B.float() @ m.lora_A.float()).to(m.base.weight.dtype)
        parent, last = _parent(model, name)
        setattr(parent, last, m.base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
