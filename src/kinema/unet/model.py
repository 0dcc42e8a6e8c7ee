"""A small 3D U-Net over video latents: the convolutional baseline the DiT is compared with.

    x_t (B, C, F, H, W) -> conv in -> [ResBlocks, downsample H, W by 2] x levels -> middle (ResBlock,
    attention: self over all spacetime positions + cross to the prompt, ResBlock) -> [upsample, ResBlocks with
    skip connections] x levels -> conv out (zero-initialised) -> (B, C, F, H, W)

Video-diffusion U-Nets (VDM, Make-A-Video, SVD) factorise space and time; at latent sizes this small (5x8x8) full
3x3x3 convolutions and full spacetime attention at the bottom are affordable and the simplest honest baseline.
Timestep + pooled prompt condition every ResBlock (scale/shift); the prompt's tokens enter through cross-
attention at the lowest resolution. Same call signature as the DiT, so objectives, samplers, training and the
pipeline take either: `model(x_t, t, text=..., text_mask=..., cond=..., cond_mask=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kinema.layers.attention import CrossAttention, attention
from kinema.layers.embedders import TextEmbedder, TimestepEmbedder, with_frame_condition


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 16
    channels: int = 64  # width at the top level
    mults: tuple[int, ...] = (1, 2)  # width multiplier per level; each level after the first halves H, W
    blocks: int = 1  # ResBlocks per level
    heads: int = 4
    text_dim: int = 384
    frame_conditioning: bool = True
    backbone: str = "unet"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mults", tuple(self.mults))
        if not self.mults or min(self.mults) < 1 or self.blocks < 1 or self.channels < 8:
            raise ValueError(f"UNetConfig: need mults >= 1, blocks >= 1, channels >= 8; got {self}")
        if (self.channels * self.mults[-1]) % self.heads:
            raise ValueError(f"UNetConfig: bottom width {self.channels * self.mults[-1]} must divide by heads")

    @property
    def patch(self) -> tuple[int, int, int]:
        """What latent sizes must be multiples of (the pipeline checks sizes against this, as for the DiT)."""
        f = 2 ** (len(self.mults) - 1)
        return (1, f, f)

    @property
    def input_channels(self) -> int:
        return 2 * self.in_channels + 1 if self.frame_conditioning else self.in_channels


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv3d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W), (B, E)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class AttentionBlock(nn.Module):
    """Self-attention over all F*H*W positions, then cross-attention to the prompt tokens."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = _norm(channels)
        self.qkv, self.proj = nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)
        self.norm2, self.cross = nn.LayerNorm(channels), CrossAttention(channels, heads)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, C, Fr, H, W = x.shape
        tokens = self.norm1(x).flatten(2).transpose(1, 2)  # (B, L, C)
        q, k, v = self.qkv(tokens).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # (B, heads, L, Dh)
        h = x.flatten(2).transpose(1, 2) + self.proj(attention(q, k, v).transpose(1, 2).flatten(2))
        h = h + self.cross(self.norm2(h), text, key_mask)
        return h.transpose(1, 2).reshape(B, C, Fr, H, W)


class UNet3D(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.channels * m for m in cfg.mults]
        emb = 4 * cfg.channels
        self.t_embedder = TimestepEmbedder(emb)
        self.text_embedder = TextEmbedder(cfg.text_dim, widths[-1])
        self.pool_to_emb = nn.Linear(widths[-1], emb)
        self.conv_in = nn.Conv3d(cfg.input_channels, widths[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [widths[0]], widths[0]
        for level, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks):
                blocks.append(ResBlock(c, w, emb))
                c = w
                skips.append(c)
            self.down.append(blocks)
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv3d(c, c, 3, stride=(1, 2, 2), padding=1))
            if not last:
                skips.append(c)
        self.mid1, self.mid_attn, self.mid2 = ResBlock(c, c, emb), AttentionBlock(c, cfg.heads), ResBlock(c, c, emb)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), w, emb))
                c = w
            self.up.append(blocks)
            self.upsample.append(nn.Conv3d(c, c, 3, padding=1) if level else nn.Identity())
        self.norm_out, self.conv_out = _norm(c), nn.Conv3d(c, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _inputs(self, x, cond, cond_mask) -> torch.Tensor:
        return with_frame_condition(x, cond, cond_mask) if self.cfg.frame_conditioning else x

    def forward(
        self,
        x: torch.Tensor,  # (B, C, F, H, W) noisy latents
        t: torch.Tensor,  # (B,) noise level in [0, 1]
        text: torch.Tensor,  # (B, Lt, Dt)
        text_mask: torch.Tensor,  # (B, Lt)
        cond: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN's bf16 Conv3d backward returns NaN weight gradients on a CPU (seen with 8-16 channels, torch
            # 2.13): the U-Net runs in float32 there; its comparison with the DiT is at equal FLOPs, not time
            with torch.autocast("cpu", enabled=False):
                return self.forward(x.float(), t, text.float(), text_mask, None if cond is None else cond.float(),
                                    cond_mask)
        text_tokens, key_mask, pooled = self.text_embedder(text, text_mask)
        emb = self.t_embedder(t) + self.pool_to_emb(pooled)  # (B, E)
        h = self.conv_in(self._inputs(x, cond, cond_mask))
        skips = [h]
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb), text_tokens, key_mask), emb)
        for blocks, up in zip(self.up, self.upsample, strict=True):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=(1, 2, 2), mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h))).to(x.dtype)
