"""Attention as every model here uses it: QK RMS-norm with optional RoPE in one hand-written autograd function,
the fastest attention kernel for the device, and cross-attention to prompt tokens. Shared by the DiT, the 3D
U-Net baseline and the captioner (each used to reach into dit/model.py for these)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from kinema.layers.patches import swap_pairs


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


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6), nn.RMSNorm(dim // heads, eps=1e-6)
        self.kept: list | None = None  # a list: each forward appends (q, k, key_mask) (kept_cross_attention)

    def forward(self, x: torch.Tensor, text: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2).contiguous()  # (B, heads, L, Dh)
        k, v = self.kv(text).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4).contiguous()  # (B, h, Lt, Dh)
        q, k = rms(self.q_norm, q, q.shape[-1] ** -0.5), rms(self.k_norm, k)
        if self.kept is not None:
            self.kept.append((q, k, key_mask))
        out = attention(q, k, v, key_mask[:, None, None, :], scale=1.0)
        return self.proj(out.transpose(1, 2).flatten(2))


@contextmanager
def kept_cross_attention(model: nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """While inside, every CrossAttention of `model` appends its (q, k, key_mask) to the yielded list in forward
    order (q (B, heads, L, Dh) already scaled, k (B, heads, 1 + Lt, Dh), key_mask (B, 1 + Lt)). Nests: on exit
    each layer records into whatever list it had before (a guidance step inside a recorded sampling run)."""
    kept: list = []
    layers = [m for m in model.modules() if isinstance(m, CrossAttention)]
    before = [layer.kept for layer in layers]
    for layer in layers:
        layer.kept = kept
    try:
        yield kept
    finally:
        for layer, old in zip(layers, before, strict=True):
            layer.kept = old


def attention_shares(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """A kept (q, k, key_mask) -> (B, L, Lk) float32: the share of each query token's attention that each key
    gets, heads averaged (what the cross-attention grounding loss and attention guidance read)."""
    scores = (q.float() @ k.float().transpose(-1, -2)).masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1).mean(1)
