"""VAE training loss: L1 reconstruction + KL to N(0, I), with optional temporal-difference and edge terms."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VAELossConfig:
    kl_weight: float = 1e-4  # per latent element, relative to the per-pixel L1
    mse_weight: float = 1.0  # MSE beside L1: L1 keeps edges sharp, MSE is what PSNR measures
    temporal_weight: float = 0.0  # L1 on frame differences (motion fidelity); 0 disables
    # L1 on horizontal and vertical pixel differences (the gradient-difference loss of Mathieu et al. 2016): edges
    # and corners are a sliver of the pixels, so plain L1/MSE lets a decoder round small shapes off; 0 disables
    edge_weight: float = 0.0

    def __post_init__(self) -> None:
        if min(self.kl_weight, self.mse_weight, self.temporal_weight, self.edge_weight) < 0:
            raise ValueError("VAELossConfig: weights must be >= 0")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def vae_loss(x: torch.Tensor, x_hat: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             cfg: VAELossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """x, x_hat: (B, C, F, H, W) in [-1, 1]. Returns (loss, metrics)."""
    x_hat = x_hat.float()
    l1 = (x_hat - x).abs().mean()
    mse = (x_hat - x).pow(2).mean()
    kl = kl_divergence(mean.float(), logvar.float())
    loss = l1 + cfg.mse_weight * mse + cfg.kl_weight * kl
    if cfg.temporal_weight and x.shape[2] > 1:
        loss = loss + cfg.temporal_weight * (x_hat.diff(dim=2) - x.diff(dim=2)).abs().mean()
    if cfg.edge_weight:
        edges = sum((x_hat.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (3, 4))  # rows, columns
        loss = loss + cfg.edge_weight * edges
    psnr = 10 * torch.log10(4.0 / mse.detach().clamp(min=1e-10))  # range [-1, 1] has peak-to-peak 2
    return loss, {"l1": l1.item(), "kl": kl.item(), "psnr": psnr.item()}
