"""Training task for the video captioner (the recaptioning model of kinema.captioning): batches of clips or
latents with their detailed captions as token targets, and the run -> captioner folder export."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kinema.captioning.captioner import PAD, CaptionerConfig, VideoCaptioner, Vocab
from kinema.captioning.recaption import captioner_inputs
from kinema.config import to_dict
from kinema.data.buckets import global_indices
from kinema.data.latents import LatentDataset
from kinema.data.shards import DecodedClips, ShardDataset
from kinema.io.weights import save_weights
from kinema.train.distributed import DistInfo
from kinema.train.export import latest_weights


def _tokens(vocab: Vocab, captions: list[str], max_length: int) -> torch.Tensor:
    ids = [vocab.encode(c, max_length) for c in captions]
    out = torch.full((len(ids), max(len(i) for i in ids)), PAD, dtype=torch.long)
    for row, seq in enumerate(ids):
        out[row, : len(seq)] = torch.tensor(seq)
    return out


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

    def start(self, out_dir: Path) -> None:
        """Nothing: `export_captioner` builds a folder from any checkpoint's config."""

    def export(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> Path:
        vae = self.data.meta.get("vae") if isinstance(self.data, LatentDataset) else None
        config = {**to_dict(self.model_cfg), "vocab": self.vocab.words[4:], "vae": vae}
        return save_weights(out_dir, "captioner", state_dict, config)


def export_captioner(run: str | Path, out: str | Path, weights: str = "ema", vae: str | None = None) -> Path:
    """A captioner folder (what `load_captioner` reads) from a `caption train` run's latest checkpoint, so a
    run can be measured while it trains; `weights` "ema" falls back to the raw weights where the run keeps no
    EMA. `vae`: the VAE folder its latents came from (`caption run` needs it; default: the one the run's own
    export recorded, if any)."""
    run = Path(run)
    ckpt, state = latest_weights(run, weights)
    if ckpt["config"]["task"] != "captioner":
        raise ValueError(f"{run}/checkpoints: {ckpt['config']['task']} checkpoints, not a captioner's")
    model = ckpt["config"]["model"]
    if vae is None and (run / "captioner.json").exists():
        vae = json.loads((run / "captioner.json").read_text()).get("vae")
    config = {**model["captioner"], "vocab": Vocab(model["vocab"]).words[4:], "vae": vae, "trained_steps": ckpt["step"]}
    return save_weights(out, "captioner", state, config)


