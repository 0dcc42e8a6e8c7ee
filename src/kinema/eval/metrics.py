"""Reconstruction metrics on uint8-range video: PSNR and SSIM (per frame, averaged)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _as_01(x: torch.Tensor) -> torch.Tensor:
    """(…) tensor in [-1, 1] -> float in [0, 1]."""
    return (x.float().clamp(-1, 1) + 1) / 2


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per clip, inputs (B, C, F, H, W) in [-1, 1], peak 1 on the [0, 1] scale."""
    mse = (_as_01(x) - _as_01(y)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2).float() / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, k, k)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per clip (Wang et al. 2004, 11x11 Gaussian window, on [0, 1]), inputs (B, C, F, H, W)."""
    B, C = x.shape[:2]
    a = _as_01(x).transpose(1, 2).flatten(0, 2)[:, None]  # (B*F*C, 1, H, W)
    b = _as_01(y).transpose(1, 2).flatten(0, 2)[:, None]
    size = min(11, *a.shape[-2:])
    k = _gaussian_window(size - (1 - size % 2))  # odd window, at most the frame
    mu_a, mu_b = F.conv2d(a, k), F.conv2d(b, k)
    var_a = F.conv2d(a * a, k) - mu_a**2
    var_b = F.conv2d(b * b, k) - mu_b**2
    cov = F.conv2d(a * b, k) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).view(B, -1).mean(1)
