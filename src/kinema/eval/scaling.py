"""Scaling measurements: training FLOPs of any denoiser (counted, not estimated), a fixed validation loss
that every model is scored on, and the power-law fit loss = a * compute^b."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def training_flops_per_sample(model: nn.Module, latent_shape: tuple[int, ...], text_tokens: int = 24) -> float:
    """FLOPs to train on one clip: 3x one forward pass (backward costs about twice the forward), counted by
    torch's FlopCounterMode over every matmul, convolution and attention the model runs."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *latent_shape)
    text, mask = torch.zeros(1, text_tokens, model.cfg.text_dim), torch.ones(1, text_tokens, dtype=torch.bool)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, torch.full((1,), 0.5), text=text, text_mask=mask)
    return 3.0 * counter.get_total_flops()


VALIDATION_DRAWS = 4


@torch.no_grad()
def validation_loss(model: nn.Module, objective, data, indices: list[int], batch_size: int = 64,
                    draws: int = VALIDATION_DRAWS,
                    seed: int = 1234) -> float:
    """Mean objective loss over held-out clips with their detailed captions, at `draws` fixed (noise level,
    noise) pairs per clip: the same draws for every model, so losses are comparable."""
    model.eval()
    total, count = 0.0, 0
    for d in range(draws):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            b = data.gather(chunk, ["detailed"] * len(chunk))
            g = torch.Generator().manual_seed(seed + 1_000 * d + start)
            loss = objective.loss(model, b.latents, g, text=b.text * b.mask[..., None], text_mask=b.mask)
            total, count = total + float(loss) * len(chunk), count + len(chunk)
    return total / count


@dataclass
class PowerLaw:
    a: float
    exponent: float  # loss = a * compute ** exponent (negative: loss falls with compute)
    r2: float  # of the straight-line fit in log-log space
    points: int

    def __call__(self, compute: np.ndarray | float) -> np.ndarray | float:
        return self.a * np.asarray(compute) ** self.exponent


def fit_power_law(compute: list[float] | np.ndarray, loss: list[float] | np.ndarray) -> PowerLaw:
    """Least squares of log(loss) = log(a) + b log(compute)."""
    x, y = np.log(np.asarray(compute, float)), np.log(np.asarray(loss, float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"fit_power_law: need at least 2 points with different compute, got {len(x)}")
    b, log_a = np.polyfit(x, y, 1)
    residual = y - (log_a + b * x)
    r2 = 1.0 - float((residual ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30))
    return PowerLaw(float(np.exp(log_a)), float(b), r2, len(x))


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(compute, loss) points not beaten by any point with less compute: the compute-efficient frontier."""
    front, best = [], float("inf")
    for c, lo in sorted(points):
        if lo < best:
            front.append((c, lo))
            best = lo
    return front
