"""The latent cache: VAE latents and text embeddings of a dataset, computed once for DiT training.

    OUT/meta.json                   source dataset, VAE config, text encoder, caption levels
    OUT/latents-00000.safetensors   latents.{f}x{h}x{w} (n_b, c, f, h, w) fp32, one tensor per size bucket;
                                    text.{level} (n, L, D) bf16, mask.{level} (n, L) bool in clip order;
                                    header: the keys of the n clips
    OUT/index.jsonl                 {"key", "shard", "row", "bucket", "brow", "captions"} per clip: row is the
                                    clip's place in the shard, (bucket, brow) where its latent is

Clips of different durations and sizes (variable F, H, W: Sora trains at native sizes) fall into buckets by
latent shape; a batch is drawn from one bucket (`kinema.data.buckets.bucket_batch_indices`).

This module reads the cache; `kinema.encode` writes it (it needs the VAE and the text encoder, which sit
above data/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open

from kinema.data.shards import CAPTION_LEVELS, load_index

LATENT_FORMAT = 1


def pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dim 1 with zeros (or False) to `length`."""
    pad = length - x.shape[1]
    return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1) if pad else x


def bucket_name(shape: tuple[int, ...] | torch.Size) -> str:
    """Latent (f, h, w) -> "fxhxw", the name of a size bucket."""
    return "x".join(str(int(n)) for n in shape)


@dataclass
class LatentBatch:
    latents: torch.Tensor  # (B, c, f, h, w)
    text: torch.Tensor | None  # (B, L, D)
    mask: torch.Tensor | None  # (B, L) bool
    captions: list[str]


class LatentDataset:
    """The whole cache in memory (latents are small), with batches gathered by index."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "index.jsonl").exists():
            raise FileNotFoundError(f"{self.root}/index.jsonl: not found; make a latent cache with "
                                    f"`kinema vae encode --vae VAE --data DATA --out {self.root}`")
        self.meta = json.loads((self.root / "meta.json").read_text())
        self.rows = load_index(self.root / "index.jsonl")
        self.latents, self.text, self.mask = self._load()

    def _load(self):
        """latents: bucket -> (n_b, c, f, h, w); text/mask: level -> (n, L, D) / (n, L) in index order."""
        shards = sorted({r["shard"] for r in self.rows})
        latents: dict[str, list[torch.Tensor]] = {}
        texts: dict[str, list[torch.Tensor]] = {}
        bucket_offset, text_offset, total = {}, {}, 0
        for shard in shards:
            with safe_open(str(self.root / shard), framework="pt") as f:
                keys = list(f.keys())
                rows = len(json.loads((f.metadata() or {}).get("keys", "[]")))
                for k in keys:
                    if k == "latents" or k.startswith("latents."):
                        t = f.get_tensor(k)
                        bucket = k.partition(".")[2] or bucket_name(t.shape[2:])
                        bucket_offset[shard, bucket] = sum(x.shape[0] for x in latents.get(bucket, []))
                        latents.setdefault(bucket, []).append(t)
                        rows = rows or t.shape[0]
                    else:
                        texts.setdefault(k, []).append(f.get_tensor(k))
            text_offset[shard], total = total, total + rows
        self._loc = []
        for r in self.rows:
            bucket = r.get("bucket") or next(b for (s, b) in bucket_offset if s == r["shard"])
            self._loc.append((bucket, bucket_offset[r["shard"], bucket] + r.get("brow", r["row"])))
        self._text_row = [text_offset[r["shard"]] + r["row"] for r in self.rows]
        text, mask = {}, {}
        for level in CAPTION_LEVELS:
            if f"text.{level}" in texts:
                length = max(t.shape[1] for t in texts[f"text.{level}"])
                text[level] = torch.cat([pad_to(t, length) for t in texts[f"text.{level}"]])
                mask[level] = torch.cat([pad_to(m, length) for m in texts[f"mask.{level}"]])
        return {b: torch.cat(parts) for b, parts in latents.items()}, text, mask

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def buckets(self) -> dict[str, list[int]]:
        """Size bucket -> the dataset indices in it."""
        out: dict[str, list[int]] = {}
        for i, (bucket, _) in enumerate(self._loc):
            out.setdefault(bucket, []).append(i)
        return out

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(c, f, h, w) of the largest bucket (the only one, for a single-size dataset)."""
        bucket = max(self.latents, key=lambda b: self.latents[b].shape[0])
        return tuple(self.latents[bucket].shape[1:])

    def latents_of(self, indices: list[int]) -> torch.Tensor:
        """(n, c, f, h, w) latents of clips from one size bucket."""
        buckets = {self._loc[i][0] for i in indices}
        if len(buckets) > 1:
            raise ValueError(f"{self.root}: a batch must come from one size bucket, got {sorted(buckets)}")
        return self.latents[buckets.pop()][[self._loc[i][1] for i in indices]]

    def add_level(self, level: str, captions: list[str], text: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a caption level in memory (e.g. a captioner's captions): captions[i], text[i] (L, D) and
        mask[i] (L,) belong to clip i."""
        if not len(captions) == text.shape[0] == mask.shape[0] == len(self):
            raise ValueError(f"add_level({level!r}): need one caption, text and mask per clip ({len(self)}), got "
                             f"{len(captions)}, {text.shape[0]}, {mask.shape[0]}")
        rows = torch.tensor(self._text_row)
        self.text[level] = text.new_zeros(int(rows.max()) + 1, *text.shape[1:])
        self.mask[level] = mask.new_zeros(int(rows.max()) + 1, *mask.shape[1:])
        self.text[level][rows], self.mask[level][rows] = text, mask
        for row, caption in zip(self.rows, captions, strict=True):
            row["captions"][level] = caption

    def gather(self, indices: list[int], levels: list[str]) -> LatentBatch:
        """Latents of `indices` (all from one size bucket), with the text of caption level levels[i] for clip i."""
        latents = self.latents_of(indices)
        captions = [self.rows[i]["captions"][lv] for i, lv in zip(indices, levels, strict=True)]
        if not self.text:
            return LatentBatch(latents, None, None, captions)
        rows = [self._text_row[i] for i in indices]
        length = max(self.text[lv].shape[1] for lv in set(levels))
        text = torch.stack([pad_to(self.text[lv][r][None], length)[0] for r, lv in zip(rows, levels, strict=True)])
        mask = torch.stack([pad_to(self.mask[lv][r][None], length)[0] for r, lv in zip(rows, levels, strict=True)])
        return LatentBatch(latents, text.float(), mask, captions)
