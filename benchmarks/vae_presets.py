"""The shapes VAE presets side by side: a training step and encoding, in one run, as ratios to `shapes-s4c8-lite`.

    python benchmarks/vae_presets.py [--repeats 5]

A training step is `kinema vae train`'s: the preset's batch of random 9x32x32 crops through encoder and decoder,
its loss (`vae_loss` with `--foreground-weight 9`, as the hour trains), backward, AdamW; encoding is `kinema vae
encode`'s: 16 clips of 17x64x64 through the encoder. The presets take turns within each round (`paired_seconds`),
so a slow spell on a shared machine hits all of them; each ratio is the median of the per-round ratios. Precision
as `kinema.precision` decides for training."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, paired_seconds, params  # noqa: E402
from kinema.precision import autocast, use_bf16  # noqa: E402
from kinema.presets import VAE_PRESETS, VAE_TRAIN, lookup  # noqa: E402
from kinema.vae.loss import VAELossConfig, vae_loss  # noqa: E402
from kinema.vae.model import VideoVAE  # noqa: E402

PRESETS = ("shapes-s4c8", "shapes-s4c8-lite", "shapes-s4c8-slim")
BASE = "shapes-s4c8-lite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fast = use_bf16("auto", device)
    torch.manual_seed(0)
    crops = torch.rand(lookup(VAE_TRAIN, BASE, "vae").batch_size, 3, 9, 32, 32, device=device) * 2 - 1
    clips = torch.rand(16, 3, 17, 64, 64, device=device) * 2 - 1
    loss_cfg = VAELossConfig(foreground_weight=9.0)
    train, encode, sizes = {}, {}, {}
    for name in PRESETS:
        model = VideoVAE(lookup(VAE_PRESETS, name, "vae")).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sizes[name] = params(model)

        def step(model=model, opt=opt) -> None:
            with autocast(device, fast):
                loss, _ = vae_loss(crops, *model(crops), loss_cfg)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        @torch.no_grad()
        def enc(model=model) -> None:
            with autocast(device, fast):
                model.encode(clips)

        train[name], encode[name] = step, enc
    t_train = paired_seconds(train, args.repeats)
    t_encode = paired_seconds(encode, args.repeats)
    print(f"machine: {machine()}; {'bf16' if fast else 'fp32'}")
    print(f"{'preset':18s} {'params':>8s} {'train steps/s':>14s} {'x ' + BASE:>22s} {'encode clips/s':>15s} "
          f"{'x ' + BASE:>22s}")
    for name in PRESETS:
        ratio_train = statistics.median(b / a for a, b in zip(t_train[name], t_train[BASE], strict=True))
        ratio_encode = statistics.median(b / a for a, b in zip(t_encode[name], t_encode[BASE], strict=True))
        print(f"{name:18s} {sizes[name] / 1e6:7.2f}M {1 / statistics.median(t_train[name]):14.2f} "
              f"{ratio_train:22.2f} {clips.shape[0] / statistics.median(t_encode[name]):15.1f} {ratio_encode:22.2f}")


if __name__ == "__main__":
    main()
