"""The latent cache: VAE latents and text embeddings of a dataset, computed once for DiT training.

    OUT/meta.json                   source dataset, VAE config, text encoder, caption levels
    OUT/latents-00000.safetensors   latents.{f}x{h}x{w} (n_b, c, f, h, w) fp32, one tensor per size bucket;
                                    text.{level} (n, L, D) bf16, mask.{level} (n, L) bool in clip order;
                                    header: the keys of the n clips
    OUT/index.jsonl                 {"key", "shard", "row", "bucket", "brow", "captions"} per clip: row is the
                                    clip's place in the shard, (bucket, brow) where its latent is

Clips of different durations and sizes (variable F, H, W: Sora trains at native sizes) fall into buckets by
latent shape; a batch is drawn from one bucket (`kinema.data.buckets.bucket_batch_indices`).

One latents file per source shard, each written atomically; an interrupted encode re-run skips the
files already there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kinema.data.shards import CAPTION_LEVELS, ShardDataset, load_index
from kinema.io.video import atomic_write_bytes

LATENT_FORMAT = 1


def _save_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


@torch.no_grad()
def _encode_rows(vae, text_encoder, ds: ShardDataset, rows: list[int],
                 batch_size: int) -> tuple[dict[str, torch.Tensor], dict[int, tuple[str, int]]]:
    """Latents per size bucket (and each row's (bucket, position)), text embeddings in row order."""
    levels = [lv for lv in CAPTION_LEVELS if all(lv in ds.rows[i]["captions"] for i in rows)]
    videos = {i: ds[i]["video"] for i in rows}  # (C, F, H, W), sizes may differ
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i in rows:
        by_size.setdefault(tuple(videos[i].shape[1:]), []).append(i)
    out, where = {}, {}
    from kinema.precision import autocast, use_bf16

    fast = use_bf16("auto", torch.device("cpu"))  # bf16 where the CPU is fast at it (~6x the VAE's speed)
    for _, members in sorted(by_size.items()):
        with autocast(torch.device("cpu"), fast):
            parts = [vae.encode(torch.stack([videos[i] for i in members[s:s + batch_size]])).float()
                     for s in range(0, len(members), batch_size)]
        latents = torch.cat(parts)  # (n_b, c, f, h, w)
        bucket = bucket_name(latents.shape[2:])
        out[f"latents.{bucket}"] = latents
        where.update({i: (bucket, j) for j, i in enumerate(members)})
    if text_encoder is not None:
        out.update(encode_texts(text_encoder, [ds.rows[i]["captions"] for i in rows], levels, batch_size))
    return out, where


@torch.no_grad()
def encode_texts(text_encoder, captions: list[dict[str, str]], levels: list[str],
                 batch_size: int) -> dict[str, torch.Tensor]:
    """text.{level} (n, L, D) bf16 and mask.{level} (n, L) for each clip's captions, in order."""
    out = {}
    for level in levels:
        parts = [text_encoder([c[level] for c in captions[s:s + batch_size]])
                 for s in range(0, len(captions), batch_size)]
        if parts:
            length = max(t.shape[1] for t, _ in parts)
            out[f"text.{level}"] = torch.cat([_pad(t, length).to(torch.bfloat16) for t, _ in parts])
            out[f"mask.{level}"] = torch.cat([_pad(m, length) for _, m in parts])
    return out


def bucket_name(shape: tuple[int, ...] | torch.Size) -> str:
    """Latent (f, h, w) -> "fxhxw", the name of a size bucket."""
    return "x".join(str(int(n)) for n in shape)


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dim 1 with zeros (or False) to `length`."""
    pad = length - x.shape[1]
    return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1) if pad else x


def encode_dataset(vae_dir: str | Path, data_dir: str | Path, out: str | Path, batch_size: int = 16,
                   text: bool = True, text_encoder_name: str | None = None, progress: bool = True) -> Path:
    """Encode every clip of a shard dataset with the VAE (posterior mean, normalised) and, with
    text=True, every caption level with the text encoder."""
    from tqdm import tqdm

    from kinema.io.weights import load_model
    from kinema.text.encoder import DEFAULT_TEXT_ENCODER, load_text_encoder
    from kinema.vae.model import VAEConfig, VideoVAE

    text_encoder_name = text_encoder_name or DEFAULT_TEXT_ENCODER
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
        if path.exists():  # done by an earlier, interrupted run: read where each row went
            where = _bucket_rows(path, rows)
        else:
            tensors, where = _encode_rows(vae, encoder, ds, rows, batch_size)
            _save_atomic(path, tensors, {"keys": json.dumps([ds.rows[i]["key"] for i in rows]), "source": shard,
                                         "buckets": json.dumps([where[i] for i in rows])})
        index += [{"key": ds.rows[i]["key"], "shard": path.name, "row": r, "bucket": where[i][0],
                   "brow": where[i][1], "captions": ds.rows[i]["captions"]} for r, i in enumerate(rows)]
    atomic_write_bytes(out / "index.jsonl", ("\n".join(json.dumps(r) for r in index) + "\n").encode())
    return out


def reencode_text(latents_dir: str | Path, out: str | Path, text_encoder_name: str, batch_size: int = 64,
                  progress: bool = True) -> Path:
    """A copy of a latent cache with its captions encoded by another text encoder; the latents are
    reused as they are. Shard by shard, atomically; an interrupted run re-run skips what is done."""
    from tqdm import tqdm

    from kinema.text.encoder import load_text_encoder

    src, out = Path(latents_dir), Path(out)
    if src.resolve() == out.resolve():
        raise ValueError(f"{out}: write the re-encoded cache to a new folder, not over {src}")
    meta = json.loads((src / "meta.json").read_text())
    rows = load_index(src / "index.jsonl")
    encoder = load_text_encoder(text_encoder_name)
    out.mkdir(parents=True, exist_ok=True)
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    for shard, members in tqdm(sorted(by_shard.items()), desc="text", disable=not progress):
        if (out / shard).exists():
            continue
        members.sort(key=lambda r: r["row"])
        levels = [lv for lv in CAPTION_LEVELS if all(lv in r["captions"] for r in members)]
        with safe_open(str(src / shard), framework="pt") as f:
            header = f.metadata() or {}
            keys = [k for k in f.keys() if not k.startswith(("text.", "mask."))]  # noqa: SIM118 (safe_open)
            tensors = {k: f.get_tensor(k) for k in keys}
        tensors.update(encode_texts(encoder, [r["captions"] for r in members], levels, batch_size))
        _save_atomic(out / shard, tensors, header)
    meta.update(text_encoder=text_encoder_name, text_dim=encoder.dim, text_from=str(src.resolve()))
    atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=2).encode())
    atomic_write_bytes(out / "index.jsonl", (src / "index.jsonl").read_bytes())
    return out


def _bucket_rows(path: Path, rows: list[int]) -> dict[int, tuple[str, int]]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "buckets" in meta:
            return {i: tuple(b) for i, b in zip(rows, json.loads(meta["buckets"]), strict=True)}
        bucket = bucket_name(f.get_slice("latents").get_shape()[2:])  # a cache from before buckets
        return {i: (bucket, j) for j, i in enumerate(rows)}


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
                text[level] = torch.cat([_pad(t, length) for t in texts[f"text.{level}"]])
                mask[level] = torch.cat([_pad(m, length) for m in texts[f"mask.{level}"]])
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
        text = torch.stack([_pad(self.text[lv][r][None], length)[0] for r, lv in zip(rows, levels, strict=True)])
        mask = torch.stack([_pad(self.mask[lv][r][None], length)[0] for r, lv in zip(rows, levels, strict=True)])
        return LatentBatch(latents, text.float(), mask, captions)
