"""Conditioning blocks shared by the denoisers (DiT, 3D U-Net): the timestep and prompt embedders, adaLN's
modulate/gate, and the frame-conditioning input (known latent frames and their mask as extra channels)."""

from __future__ import annotations

import math

import torch
from torch import nn

from kinema.layers.attention import CrossAttention


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift per sample, as one fused multiply-add; x (B, L, D), shift/scale (B, D)."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


def gated(x: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """The residual x + gate * branch (adaLN-Zero's gate, (B, D)) as one fused multiply-add."""
    return torch.addcmul(x, gate[:, None], branch)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features of 1000 t -> MLP -> (B, D)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class TextRefinerLayer(nn.Module):
    """One pre-norm transformer layer over the prompt tokens (padding masked out). Its output projections start at
    zero, so a new refiner is the identity and training decides what it adds."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossAttention(dim, heads)  # queries and keys from the same tokens: masked self-attention
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.zero_branches()

    def zero_branches(self) -> None:
        """Zero the residual branches' output projections (call again after a model-wide re-initialisation)."""
        for linear in (self.attn.proj, self.mlp[-1]):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:  # (B, Lt, D), (B, Lt)
        h = self.norm1(x)
        x = x + self.attn(h, h, key_mask)
        return x + self.mlp(self.norm2(x))


class TextEmbedder(nn.Module):
    """Prompt tokens -> model width, with a learned null token in front that is never masked; optionally refined by
    `refiner_depth` trainable transformer layers, so each word's token can gather the words it belongs with (which
    color goes with which shape and direction) before the video tokens read it (HunyuanVideo's token refiner)."""

    def __init__(self, text_dim: int, dim: int, refiner_depth: int = 0, heads: int = 1, pool: bool = True):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.pool_proj = nn.Linear(text_dim, dim) if pool else None
        self.null = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.refiner = nn.ModuleList(TextRefinerLayer(dim, heads) for _ in range(refiner_depth))

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, L, Dt), (B, L) -> tokens (B, 1+L, D), key mask (B, 1+L), pooled (B, D) (None without `pool`)."""
        m = mask[..., None].to(text.dtype)
        pooled = None if self.pool_proj is None else self.pool_proj((text * m).sum(1) / m.sum(1).clamp(min=1.0))
        tokens = torch.cat([self.null.expand(text.shape[0], -1, -1).to(text.dtype), self.proj(text)], dim=1)
        key_mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        for layer in self.refiner:
            tokens = layer(tokens, key_mask)
        return tokens, key_mask, pooled


def with_frame_condition(x: torch.Tensor, cond: torch.Tensor | None, cond_mask: torch.Tensor | None) -> torch.Tensor:
    """x (B, C, F, H, W) -> (B, 2C+1, F, H, W): x, the known frames (zero where not given) and their mask. No
    frames given (cond None) is an all-zero mask: the same model does text-to-video."""
    if cond is None:
        cond, cond_mask = torch.zeros_like(x), x.new_zeros(x.shape[0], 1, *x.shape[2:])
    return torch.cat([x, cond * cond_mask, cond_mask.to(x.dtype)], dim=1)
