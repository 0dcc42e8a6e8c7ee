"""Noise schedules.

DDPM (Ho et al.): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps for integer t in [0, T), a_t = prod(1 - beta).
Flow matching / rectified flow: x_s = (1 - s) x0 + s eps for s in [0, 1]; s is also the model's input t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DDPMSchedule:
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    kind: str = "linear"  # linear | scaled_linear (as in diffusers) | cosine (Nichol & Dhariwal)

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "scaled_linear", "cosine"):
            raise ValueError(f"DDPMSchedule.kind = {self.kind!r}; expected linear, scaled_linear or cosine")

    def betas(self) -> torch.Tensor:
        T = self.num_train_timesteps
        if self.kind == "linear":
            return torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        if self.kind == "scaled_linear":
            return torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=torch.float64) ** 2
        s = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((s + 0.008) / 1.008 * torch.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)

    def alphas_cumprod(self) -> torch.Tensor:
        """(T,) float64: a_t, the signal fraction at step t."""
        return torch.cumprod(1 - self.betas(), dim=0)

    def model_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Integer steps -> the model's t in [0, 1)."""
        return timesteps.float() / self.num_train_timesteps


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Evenly spaced integer timesteps, highest first ('leading' spacing, as diffusers' default)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    ratio = num_train_timesteps // steps
    return [i * ratio for i in range(steps)][::-1]


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift: more steps at high noise when shift > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    """(steps + 1,) noise levels from 1 down to 0 for an Euler flow sampler."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
