"""Training the captioner, measuring it, and the recaption batch job.

    train:     `CaptionerTask` for the shared training loop, on the detailed captions of a latent cache (a
               latent captioner) or a shard folder (a pixel captioner), optionally only a subset of clips
               (those that have them)
    measure:   `caption_agreement`: parse generated and reference captions, compare attribute by attribute
    recaption: `recaption_dataset` writes DIR/recaptions.jsonl ({"key", "caption"}), appending as it goes, so
               an interrupted job resumes; the original captions are never touched; clips that cannot be
               read are skipped and counted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kinema.captioning.captioner import CaptionerConfig, VideoCaptioner, Vocab
from kinema.config import from_dict
from kinema.data.captions import parse_caption
from kinema.data.latents import LatentDataset
from kinema.data.shards import DecodedClips, ShardDataset
from kinema.io.weights import WeightsError, load_weights
from kinema.precision import autocast, use_bf16


def captioner_inputs(data: LatentDataset | ShardDataset | DecodedClips,
                     indices: list[int]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(model inputs, detailed captions) of clips `indices`. Inputs: {"video": latents (n, c, f, h, w)} from a
    latent cache (one size bucket), or {"video": pixels (n, 3, F, H, W)} in [-1, 1] decoded from a shard
    folder (clips of one size)."""
    if isinstance(data, DecodedClips):
        captions = [data.rows[i]["captions"]["detailed"] for i in indices]
        return {"video": torch.stack([data.video(i) for i in indices])}, captions
    if isinstance(data, ShardDataset):
        items = [data[i] for i in indices]
        return {"video": torch.stack([it["video"] for it in items])}, [it["captions"]["detailed"] for it in items]
    b = data.gather(indices, ["detailed"] * len(indices))
    return {"video": b.latents}, b.captions


def load_captioner(folder: str | Path) -> tuple[VideoCaptioner, Vocab, str | None]:
    """(model, vocab, the VAE folder it reads latents of)."""
    state, cfg = load_weights(folder, "captioner")
    vocab, vae = Vocab(cfg.pop("vocab")), cfg.pop("vae", None)
    cfg.pop("trained_steps", None)
    cfg.pop("keyframes", None)  # written until 2026-12-02; a latents+keyframes one is refused by its input
    model = VideoCaptioner(from_dict(CaptionerConfig, cfg, where=f"{folder}/captioner.json"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{folder}/captioner.safetensors does not fit its config: {e}") from e
    return model.eval(), vocab, vae


@torch.no_grad()
def caption_clips(model: VideoCaptioner, vocab: Vocab, data: LatentDataset | ShardDataset, indices: list[int],
                  batch_size: int = 64, beams: int = 1, bf16: bool | str = "auto") -> list[str]:
    """Captions for clips `indices` of a latent cache (one size bucket) or a shard folder (one clip size);
    in bf16 autocast where the hardware is fast at it (`bf16="auto"`; 2.5x float32's speed on such a CPU)."""
    out, device = [], next(model.parameters()).device
    for start in range(0, len(indices), batch_size):
        inputs, _ = captioner_inputs(data, indices[start:start + batch_size])
        with autocast(device, use_bf16(bf16, device)):
            out += [vocab.decode(seq) for seq in model.generate(**inputs, beams=beams)]
    return out


# ---------------------------------------------------------------------------------------------------
# Caption quality: attribute agreement with the reference
# ---------------------------------------------------------------------------------------------------


def caption_agreement(generated: list[str], references: list[str]) -> dict[str, float]:
    """Share of stated attributes a generated caption gets right (objects matched by color), per attribute,
    plus 'all' (every attribute of the clip right). References are detailed captions (ground truth)."""
    hits: dict[str, list[bool]] = {k: [] for k in ("count", "background", "color", "shape", "size", "motion",
                                                   "speed", "all")}
    for gen, ref in zip(generated, references, strict=True):
        g, r = parse_caption(gen), parse_caption(ref)
        clip = [len(g.objects) == len(r.objects), g.background == r.background]
        found = {o.color: o for o in g.objects}
        for obj in r.objects:
            got = found.get(obj.color)
            clip.append(got is not None)
            hits["color"].append(got is not None)
            for attr in ("shape", "size", "motion", "speed"):
                ok = got is not None and getattr(got, attr) == getattr(obj, attr)
                hits[attr].append(ok)
                clip.append(ok)
        hits["count"].append(clip[0])
        hits["background"].append(clip[1])
        hits["all"].append(all(clip))
    return {k: sum(v) / len(v) for k, v in hits.items() if v}


# ---------------------------------------------------------------------------------------------------
# The recaption job
# ---------------------------------------------------------------------------------------------------


@dataclass
class RecaptionResult:
    written: int
    skipped_existing: int
    failed: int
    path: Path


def _done_keys(path: Path) -> set[str]:
    """Keys already captioned; a torn last line (the job was killed mid-write) is dropped."""
    if not path.exists():
        return set()
    keys, good = set(), []
    for line in path.read_text().splitlines():
        try:
            keys.add(json.loads(line)["key"])
            good.append(line)
        except (json.JSONDecodeError, KeyError):
            continue
    path.write_text("".join(f"{line}\n" for line in good))
    return keys


@torch.no_grad()
def recaption_dataset(captioner_dir: str | Path, data_dir: str | Path, vae_dir: str | Path | None = None,
                      batch_size: int = 16, beams: int = 1, progress: bool = True,
                      bf16: bool | str = "auto") -> RecaptionResult:
    """Caption every clip of a shard dataset into DATA/recaptions.jsonl; resumable; originals untouched.
    A latent captioner reads the clips through its VAE (`vae_dir`, default: the one it was trained with);
    the caption decoder runs in bf16 autocast where the hardware is fast at it."""
    from tqdm import tqdm

    from kinema.io.video import VideoReadError
    from kinema.io.weights import load_model
    from kinema.vae.model import VAEConfig, VideoVAE

    model, vocab, vae_ref = load_captioner(captioner_dir)
    device = next(model.parameters()).device
    if model.cfg.input == "pixels":
        def inputs(video: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"video": video}
    elif vae_dir or vae_ref:
        vae = load_model(vae_dir or vae_ref, "vae", VideoVAE, VAEConfig)

        def inputs(video: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"video": vae.encode(video)}
    else:
        raise ValueError(f"{captioner_dir}: a latent captioner with no VAE recorded; pass the VAE folder it reads")
    out = Path(data_dir) / "recaptions.jsonl"
    done = _done_keys(out)  # first: drops a torn last line left by a killed job
    ds = ShardDataset(data_dir)
    todo = [i for i, row in enumerate(ds.rows) if row["key"] not in done]
    written = failed = 0
    with out.open("a") as f:
        for start in tqdm(range(0, len(todo), batch_size), desc="recaption", disable=not progress):
            videos, keys = [], []
            for i in todo[start:start + batch_size]:
                try:
                    videos.append(ds[i]["video"])
                    keys.append(ds.rows[i]["key"])
                except (VideoReadError, KeyError, OSError):
                    failed += 1
            if not videos:
                continue
            video_inputs = inputs(torch.stack(videos))  # the VAE in float32, as it was trained
            with autocast(device, use_bf16(bf16, device)):
                ids = model.generate(**video_inputs, beams=beams)
            for key, seq in zip(keys, ids, strict=True):
                f.write(json.dumps({"key": key, "caption": vocab.decode(seq)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            written += len(keys)
    return RecaptionResult(written, len(done), failed, out)
