"""VAE encode+decode throughput, side by side in one run with diffusers' AutoencoderKLWan built with the
same compression (x4 time, x8 space, 16 channels) and a similar parameter count (random weights).

    python benchmarks/vae.py [--batch 4] [--repeats 5] [--bf16]

Prints clips/s for both and the ratio ours / peer (target >= 1.5)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median_seconds, params  # noqa: E402
from kinema.precision import autocast  # noqa: E402
from kinema.presets import vae_shapes  # noqa: E402
from kinema.vae.model import VideoVAE  # noqa: E402


def wan_vae_like(target_params: int, z_dim: int = 16, spatial: int = 8, temporal: int = 4):
    """AutoencoderKLWan of our layout (default x4 time via temperal_downsample, x8 space, z=16: one
    downsampling level per factor of 2 in space, the last log2(temporal) of them in time too) with base_dim
    chosen so its size is closest to ours."""
    from diffusers import AutoencoderKLWan

    levels, time_levels = spatial.bit_length() - 1, temporal.bit_length() - 1
    dim_mult = [min(2 ** i, 4) for i in range(levels + 1)]  # x8: [1, 2, 4, 4]; x4: [1, 2, 4]
    downsample_time = [i >= levels - time_levels for i in range(levels)]  # x8, x4 time: [False, True, True]
    best = None
    for base in (8, 12, 16, 20, 24, 32):
        model = AutoencoderKLWan(base_dim=base, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=1,
                                 temperal_downsample=downsample_time, latents_mean=[0.0] * z_dim,
                                 latents_std=[1.0] * z_dim, scale_factor_spatial=spatial,
                                 scale_factor_temporal=temporal)
        if best is None or abs(params(model) - target_params) < abs(params(best) - target_params):
            best = model
    return best.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="autocast to bf16 (both models)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours = VideoVAE(vae_shapes()).eval().to(device)
    peer = wan_vae_like(params(ours)).to(device)
    x = torch.randn(args.batch, 3, 17, 64, 64, device=device)
    amp = autocast(device, args.bf16)

    @torch.no_grad()
    def run_ours():
        with amp:
            return ours.decode(ours.encode(x))

    @torch.no_grad()
    def run_peer():
        with amp:
            return peer.decode(peer.encode(x).latent_dist.mode()).sample

    assert run_ours().shape == run_peer().shape == x.shape
    t_ours, t_peer = median_seconds(run_ours, args.repeats), median_seconds(run_peer, args.repeats)
    print(f"machine: {machine()}; batch {args.batch} x 17x64x64, {'bf16' if args.bf16 else 'fp32'}")
    print(f"kinema VideoVAE      {params(ours) / 1e6:6.2f} M params  {args.batch / t_ours:8.2f} clips/s")
    print(f"AutoencoderKLWan     {params(peer) / 1e6:6.2f} M params  {args.batch / t_peer:8.2f} clips/s")
    print(f"ratio (ours / peer): {t_peer / t_ours:.2f}x")


if __name__ == "__main__":
    main()
