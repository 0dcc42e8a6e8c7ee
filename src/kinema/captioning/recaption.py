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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kinema.captioning.captioner import PAD, CaptionerConfig, VideoCaptioner, Vocab
from kinema.config import from_dict, to_dict
from kinema.data.buckets import global_indices
from kinema.data.captions import parse_caption
from kinema.data.latents import LatentDataset
from kinema.data.shards import ShardDataset
from kinema.io.weights import WeightsError, load_weights, save_weights
from kinema.precision import autocast, use_bf16
from kinema.train.distributed import DistInfo


def _tokens(vocab: Vocab, captions: list[str], max_length: int) -> torch.Tensor:
    ids = [vocab.encode(c, max_length) for c in captions]
    out = torch.full((len(ids), max(len(i) for i in ids)), PAD, dtype=torch.long)
    for row, seq in enumerate(ids):
        out[row, : len(seq)] = torch.tensor(seq)
    return out


class DecodedClips:
    """A shard folder's clips, each decoded once and then kept in memory as uint8 (3, F, H, W): exact, since
    the shards hold 8-bit frames, and a quarter of float32's size (8192 clips of 17x64x64: 1.7 GB). A pixel
    captioner sees every clip ~10 times in a run; without this, decoding is a quarter of each step."""

    def __init__(self, data: ShardDataset):
        self.data, self.rows = data, data.rows
        self._videos: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.data)

    def video(self, i: int) -> torch.Tensor:  # (3, F, H, W) in [-1, 1]
        if i not in self._videos:
            self._videos[i] = ((self.data[i]["video"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return self._videos[i].float() / 127.5 - 1


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


@dataclass
class CaptionerTask:
    data: LatentDataset | ShardDataset | DecodedClips  # latents, or pixels (cfg.input says which)
    model_cfg: CaptionerConfig
    vocab: Vocab
    batch_size: int
    subset: list[int] | None = None  # dataset indices that have detailed captions (default: all)
    grad_accum: int = 1
    seed: int = 0
    name: str = "captioner"
    eval_indices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.data, ShardDataset):
            self.data = DecodedClips(self.data)

    def build_model(self) -> nn.Module:
        return VideoCaptioner(self.model_cfg)

    def model_config(self) -> dict:
        return {"captioner": to_dict(self.model_cfg), "vocab": self.vocab.words}

    def tokens_per_sample(self) -> int:
        return self.model_cfg.max_length

    def batch(self, step: int, micro: int, info: DistInfo) -> dict:
        pool = self.subset if self.subset is not None else list(range(len(self.data)))
        first = ((step * self.grad_accum + micro) * info.world_size + info.rank) * self.batch_size
        idx = [pool[i] for i in global_indices(len(pool), self.seed, first, self.batch_size)]
        inputs, captions = captioner_inputs(self.data, idx)
        return {"inputs": {k: v.to(info.device) for k, v in inputs.items()},
                "tokens": _tokens(self.vocab, captions, self.model_cfg.max_length).to(info.device)}

    def loss(self, model: nn.Module, batch: dict, generator: torch.Generator):
        return model.loss(tokens=batch["tokens"], **batch["inputs"]), {}

    @torch.no_grad()
    def samples(self, model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        idx = self.eval_indices or list(range(min(8, len(self.data))))
        inputs, captions = captioner_inputs(self.data, idx)
        generated = [self.vocab.decode(t) for t in model.generate(**inputs)]
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"captions-{step:07d}.txt"
        path.write_text("".join(f"truth: {t}\nmodel: {g}\n\n" for t, g in zip(captions, generated, strict=True)))
        return [path]

    def export(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> Path:
        vae = self.data.meta.get("vae") if isinstance(self.data, LatentDataset) else None
        config = {**to_dict(self.model_cfg), "vocab": self.vocab.words[4:], "vae": vae}
        return save_weights(out_dir, "captioner", state_dict, config)


def export_captioner(run: str | Path, out: str | Path, weights: str = "ema", vae: str | None = None) -> Path:
    """A captioner folder (what `load_captioner` reads) from a `caption train` run's latest checkpoint, so a
    run can be measured while it trains; `weights` "ema" falls back to the raw weights where the run keeps no
    EMA. `vae`: the VAE folder its latents came from (`caption run` needs it; default: the one the run's own
    export recorded, if any)."""
    from kinema.train.export import latest_weights

    run = Path(run)
    ckpt, state = latest_weights(run, weights)
    if ckpt["config"]["task"] != "captioner":
        raise ValueError(f"{run}/checkpoints: {ckpt['config']['task']} checkpoints, not a captioner's")
    model = ckpt["config"]["model"]
    if vae is None and (run / "captioner.json").exists():
        vae = json.loads((run / "captioner.json").read_text()).get("vae")
    config = {**model["captioner"], "vocab": Vocab(model["vocab"]).words[4:], "vae": vae, "trained_steps": ckpt["step"]}
    return save_weights(out, "captioner", state, config)


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
