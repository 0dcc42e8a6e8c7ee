"""Checkpoints: one safetensors file of named states, written atomically.

A checkpoint is an explicit dict of named states, e.g. {"model": ..., "ema": ..., "optimizer": ...,
"rng": ..., "step": 500, "config": {...}}. Tensors go into the safetensors body under dotted names;
everything else (ints, floats, strings, nested optimizer hyper-parameters) goes into the header as JSON,
with markers where the tensors were, so `load_checkpoint` returns exactly the dict that was saved.
No pickle is ever involved: loading a checkpoint cannot run code. The header also carries a SHA-256 of every
tensor's bytes, verified on load, so a file with flipped bits is refused rather than trained on.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kinema.io.weights import content_hash

_TENSOR = "__tensor__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not one of ours."""


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors by markers, collecting them; dict keys keep their type (ints stay ints)."""
    if isinstance(obj, torch.Tensor):
        name = prefix.strip(".") or "tensor"
        tensors[name] = obj.detach().cpu().contiguous()
        return {_TENSOR: name}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj["tuple"] else items
    return obj


def save_checkpoint(path: str | Path, states: dict[str, Any]) -> Path:
    """Write `states` to `path` atomically (temp file + rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(states, "", tensors)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"kinema": json.dumps(skeleton), "sha256": content_hash(tensors)})
    os.replace(tmp, path)
    return path


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files of checkpoint writes that were killed (`.step-*.tmp`); returns what was removed."""
    stale = sorted(Path(folder).glob(".step-*.tmp")) if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; CheckpointError names the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (truncated or corrupt?): {e}") from e
    header, digest = meta.get("kinema"), meta.get("sha256")
    if header is None:
        raise CheckpointError(f"{path}: safetensors file without kinema metadata; expected a checkpoint "
                              f"written by kinema (for bare weights use load_weights)")
    if digest is not None and content_hash(tensors) != digest:
        raise CheckpointError(f"{path}: content hash mismatch: the tensor data changed after it was written "
                              "(corrupt file)")
    try:
        return _unflatten(json.loads(header), tensors)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: the checkpoint header is damaged ({e})") from e


def load_latest_verified(folder: str | Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint in `folder` that loads and verifies, newest first; with a warning for each newer one
    that did not (naming it and the one used instead)."""
    warnings: list[str] = []
    for path in reversed(_by_step(folder)):
        try:
            return path, load_checkpoint(path), warnings
        except CheckpointError as e:
            warnings.append(f"skipping {path.name}: {e}")
    return None, None, warnings


def _by_step(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("step-*.safetensors"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in `folder` (files named step-NNNNNNN.safetensors)."""
    found = _by_step(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints, and only once the newest one verifies: a corrupt successor never
    costs the last good checkpoint."""
    found = _by_step(folder)
    if not found or keep <= 0:
        return
    try:
        load_checkpoint(found[-1])
    except CheckpointError:
        return
    for old in found[:-keep]:
        old.unlink(missing_ok=True)
