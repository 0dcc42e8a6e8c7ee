"""Released weights: `{name}.safetensors` (tensors only) + `{name}.json` (the component's config) in a
folder. Everything needed to rebuild a model is in those two files; loading never unpickles."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kinema.config import from_dict, to_dict

M = TypeVar("M", bound=nn.Module)


class WeightsError(ValueError):
    """Weights or their config are missing, truncated or do not fit the model."""


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (stored in the file's metadata and
    checked on load, so flipped bits in tensor data are caught, not trained on)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_weights(folder: str | Path, name: str, state_dict: dict[str, torch.Tensor], config: dict) -> Path:
    """Write both files atomically (temp file + rename). Non-finite weights are refused: a diverged model is
    never released."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{folder}/{name}.safetensors: refusing to write non-finite weights ({len(bad)} tensors, "
                           f"e.g. {bad[0]})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.safetensors.tmp"
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(tmp), metadata={"sha256": content_hash(tensors)})
    os.replace(tmp, folder / f"{name}.safetensors")
    tmp_json = folder / f".{name}.json.tmp"
    tmp_json.write_text(json.dumps(config, indent=2))
    os.replace(tmp_json, folder / f"{name}.json")
    return folder / f"{name}.safetensors"


def _paths(folder: str | Path, name: str) -> tuple[Path, Path]:
    folder = Path(folder)
    weights, config = folder / f"{name}.safetensors", folder / f"{name}.json"
    for p in (weights, config):
        if not p.exists():
            raise WeightsError(f"{p}: not found; expected {name}.safetensors and {name}.json in {folder}")
    return weights, config


def _stored_digest(weights: Path) -> str | None:
    try:
        with safe_open(str(weights), framework="pt") as f:
            return (f.metadata() or {}).get("sha256")
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{weights}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def load_config(folder: str | Path, name: str) -> dict:
    """`{name}.json` alone (the tensors are not read)."""
    _, config = _paths(folder, name)
    try:
        return json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{config}:{e.lineno}: invalid JSON ({e.msg})") from e


def load_weights(folder: str | Path, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    weights, _ = _paths(folder, name)
    digest = _stored_digest(weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{weights}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    if digest is not None and content_hash(state) != digest:
        raise WeightsError(f"{weights}: content hash mismatch: the tensor data changed after it was written "
                           f"(corrupt file)")
    return state, load_config(folder, name)


def weights_sha256(folder: str | Path, name: str) -> str:
    """The identity of `{name}.safetensors`: the content hash stored in it (checked whenever it is loaded), or,
    for a file written before hashes were stored, the hash of its tensors."""
    weights, _ = _paths(folder, name)
    return _stored_digest(weights) or content_hash(load_weights(folder, name)[0])


def load_model(folder: str | Path, name: str, model_cls: type[M], config_cls: type) -> M:
    """Rebuild `model_cls(config_cls(**{name}.json))` and load `{name}.safetensors` into it, in eval mode."""
    state, cfg = load_weights(folder, name)
    model = model_cls(from_dict(config_cls, cfg, where=f"{Path(folder) / name}.json"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{Path(folder) / name}.safetensors does not fit {model_cls.__name__}: {e}") from e
    return model.eval()


def save_model(folder: str | Path, name: str, model: nn.Module, config) -> Path:
    return save_weights(folder, name, model.state_dict(), to_dict(config))
