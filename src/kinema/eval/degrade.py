"""Degradations for validating (and training) the probe on clips that are not pixel-perfect."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (F, H, W, 3) uint8 frames."""
    radius = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-radius, radius + 1).float() ** 2 / (2 * sigma**2))
    k = k / k.sum()
    x = torch.as_tensor(frames).float().permute(0, 3, 1, 2).reshape(-1, 1, *frames.shape[1:3])
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    x = x.reshape(frames.shape[0], 3, *frames.shape[1:3]).permute(0, 2, 3, 1)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def noise(frames: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames.astype(np.float32) + rng.normal(0, std, frames.shape), 0, 255).round().astype(np.uint8)


def degrade(frames: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """'clean', 'blur' (sigma 1), 'noise' (std 12), 'blur+noise'."""
    if kind == "clean":
        return frames
    if kind == "blur":
        return blur(frames, 1.0)
    if kind == "noise":
        return noise(frames, 12.0, seed)
    if kind == "blur+noise":
        return noise(blur(frames, 1.0), 12.0, seed)
    raise ValueError(f"unknown degradation {kind!r}; expected clean, blur, noise or blur+noise")


def random_degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random mix of blur (sigma 0.3-1.8) and noise (std 0-20), for training the shape classifier."""
    if rng.random() < 0.6:
        frames = blur(frames, float(rng.uniform(0.3, 1.8)))
    if rng.random() < 0.6:
        frames = noise(frames, float(rng.uniform(0, 20)), int(rng.integers(1 << 30)))
    return frames
