"""The latent cache: VAE latents and text embeddings of a dataset, computed once for DiT training.

    OUT/meta.json                   source dataset, VAE config, text encoder, caption levels
    OUT/latents-00000.safetensors   latents (n, c, f, h, w) fp32; text.{level} (n, L, D) bf16,
                                    mask.{level} (n, L) bool; header: the keys of the n clips
    OUT/index.jsonl                 {"key", "shard", "row", "captions"} per clip

One latents file per source shard, each written atomically; an interrupted encode re-run skips the
files already there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kinema.data.shards import CAPTION_LEVELS, ShardDataset
from kinema.io.video import atomic_write_bytes

LATENT_FORMAT = 1


def _save_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


@torch.no_grad()
def _encode_rows(vae, text_encoder, ds: ShardDataset, rows: list[int], batch_size: int) -> dict[str, torch.Tensor]:
    levels = [lv for lv in CAPTION_LEVELS if all(lv in ds.rows[i]["captions"] for i in rows)]
    latents, texts = [], {level: [] for level in levels}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        videos = torch.stack([ds[i]["video"] for i in chunk])  # (B, C, F, H, W)
        latents.append(vae.encode(videos).float())
        if text_encoder is not None:
            for level in levels:
                texts[level].append(text_encoder([ds.rows[i]["captions"][level] for i in chunk]))
    out = {"latents": torch.cat(latents)}
    for level, parts in texts.items():
        if parts:
            length = max(t.shape[1] for t, _ in parts)
            out[f"text.{level}"] = torch.cat([_pad(t, length).to(torch.bfloat16) for t, _ in parts])
            out[f"mask.{level}"] = torch.cat([_pad(m, length) for _, m in parts])
    return out


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dim 1 with zeros (or False) to `length`."""
    pad = length - x.shape[1]
    return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1) if pad else x


def encode_dataset(vae_dir: str | Path, data_dir: str | Path, out: str | Path, batch_size: int = 16,
                   text: bool = True, text_encoder_name: str = "minilm", progress: bool = True) -> Path:
    """Encode every clip of a shard dataset with the VAE (posterior mean, normalised) and, with
    text=True, every caption level with the text encoder."""
    from tqdm import tqdm

    from kinema.io.weights import load_model
    from kinema.text.encoder import load_text_encoder
    from kinema.vae.model import VAEConfig, VideoVAE

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vae = load_model(vae_dir, "vae", VideoVAE, VAEConfig)
    encoder = load_text_encoder(text_encoder_name) if text else None
    ds = ShardDataset(data_dir)
    meta = {"format": LATENT_FORMAT, "source": str(Path(data_dir).resolve()), "vae": str(Path(vae_dir).resolve()),
            "vae_config": json.loads((Path(vae_dir) / "vae.json").read_text()),
            "text_encoder": text_encoder_name if text else None, "text_dim": encoder.dim if encoder else None}
    atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=2).encode())
    by_shard: dict[str, list[int]] = {}
    for i, row in enumerate(ds.rows):
        by_shard.setdefault(row["shard"], []).append(i)
    index = []
    for n, (shard, rows) in enumerate(tqdm(sorted(by_shard.items()), desc="encode", disable=not progress)):
        path = out / f"latents-{n:05d}.safetensors"
        if not path.exists():
            tensors = _encode_rows(vae, encoder, ds, rows, batch_size)
            _save_atomic(path, tensors, {"keys": json.dumps([ds.rows[i]["key"] for i in rows]), "source": shard})
        index += [{"key": ds.rows[i]["key"], "shard": path.name, "row": r, "captions": ds.rows[i]["captions"]}
                  for r, i in enumerate(rows)]
    atomic_write_bytes(out / "index.jsonl", ("\n".join(json.dumps(r) for r in index) + "\n").encode())
    return out


@dataclass
class LatentBatch:
    latents: torch.Tensor  # (B, c, f, h, w)
    text: torch.Tensor | None  # (B, L, D)
    mask: torch.Tensor | None  # (B, L) bool
    captions: list[str]


class LatentDataset:
    """The whole cache in memory (latents are small), with batches gathered by index."""

    def __init__(self, root: str | Path):
        from kinema.data.shards import load_index

        self.root = Path(root)
        if not (self.root / "index.jsonl").exists():
            raise FileNotFoundError(f"{self.root}/index.jsonl: not found; make a latent cache with "
                                    f"`kinema vae encode --vae VAE --data DATA --out {self.root}`")
        self.meta = json.loads((self.root / "meta.json").read_text())
        self.rows = load_index(self.root / "index.jsonl")
        self.latents, self.text, self.mask = self._load()

    def _load(self):
        shards = sorted({r["shard"] for r in self.rows})
        parts: dict[str, list[torch.Tensor]] = {}
        for shard in shards:
            with safe_open(str(self.root / shard), framework="pt") as f:
                for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    parts.setdefault(k, []).append(f.get_tensor(k))
        offsets, total = {}, 0
        for shard, lat in zip(shards, parts["latents"], strict=True):
            offsets[shard], total = total, total + lat.shape[0]
        self._row_of = [offsets[r["shard"]] + r["row"] for r in self.rows]
        latents = torch.cat(parts.pop("latents"))
        text, mask = {}, {}
        for level in CAPTION_LEVELS:
            if f"text.{level}" in parts:
                length = max(t.shape[1] for t in parts[f"text.{level}"])
                text[level] = torch.cat([_pad(t, length) for t in parts[f"text.{level}"]])
                mask[level] = torch.cat([_pad(m, length) for m in parts[f"mask.{level}"]])
        return latents, text, mask

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    def gather(self, indices: list[int], levels: list[str]) -> LatentBatch:
        """Latents of `indices`, with the text of caption level levels[i] for clip i."""
        rows = [self._row_of[i] for i in indices]
        captions = [self.rows[i]["captions"][lv] for i, lv in zip(indices, levels, strict=True)]
        if not self.text:
            return LatentBatch(self.latents[rows], None, None, captions)
        length = max(self.text[lv].shape[1] for lv in set(levels))
        text = torch.stack([_pad(self.text[lv][r][None], length)[0] for r, lv in zip(rows, levels, strict=True)])
        mask = torch.stack([_pad(self.mask[lv][r][None], length)[0] for r, lv in zip(rows, levels, strict=True)])
        return LatentBatch(self.latents[rows], text.float(), mask, captions)
