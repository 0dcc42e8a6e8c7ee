"""Datasets on disk: webdataset-style tar shards of lossless mp4 + JSON scene + caption text.

    DIR/meta.json               what made the dataset (world config, seed, count, shard size)
    DIR/shards/shard-00000.tar  {key}.mp4 (libx264rgb crf 0: exact pixels), {key}.json (scene), {key}.txt
    DIR/captions.jsonl          one line per clip: {"key", "shard", "captions": {short, medium, detailed}}

Every file is written to a temporary name and renamed into place, so an interrupted `synth` leaves only
whole shards; re-running it skips the shards already there and writes the rest.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kinema.data.captions import CAPTION_LEVELS, caption_scene
from kinema.data.world import Scene, WorldConfig, render, sample_scene
from kinema.io.video import atomic_write_bytes, encode_mp4, read_video, to_tensor

FORMAT_VERSION = 1


def clip_seed(dataset_seed: int, index: int) -> int:
    """Seed of clip `index`: a pure function, so any shard can be (re)made on its own."""
    return (dataset_seed << 32) + index


def make_clip(cfg: WorldConfig, seed: int) -> tuple[torch.Tensor, Scene]:
    """One captioned clip: frames (F, H, W, 3) uint8 and its scene, captions filled in."""
    scene = sample_scene(cfg, seed)
    scene.captions = caption_scene(scene, random.Random(seed ^ 0x5EED), cfg.state_count)
    return render(scene), scene


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


class ShardWriter:
    """Clips into FOLDER/shard-NNNNN.tar in the one shard format every dataset here uses: {key}.mp4 (lossless),
    {key}.json (the clip's record), {key}.txt (its caption). A shard is written atomically when it holds
    `shard_size` clips, and the last one on leaving the `with` block, so a killed writer leaves whole shards.

        with ShardWriter(out / "shards", shard_size=256) as w:
            shard = w.add(key, frames, fps, record_json, caption)   # the shard name the clip lands in
    """

    def __init__(self, folder: str | Path, shard_size: int, first: int = 0):
        self.folder, self.shard_size, self.shard_no = Path(folder), shard_size, first
        self.folder.mkdir(parents=True, exist_ok=True)
        self._clips: list[tuple[str, bytes, bytes, bytes]] = []

    @property
    def shard_name(self) -> str:
        return f"shard-{self.shard_no:05d}.tar"

    def add(self, key: str, frames: np.ndarray, fps: float, record_json: str, caption: str) -> str:
        """frames (F, H, W, 3) uint8."""
        name = self.shard_name
        self._clips.append((key, encode_mp4(frames, fps, lossless=True), record_json.encode(), caption.encode()))
        if len(self._clips) >= self.shard_size:
            self.flush()
        return name

    def flush(self) -> None:
        if not self._clips:
            return
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for key, mp4, record, caption in self._clips:
                for suffix, data in ((".mp4", mp4), (".json", record), (".txt", caption)):
                    info = tarfile.TarInfo(key + suffix)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        atomic_write_bytes(self.folder / self.shard_name, buf.getvalue())
        self._clips, self.shard_no = [], self.shard_no + 1

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:  # an interrupted shard is not written: resume makes it again
            self.flush()


def clip_config(cfg: WorldConfig, sizes: list[tuple[int, int, int]] | None, seed: int) -> WorldConfig:
    """The world config of one clip: with `sizes` ((F, H, W) choices), its duration and size drawn by seed."""
    if not sizes:
        return cfg
    frames, height, width = sizes[random.Random(seed ^ 0x517E).randrange(len(sizes))]
    return replace(cfg, frames=frames, height=height, width=width)


def _write_shard(folder: Path, number: int, cfg: WorldConfig, seed: int, indices: range,
                 sizes: list[tuple[int, int, int]] | None = None, bar=None) -> None:
    with ShardWriter(folder, shard_size=len(indices), first=number) as writer:
        for i in indices:
            frames, scene = make_clip(clip_config(cfg, sizes, clip_seed(seed, i)), clip_seed(seed, i))
            writer.add(f"{i:08d}", frames.numpy(), cfg.fps, scene.to_json(), scene.captions["detailed"])
            if bar is not None:
                bar.update(1)


def _check_meta(out: Path, meta: dict, overwrite: bool) -> None:
    meta_path = out / "meta.json"
    if meta_path.exists() and not overwrite:
        old = json.loads(meta_path.read_text())
        if old != meta:
            raise ValueError(f"{meta_path}: this folder holds a dataset made with other settings "
                             f"({old}); pass overwrite=True (--overwrite) or choose a new folder")
    elif overwrite and (out / "shards").exists():
        for p in (out / "shards").glob("shard-*.tar"):
            p.unlink()
    atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())


def synth_dataset(out: str | Path, n: int, cfg: WorldConfig, seed: int = 0, shard_size: int = 256,
                  overwrite: bool = False, progress: bool = True,
                  sizes: list[tuple[int, int, int]] | None = None) -> Path:
    """Write n shapes-world clips to `out` as shards + captions.jsonl. Resumes an interrupted run.
    With `sizes` ((F, H, W) triples), each clip gets one of them (mixed durations, sizes, aspect ratios)."""
    from tqdm import tqdm

    if n < 1 or shard_size < 1:
        raise ValueError(f"need n >= 1 and shard_size >= 1, got n={n}, shard_size={shard_size}")
    out = Path(out)
    meta = {"format": FORMAT_VERSION, "kind": "shapes-world", "n": n, "seed": seed,
            "shard_size": shard_size, "world": asdict(cfg)}
    meta["world"] = {k: list(v) if isinstance(v, tuple) else v for k, v in meta["world"].items()}
    if sizes:
        for f, h, w in sizes:
            WorldConfig(frames=f, height=h, width=w)  # validates each size
        meta["sizes"] = [list(s) for s in sizes]
    _check_meta(out, meta, overwrite)
    with tqdm(total=n, desc="synth", unit="clip", disable=not progress) as bar:
        for s, start in enumerate(range(0, n, shard_size)):
            clips = range(start, min(n, start + shard_size))
            if (out / "shards" / f"shard-{s:05d}.tar").exists():  # written by an earlier, interrupted run
                bar.update(len(clips))
            else:
                _write_shard(out / "shards", s, cfg, seed, clips, sizes, bar)
    _write_index(out)
    return out


def _write_index(out: Path) -> None:
    lines = []
    for shard in sorted((out / "shards").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    scene = json.loads(tar.extractfile(member).read())
                    lines.append(json.dumps({"key": member.name[:-5], "shard": shard.name,
                                             "captions": scene["captions"]}))
    atomic_write_bytes(out / "captions.jsonl", ("\n".join(lines) + "\n").encode())


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def jsonl_lines(path: str | Path, expected: str) -> Iterator[tuple[int, object, str]]:
    """(line number, parsed value, text) per non-blank line; a line that is not JSON raises ValueError naming
    file:line and `expected` (what a line should hold)."""
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line), line
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: malformed line ({e.msg}); expected {expected}") from e


def load_index(path: str | Path) -> list[dict]:
    """Lines of captions.jsonl, each checked; a bad line raises ValueError naming file:line."""
    rows = []
    for lineno, row, line in jsonl_lines(path, "one JSON object per line"):
        if not isinstance(row, dict) or "key" not in row or not isinstance(row.get("captions"), dict):
            raise ValueError(f"{path}:{lineno}: expected an object with 'key' and a 'captions' object, "
                             f"got {line[:80]!r}")
        rows.append(row)
    return rows


class ShardDataset(Dataset):
    """Clips of a shard folder as dicts: video (C, F, H, W) in [-1, 1], caption, captions, scene, key.

    `caption` is drawn per item from `caption_mix` (level -> probability) with a generator seeded by
    (seed, epoch, index): the same in any worker and any number of workers, so runs are reproducible."""

    def __init__(self, root: str | Path, caption_mix: dict[str, float] | None = None, seed: int = 0):
        self.root = Path(root)
        index_path = self.root / "captions.jsonl"
        if not index_path.exists():
            raise FileNotFoundError(f"{index_path}: no captions index; is {self.root} a dataset made by "
                                    f"`kinema data synth`?")
        self.rows = load_index(index_path)
        self._merge_recaptions(self.root / "recaptions.jsonl")
        self.caption_mix = caption_mix or {"detailed": 1.0}
        unknown = set(self.caption_mix) - set(CAPTION_LEVELS)
        if unknown:
            raise ValueError(f"caption_mix: unknown level(s) {sorted(unknown)}; expected {CAPTION_LEVELS}")
        self.seed, self.epoch = seed, 0
        self._members = self._scan_members()
        self._files: dict[str, object] = {}
        self._pid = os.getpid()

    def _merge_recaptions(self, path: Path) -> None:
        """Add the captioner's captions (if the recaption job ran) as the level 'recaption'."""
        if not path.exists():
            return
        recaptions = {}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                recaptions[row["key"]] = row["caption"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn line from an interrupted job: that clip is simply not recaptioned yet
        for row in self.rows:
            if row["key"] in recaptions:
                row["captions"]["recaption"] = recaptions[row["key"]]

    def _scan_members(self) -> dict[str, tuple[str, int, int]]:
        members = {}
        for shard in sorted({r["shard"] for r in self.rows}):
            with tarfile.open(self.root / "shards" / shard) as tar:
                for m in tar.getmembers():
                    members[m.name] = (shard, m.offset_data, m.size)
        return members

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, name: str) -> bytes:
        if os.getpid() != self._pid:  # forked worker: open its own handles
            self._files, self._pid = {}, os.getpid()
        if name not in self._members:
            raise KeyError(f"{self.root}: member {name} is listed in captions.jsonl but not in any shard")
        shard, offset, size = self._members[name]
        f = self._files.get(shard) or self._files.setdefault(shard, open(self.root / "shards" / shard, "rb"))  # noqa: SIM115
        f.seek(offset)
        return f.read(size)

    def pick_caption(self, index: int, captions: dict[str, str]) -> str:
        rng = random.Random(hash((self.seed, self.epoch, index)))
        mix = {lv: p for lv, p in self.caption_mix.items() if lv in captions} or {lv: 1.0 for lv in captions}
        levels, weights = zip(*mix.items(), strict=True)
        return captions[rng.choices(levels, weights)[0]]

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        key = row["key"]
        frames = read_video(self._read(f"{key}.mp4"), name=f"{row['shard']}:{key}.mp4")
        return {"video": to_tensor(frames), "caption": self.pick_caption(index, row["captions"]),
                "captions": row["captions"], "scene": self.scene(key), "key": key}

    def scene(self, key: str) -> dict:
        """The clip's JSON record without decoding its video (a shapes-world clip's: its Scene, Scene.to_dict)."""
        return json.loads(self._read(f"{key}.json"))


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
