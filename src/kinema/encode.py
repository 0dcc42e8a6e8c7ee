"""Writing the latent cache (`kinema vae encode`, `kinema data retext`): every clip of a shard dataset through
the VAE, every caption level through the text encoder, into the format `kinema.data.latents` reads.

One latents file per source shard, each written atomically; an interrupted run re-run skips the files already
there, after checking that the VAE (its weights' content hash) and the text encoder are the ones recorded in
the cache's meta.json, so a resume never mixes latents or text features of two models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kinema.data.latents import LATENT_FORMAT, bucket_name, pad_to
from kinema.data.shards import CAPTION_LEVELS, ShardDataset, load_index
from kinema.io.video import atomic_write_bytes
from kinema.io.weights import weights_sha256

# the meta.json fields a resumed run must agree on
_RESUME_FIELDS = ("source", "vae_sha256", "text_encoder", "text_dim")


def _check_resume(out: Path, meta: dict) -> None:
    """A cache folder that already holds files must have been written by the same VAE and text encoder."""
    path = out / "meta.json"
    if not path.exists() or not any(out.glob("latents-*.safetensors")):
        return
    old = json.loads(path.read_text())
    for name in _RESUME_FIELDS:
        if name in old and old.get(name) != meta.get(name):
            raise ValueError(f"{path}: this cache was written with {name} = {old.get(name)!r}; this run has "
                             f"{meta.get(name)!r}. Resuming would mix the two in one cache: write to a new folder "
                             f"(or delete {out})")


def _save_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


@torch.no_grad()
def _encode_rows(vae, text_encoder, ds: ShardDataset, rows: list[int], batch_size: int,
                 bar=None) -> tuple[dict[str, torch.Tensor], dict[int, tuple[str, int]]]:
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
        parts = []
        for s in range(0, len(members), batch_size):
            with autocast(torch.device("cpu"), fast):
                parts.append(vae.encode(torch.stack([videos[i] for i in members[s:s + batch_size]])).float())
            if bar is not None:
                bar.update(len(members[s:s + batch_size]))
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
    """text.{level} (n, L, D) bf16 and mask.{level} (n, L) for each clip's captions, in order. Each distinct
    caption is encoded once (a level like `short` has a few dozen among thousands of clips)."""
    out = {}
    for level in levels:
        texts = [c[level] for c in captions]
        slot = {text: i for i, text in enumerate(dict.fromkeys(texts))}  # distinct captions, first-seen order
        unique = list(slot)
        parts = [text_encoder(unique[s:s + batch_size]) for s in range(0, len(unique), batch_size)]
        if parts:
            length = max(t.shape[1] for t, _ in parts)
            rows = torch.tensor([slot[text] for text in texts])
            out[f"text.{level}"] = torch.cat([pad_to(t, length).to(torch.bfloat16) for t, _ in parts])[rows]
            out[f"mask.{level}"] = torch.cat([pad_to(m, length) for _, m in parts])[rows]
    return out


def encode_dataset(vae_dir: str | Path, data_dir: str | Path, out: str | Path, batch_size: int = 16,
                   text: bool = True, text_encoder_name: str | None = None, progress: bool = True) -> Path:
    """Encode every clip of a shard dataset with the VAE (posterior mean, normalised) and, with
    text=True, every caption level with the text encoder (default: the model folder's when `vae_dir` is one, else
    DEFAULT_TEXT_ENCODER)."""
    from tqdm import tqdm

    from kinema.io.weights import load_model
    from kinema.model_index import read_model_index
    from kinema.text.encoder import DEFAULT_TEXT_ENCODER, load_text_encoder
    from kinema.vae.model import VAEConfig, VideoVAE

    if text_encoder_name is None:  # a model folder's own encoder, so its captions match what the model reads
        index = Path(vae_dir) / "model_index.json"
        text_encoder_name = read_model_index(vae_dir).text_encoder if index.exists() else DEFAULT_TEXT_ENCODER
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vae = load_model(vae_dir, "vae", VideoVAE, VAEConfig)
    encoder = load_text_encoder(text_encoder_name) if text else None
    ds = ShardDataset(data_dir)
    meta = {"format": LATENT_FORMAT, "source": str(Path(data_dir).resolve()), "vae": str(Path(vae_dir).resolve()),
            "vae_config": json.loads((Path(vae_dir) / "vae.json").read_text()),
            "vae_sha256": weights_sha256(vae_dir, "vae"),
            "text_encoder": text_encoder_name if text else None, "text_dim": encoder.dim if encoder else None}
    _check_resume(out, meta)
    atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=2).encode())
    by_shard: dict[str, list[int]] = {}
    for i, row in enumerate(ds.rows):
        by_shard.setdefault(row["shard"], []).append(i)
    index = []
    bar = tqdm(total=len(ds.rows), desc="encode", unit="clip", disable=not progress)
    for n, (shard, rows) in enumerate(sorted(by_shard.items())):
        path = out / f"latents-{n:05d}.safetensors"
        if path.exists():  # done by an earlier, interrupted run: read where each row went
            where = _bucket_rows(path, rows)
            bar.update(len(rows))
        else:
            tensors, where = _encode_rows(vae, encoder, ds, rows, batch_size, bar)
            _save_atomic(path, tensors, {"keys": json.dumps([ds.rows[i]["key"] for i in rows]), "source": shard,
                                         "buckets": json.dumps([where[i] for i in rows])})
        index += [{"key": ds.rows[i]["key"], "shard": path.name, "row": r, "bucket": where[i][0],
                   "brow": where[i][1], "captions": ds.rows[i]["captions"]} for r, i in enumerate(rows)]
    bar.close()
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
    meta.update(text_encoder=text_encoder_name, text_dim=encoder.dim, text_from=str(src.resolve()))
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, meta)
    atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=2).encode())  # first: a resume checks it
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
    atomic_write_bytes(out / "index.jsonl", (src / "index.jsonl").read_bytes())
    return out


def _bucket_rows(path: Path, rows: list[int]) -> dict[int, tuple[str, int]]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "buckets" in meta:
            return {i: tuple(b) for i, b in zip(rows, json.loads(meta["buckets"]), strict=True)}
        bucket = bucket_name(f.get_slice("latents").get_shape()[2:])  # a cache from before buckets
        return {i: (bucket, j) for j, i in enumerate(rows)}


