"""VAE training loss: L1 reconstruction + KL to N(0, I), with optional temporal-difference and edge terms and an
optional extra weight on foreground pixels."""

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
    # extra weight on foreground pixels in L1 and MSE: pixels whose color differs from their frame's median color (the
    # background, where objects cover less than half of a frame: the shapes world, a flat-background crop). A 5-pixel
    # object is 2% of a 64x64 frame, so plain L1/MSE reaches a low loss with its shape rounded off; the reference
    # autoencoder (shared/reference-baseline.md) weighted object pixels 10x. 0 disables (every pixel counts alike)
    foreground_weight: float = 0.0

    def __post_init__(self) -> None:
        if min(self.kl_weight, self.mse_weight, self.temporal_weight, self.edge_weight, self.foreground_weight) < 0:
            raise ValueError("VAELossConfig: weights must be >= 0")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def foreground_mask(x: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """(B, C, F, H, W) in [-1, 1] -> (B, 1, F, H, W) in {0, 1}: 1 where any channel is further than `threshold` from
    the frame's per-channel median (the background color when objects cover less than half of the frame)."""
    median = x.flatten(3).median(dim=3).values[..., None, None]  # (B, C, F, 1, 1)
    return ((x - median).abs() > threshold).any(dim=1, keepdim=True).to(x.dtype)


def vae_loss(x: torch.Tensor, x_hat: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             cfg: VAELossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """x, x_hat: (B, C, F, H, W) in [-1, 1]. Returns (loss, metrics)."""
    x_hat = x_hat.float()
    l1 = (x_hat - x).abs().mean()
    mse = (x_hat - x).pow(2).mean()
    recon_l1, recon_mse = l1, mse
    if cfg.foreground_weight:  # a weighted mean: 1 + w on foreground pixels, normalised so the scale stays L1's
        weight = 1.0 + cfg.foreground_weight * foreground_mask(x)  # (B, 1, F, H, W), broadcast over channels
        recon_l1 = (weight * (x_hat - x).abs()).mean() / weight.mean()
        recon_mse = (weight * (x_hat - x).pow(2)).mean() / weight.mean()
    kl = kl_divergence(mean.float(), logvar.float())
    loss = recon_l1 + cfg.mse_weight * recon_mse + cfg.kl_weight * kl
    if cfg.temporal_weight and x.shape[2] > 1:
        loss = loss + cfg.temporal_weight * (x_hat.diff(dim=2) - x.diff(dim=2)).abs().mean()
    if cfg.edge_weight:
        edges = sum((x_hat.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (3, 4))  # rows, columns
        loss = loss + cfg.edge_weight * edges
    psnr = 10 * torch.log10(4.0 / mse.detach().clamp(min=1e-10))  # range [-1, 1] has peak-to-peak 2
    return loss, {"l1": l1.item(), "kl": kl.item(), "psnr": psnr.item()}
