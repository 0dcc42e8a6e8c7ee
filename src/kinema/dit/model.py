"""Diffusion Transformer over spacetime patches of video latents (Peebles & Xie's DiT, for video).

    x_t (B, C, F, H, W) --patchify--> tokens (B, L, D) --N x DiTBlock--> final layer --unpatchify--> (B, C, F, H, W)

Each block: self-attention over all spacetime tokens (QK-norm, 3D RoPE; `attention` picks the fastest
kernel for the device), cross-attention to the prompt's tokens (padding masked out; a learned null token is
always present, so a dropped caption is "attend to nothing"), and an MLP; timestep + pooled prompt condition
every block through adaLN-Zero.
Optional frame conditioning (image-to-video, extension, editing) concatenates known latent frames and
their mask to the input channels: one model, one sampler, many tasks.

The model is called as `model(x_t, t, text=..., text_mask=..., cond=..., cond_mask=...)` with t in [0, 1]
(the noise level of the objective); objectives and samplers never import this class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kinema.dit.patches import grid_positions, patchify, rope_angles, rope_cos_sin, sincos_3d, swap_pairs, unpatchify

# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 16  # latent channels
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw)
    dim: int = 384
    depth: int = 8
    heads: int = 6
    mlp_ratio: float = 4.0
    text_dim: int = 384
    frame_conditioning: bool = True  # extra input channels for known frames + their mask
    rope_theta: float = 10000.0
    abs_pos: bool = False  # also add fixed 3D sin/cos positions to the tokens (DiT's absolute embedding)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", tuple(self.patch))
        if self.dim % self.heads:
            raise ValueError(f"DiTConfig: dim {self.dim} must be divisible by heads {self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"DiTConfig: head dim {self.dim // self.heads} must be even for RoPE")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"DiTConfig: patch must be three sizes >= 1 (pt, ph, pw), got {self.patch}")
        if min(self.depth, self.in_channels, self.text_dim) < 1:
            raise ValueError("DiTConfig: depth, in_channels, text_dim must be >= 1")

    @property
    def input_channels(self) -> int:
        return 2 * self.in_channels + 1 if self.frame_conditioning else self.in_channels

    def num_params(self) -> int:
        return sum(p.numel() for p in DiT(self).parameters())


# ---------------------------------------------------------------------------------------------------
# Helpers and embedders
# ---------------------------------------------------------------------------------------------------


class _RMSNormRope(torch.autograd.Function):
    """y = rope(w * x / rms(x)) over the last dim of x (..., L, Dh) in x's dtype, the rotation optional, with a
    backward written by hand. Autograd's graph of the same ops makes ~22 passes over x, several of them over a
    float32 copy; this makes 6 forward and 9 backward, all in x's dtype, the reductions accumulated in float32.
    (The q/k norms were the largest elementwise cost of a bf16 DiT training step on a CPU.)"""

    @staticmethod
    def forward(ctx, x, weight, eps, cos=None, signed_sin=None):  # x (..., L, Dh), weight (Dh,), tables (L, Dh)
        r = torch.rsqrt(x.square().mean(-1, keepdim=True, dtype=torch.float32) + eps).to(x.dtype)  # (..., L, 1)
        xh = x * r
        w = weight.to(x.dtype)
        if cos is None:
            out = xh * w
        else:  # rotating w * xh: tables w * cos and pair-swapped w * sin
            cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
            out = torch.addcmul(xh * (cos * w), swap_pairs(xh), signed_sin * swap_pairs(w))
        ctx.save_for_backward(xh, r, w, cos, signed_sin)
        return out

    @staticmethod
    def backward(ctx, g):
        xh, r, w, cos, signed_sin = ctx.saved_tensors
        g = g.to(xh.dtype)
        if cos is not None:  # the gradient through the rotation is the inverse rotation: by -angle
            g = torch.addcmul(g * cos, swap_pairs(g), signed_sin, value=-1)
        v = g * xh  # (..., L, Dh)
        dw = v.flatten(0, -2).sum(0, dtype=torch.float32) if ctx.needs_input_grad[1] else None  # (Dh,)
        u = g * w  # the gradient w.r.t. xh
        m = (v @ w)[..., None] / xh.shape[-1]  # mean(u * xh) over Dh: (..., L, 1)
        dx = torch.addcmul(u, xh, m, value=-1) * r
        return dx, dw, None, None, None


def rms(norm: nn.RMSNorm, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """RMSNorm in x's dtype with its weight times `gain` (queries take attention's 1/sqrt(Dh) here: one pass
    over them fewer). Written out: torch's rms_norm is composite on a CPU and ~1.7x slower in bf16."""
    return _RMSNormRope.apply(x, norm.weight * gain, norm.eps)


def rms_rope(norm: nn.RMSNorm, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
             gain: float = 1.0) -> torch.Tensor:
    """apply_rope(rms(norm, x, gain), rope) as one function: (B, heads, L, Dh), rope's (L, Dh) cos and signed sin."""
    return _RMSNormRope.apply(x, norm.weight * gain, norm.eps, *rope)


# In bf16 on a CPU at a video DiT's lengths here (80-480 tokens), one matmul -> softmax -> matmul is several
# times faster than SDPA's fused kernel (one thread, fwd+bwd of 8x6 heads x 320 tokens: 34 ms vs 80 ms;
# cross-attention to 33 tokens 4 ms vs 28 ms; benchmarks/attention.py); in float32 the two are even. It keeps
# the (B, heads, L, Lk) scores in memory, so float32, long sequences and GPUs go to SDPA (flash / efficient).
EXPLICIT_ATTENTION_MAX_SCORES = 1 << 20  # L * Lk per head at most


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention: q (B, heads, L, Dh), k and v (B, heads, Lk, Dh), key_mask broadcastable
    to (B, heads, L, Lk), True = attend -> (B, heads, L, Dh); `scale` defaults to 1/sqrt(Dh) (1.0: q is scaled)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    explicit = q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
    if not explicit or q.shape[-2] * k.shape[-2] > EXPLICIT_ATTENTION_MAX_SCORES:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
    scores = (q if scale == 1.0 else q * scale) @ k.transpose(-1, -2)  # (B, heads, L, Lk)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    return scores.softmax(-1) @ v  # softmax accumulates in float32 for bf16 inputs


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


class TextEmbedder(nn.Module):
    """Prompt tokens -> model width, with a learned null token in front that is never masked."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.pool_proj = nn.Linear(text_dim, dim)
        self.null = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, Dt), (B, L) -> tokens (B, 1+L, D), key mask (B, 1+L), pooled (B, D)."""
        m = mask[..., None].to(text.dtype)
        pooled = self.pool_proj((text * m).sum(1) / m.sum(1).clamp(min=1.0))
        tokens = torch.cat([self.null.expand(text.shape[0], -1, -1).to(text.dtype), self.proj(text)], dim=1)
        key_mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return tokens, key_mask, pooled


# ---------------------------------------------------------------------------------------------------
# Attention and the block
# ---------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6), nn.RMSNorm(dim // heads, eps=1e-6)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # (B, L, D), cos/sin
        # one copy to head-major order up front: the norms then run on dense tensors and the attention matmuls
        # take q, k, v without copying each (4% of a bf16 step on a CPU)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).contiguous()  # (B, h, L, Dh)
        q, k = rms_rope(self.q_norm, q, rope, q.shape[-1] ** -0.5), rms_rope(self.k_norm, k, rope)
        return self.proj(attention(q, k, v, scale=1.0).transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6), nn.RMSNorm(dim // heads, eps=1e-6)

    def forward(self, x: torch.Tensor, text: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2).contiguous()  # (B, heads, L, Dh)
        k, v = self.kv(text).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4).contiguous()  # (B, h, Lt, Dh)
        q, k = rms(self.q_norm, q, q.shape[-1] ** -0.5), rms(self.k_norm, k)
        out = attention(q, k, v, key_mask[:, None, None, :], scale=1.0)
        return self.proj(out.transpose(1, 2).flatten(2))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        # erf GELU: 5x the tanh form's speed in bf16 on a CPU and within 1e-3 of it (weights trained with either load)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, rope, text, key_mask):  # x (B, L, D), c (B, D), text (B, Lt, D), key_mask (B, Lt)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = gated(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope))
        x = x + self.cross_attn(self.norm_cross(x), text, key_mask)
        return gated(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        pt, ph, pw = cfg.patch
        self.x_embedder = nn.Linear(cfg.input_channels * pt * ph * pw, cfg.dim)
        self.t_embedder = TimestepEmbedder(cfg.dim)
        self.text_embedder = TextEmbedder(cfg.text_dim, cfg.dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.dim, cfg.in_channels * pt * ph * pw)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears; adaLN-Zero: every residual branch gate and the output start at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            nn.init.zeros_(block.cross_attn.proj.weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def _inputs(self, x, cond, cond_mask) -> torch.Tensor:
        """Concatenate known frames and their mask to x when the model takes frame conditioning."""
        if not self.cfg.frame_conditioning:
            return x
        B, _, Fr, H, W = x.shape
        if cond is None:
            cond, cond_mask = torch.zeros_like(x), x.new_zeros(B, 1, Fr, H, W)
        return torch.cat([x, cond * cond_mask, cond_mask.to(x.dtype)], dim=1)

    def forward(
        self,
        x: torch.Tensor,  # (B, C, F, H, W) noisy latents
        t: torch.Tensor,  # (B,) noise level in [0, 1]
        text: torch.Tensor,  # (B, Lt, Dt) prompt tokens
        text_mask: torch.Tensor,  # (B, Lt) True where a token is real
        cond: torch.Tensor | None = None,  # (B, C, F, H, W) known latent frames
        cond_mask: torch.Tensor | None = None,  # (B, 1, F, H, W) 1 where cond is given
    ) -> torch.Tensor:
        grid = tuple(n // p for n, p in zip(x.shape[2:], self.cfg.patch, strict=True))
        tokens = self.x_embedder(patchify(self._inputs(x, cond, cond_mask), self.cfg.patch))  # (B, L, D)
        if self.cfg.abs_pos:
            tokens = tokens + sincos_3d(grid, self.cfg.dim, x.device).to(tokens.dtype)
        rope = rope_cos_sin(rope_angles(grid_positions(grid, x.device), self.cfg.dim // self.cfg.heads,
                                        self.cfg.rope_theta))  # (L, Dh) each, shared by every block
        text_tokens, key_mask, pooled = self.text_embedder(text, text_mask)  # (B, 1+Lt, D), (B, 1+Lt), (B, D)
        c = self.t_embedder(t) + pooled  # (B, D)
        for block in self.blocks:
            tokens = block(tokens, c, rope, text_tokens, key_mask)
        out = self.final_layer(tokens, c)  # (B, L, C*pt*ph*pw)
        return unpatchify(out, self.cfg.patch, grid).to(x.dtype)
