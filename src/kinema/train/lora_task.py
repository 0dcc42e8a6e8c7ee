"""LoRA fine-tuning of a trained model on your own clips (`kinema dit finetune --lora RANK`), and the adapter files.

The task is the DiT task on the new latents with the base model's weights frozen and low-rank adapters on its
attention and MLP linears trained (kinema.layers.lora); it exports only the adapter:

    RUN/adapter.safetensors   lora_A / lora_B of every wrapped linear (safetensors, content-hashed)
    RUN/adapter.json          rank, alpha, targets, the base model it was trained on (path + weights hash)

`kinema generate --lora RUN` adds it at load (`--lora-scale` how strongly), `kinema lora merge` folds it into a
new model folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kinema.config import from_dict
from kinema.dit.model import DiTConfig
from kinema.io.weights import load_config, load_weights, save_weights, weights_sha256
from kinema.layers.lora import DEFAULT_TARGETS, add_lora, lora_state_dict, merge_lora
from kinema.model_index import read_model_index, write_model_index
from kinema.train.dit_task import DiTTask


def base_model_config(folder: str | Path) -> DiTConfig:
    return from_dict(DiTConfig, load_config(folder, "dit"), where=f"{folder}/dit.json")


@dataclass
class LoRATask(DiTTask):
    base_model: Path = Path()
    rank: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    name: str = "lora"

    def build_model(self) -> nn.Module:
        from kinema.pipeline import load_backbone

        model = load_backbone(self.base_model)
        add_lora(model, self.rank, self.alpha, self.targets)
        return model.train()

    def model_config(self) -> dict:
        return {**super().model_config(), "lora": {"rank": self.rank, "alpha": self.alpha,
                                                   "targets": list(self.targets), "base": str(self.base_model)}}

    def start(self, out_dir: Path) -> None:
        """Nothing: the adapter is its weights alone (not the DiT run's model folder)."""

    def export(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> Path:
        meta = {"rank": self.rank, "alpha": float(self.alpha if self.alpha is not None else self.rank),
                "targets": list(self.targets), "base_model": str(Path(self.base_model).resolve()),
                "base_dit_sha256": weights_sha256(self.base_model, "dit")}
        return save_weights(out_dir, "adapter", lora_state_dict(state_dict), meta)


def merge_into_folder(model_dir: str | Path, adapter: str | Path, out: str | Path, scale: float = 1.0) -> Path:
    """A new model folder: `model_dir` with the adapter folded into its DiT weights."""
    from kinema.pipeline import load_adapter, load_backbone

    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ValueError(f"{out}: write the merged model to a new folder, not over its base")
    model = load_backbone(model_dir)
    load_adapter(model, adapter, scale, model_dir)
    merge_lora(model)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out, "dit", model.state_dict(), load_config(model_dir, "dit"))
    for name in ("vae.safetensors", "vae.json"):
        shutil.copyfile(model_dir / name, out / name)
    index = read_model_index(model_dir)
    write_model_index(out, index.replace(init_from=f"{model_dir} + LoRA {adapter} (scale {scale:g})"))
    return out


def adapter_numbers(adapter: str | Path, model_dir: str | Path) -> dict:
    """Adapter size against the full model: parameters and bytes."""
    a, _ = load_weights(adapter, "adapter")
    m, _ = load_weights(model_dir, "dit")
    return {"adapter_params": sum(v.numel() for v in a.values()), "model_params": sum(v.numel() for v in m.values()),
            "adapter_bytes": (Path(adapter) / "adapter.safetensors").stat().st_size,
            "model_bytes": (Path(model_dir) / "dit.safetensors").stat().st_size}

