"""Spacetime patches: latents <-> transformer tokens, and the 3D positions the tokens carry.

A latent video (B, C, F, H, W) is cut into non-overlapping (pt, ph, pw) patches; each becomes one token of
C*pt*ph*pw values, in (f, h, w) raster order. Any F, H, W divisible by the patch works, so one model takes
any duration, resolution and aspect ratio; positions enter attention through factorised 3D RoPE.
"""

from __future__ import annotations

import torch
from einops import rearrange

Patch = tuple[int, int, int]


def check_divisible(shape: tuple[int, int, int], patch: Patch) -> None:
    for name, n, p in zip(("frames", "height", "width"), shape, patch, strict=True):
        if n % p:
            raise ValueError(f"latent {name} {n} is not divisible by the patch size {p} (patch {patch})")


def token_grid(shape: torch.Size | tuple[int, ...], patch: Patch) -> tuple[int, int, int]:
    """A (..., F, H, W) shape's patch grid (F/pt, H/ph, W/pw): where each of patchify's tokens sits."""
    return tuple(n // p for n, p in zip(shape[-3:], patch, strict=True))


def patchify(x: torch.Tensor, patch: Patch) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, L, C*pt*ph*pw) with L = (F/pt)(H/ph)(W/pw)."""
    check_divisible(tuple(x.shape[2:]), patch)
    pt, ph, pw = patch
    return rearrange(x, "b c (f pt) (h ph) (w pw) -> b (f h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)


def unpatchify(tokens: torch.Tensor, patch: Patch, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, L, C*pt*ph*pw) -> (B, C, F, H, W), `grid` = (F/pt, H/ph, W/pw)."""
    pt, ph, pw = patch
    f, h, w = grid
    return rearrange(tokens, "b (f h w) (c pt ph pw) -> b c (f pt) (h ph) (w pw)", f=f, h=h, w=w, pt=pt, ph=ph, pw=pw)


def grid_positions(grid: tuple[int, int, int], device: torch.device | None = None) -> torch.Tensor:
    """(L, 3) integer (f, h, w) coordinates of each token, in patchify order."""
    f, h, w = grid
    axes = [torch.arange(n, device=device) for n in (f, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def token_positions(grid: tuple[int, int, int], spatial_scale: float = 1.0,
                    device: torch.device | None = None) -> torch.Tensor:
    """(L, 3) float (f, h, w) positions of each token, in patchify order. With `spatial_scale` s, height and
    width are counted in patches 1/s times this one's size, centre to centre: index i sits at (i + 1/2) s - 1/2.
    A model trained with 1x4x4 patches then given 1x2x2 ones (s = 1/2) sees its old frame extent: the four 2x2
    tokens inside one old 4x4 patch sit around that patch's old position, a quarter of a step either side."""
    positions = grid_positions(grid, device).double()
    if spatial_scale != 1.0:
        positions[:, 1:] = (positions[:, 1:] + 0.5) * spatial_scale - 0.5
    return positions


# ---------------------------------------------------------------------------------------------------
# Factorised 3D rotary position embedding
# ---------------------------------------------------------------------------------------------------


def rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head's dims over (time, height, width): even parts, time gets the remainder."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    part = head_dim // 6 * 2
    return head_dim - 2 * part, part, part


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(L, 3) positions -> (L, head_dim/2) rotation angles; each axis rotates its own pairs of dims."""
    angles = []
    for axis, dim in enumerate(rope_axes_dims(head_dim)):
        freqs = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim)
        angles.append(positions[:, axis, None].double() * freqs)  # (L, dim/2)
    return torch.cat(angles, dim=-1).float()


def apply_rope(x: torch.Tensor, angles: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate consecutive pairs of dims of x (B, heads, L, Dh) by angles (L, Dh/2), or by precomputed
    `rope_cos_sin(angles)` (cheaper when many layers share them). Computed in x's dtype:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) = x * cos + (x2, x1) * (-sin, sin)."""
    cos, signed_sin = rope_cos_sin(angles) if isinstance(angles, torch.Tensor) else angles
    return torch.addcmul(x * cos.to(x.dtype), swap_pairs(x), signed_sin.to(x.dtype))


def swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2, x3, x4, ...) -> (x2, x1, x4, x3, ...) over the last dim (even size): RoPE's pair swap."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def rope_cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, Dh/2) angles -> cos and signed sin of shape (L, Dh): (cos a, cos a) and (-sin a, sin a) per pair."""
    sin = angles.sin()
    return angles.cos().repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2)


# ---------------------------------------------------------------------------------------------------
# Fixed 3D sin/cos absolute positions (DiT / MAE style), split over the axes like RoPE
# ---------------------------------------------------------------------------------------------------


def sincos_3d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(L, 3) token positions (`token_positions`) -> (L, dim) sin/cos features; `dim` even. Each axis takes its
    own block of dims (time the remainder), sin and cos of position times geometric frequencies (base 10000)."""
    if dim % 2:
        raise ValueError(f"sin/cos positions need an even width, got {dim}")
    positions, device = positions.double(), positions.device  # (L, 3)
    parts = []
    for axis, d in enumerate(rope_axes_dims(dim)):
        freqs = 10000.0 ** (-torch.arange(0, d, 2, device=device, dtype=torch.float64) / d)  # (d/2,)
        angles = positions[:, axis, None] * freqs  # (L, d/2)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=-1).float()  # (L, dim)
