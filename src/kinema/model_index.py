"""`model_index.json`: what a model folder says about itself beyond its weights, as one typed record.

    index = read_model_index("models/shapes-64")      # errors name the file and the field
    index.frames, index.steps, index.guidance          # the defaults `generate` uses
    write_model_index(folder, index)                   # atomic

Every writer (a DiT run's export, the reflow student, `from_parts` during training) builds it through
`model_index_for`, so the clip size always comes from the VAE's own arithmetic (VAEConfig.pixel_shape).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from kinema.config import from_dict, load_json, to_dict
from kinema.diffusion.samplers import DEFAULT_GUIDANCE, SAMPLERS, check_guidance_interval, default_sampler
from kinema.dit.attention_guidance import check_attention_guidance
from kinema.text.encoder import MINILM


@dataclass(frozen=True)
class ModelIndex:
    objective: dict  # the training objective, as kinema.diffusion.objectives.objective_from_dict reads it
    text_encoder: str = MINILM
    frames: int = 17  # default clip size
    height: int = 64
    width: int = 64
    fps: int = 8
    steps: int = 30  # default sampling steps and guidance
    guidance: float = DEFAULT_GUIDANCE
    sampler: str | None = None  # default sampler (None: the objective's first, euler / ddim)
    guidance_interval: tuple[float, float] | None = None  # guide only at noise levels t in [lo, hi] (None: all)
    # (strength, until, motion) of attention guidance (dit/attention_guidance.py; a folder may give the first one
    # or two); None: off
    attention_guidance: tuple[float, float, float] | None = None
    # starting noises sampled per clip, the one the model judges closest to the prompt kept (diffusion/fit.py)
    candidates: int = 1
    trained_steps: int | None = None  # provenance, written by export
    weights: str | None = None  # "model" or "ema"
    init_from: str | None = None  # this run started from that model's weights
    distilled: dict | None = None  # set on a few-step student (train/reflow.py)
    # how frame-conditioning samples were trained: given latent frames clean in the model's input and left out of
    # the loss (Wan / Open-Sora I2V), or noised like the rest (models trained before that fix)
    given_frames: str = "clean"

    def __post_init__(self) -> None:
        if "kind" not in self.objective:
            raise ValueError(f"ModelIndex.objective needs a 'kind' (flow or ddpm), got {self.objective}")
        for name in ("frames", "height", "width", "fps", "steps", "candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelIndex.{name} must be >= 1, got {getattr(self, name)}")
        if self.given_frames not in ("clean", "noised"):
            raise ValueError(f"ModelIndex.given_frames must be 'clean' or 'noised', got {self.given_frames!r}")
        if not 0 <= self.guidance < float("inf"):
            raise ValueError(f"ModelIndex.guidance must be a finite number >= 0, got {self.guidance}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"ModelIndex.sampler: {self.sampler!r}; expected one of {sorted(SAMPLERS)}")
        if self.guidance_interval is not None:  # JSON gives a list
            object.__setattr__(self, "guidance_interval",
                               check_guidance_interval(self.guidance_interval, "ModelIndex.guidance_interval"))
        if self.attention_guidance is not None:
            object.__setattr__(self, "attention_guidance",
                               check_attention_guidance(self.attention_guidance, "ModelIndex.attention_guidance"))

    @property
    def default_sampler(self) -> str:
        """The sampler a call samples with when it names none: the folder's, else its objective's first."""
        return self.sampler or default_sampler(self.objective["kind"])

    def replace(self, **changes) -> ModelIndex:
        return dataclasses.replace(self, **changes)


def model_index_for(objective, text_encoder: str | None, vae_cfg, latent_grid: tuple[int, int, int],
                    steps: int = 30, guidance: float = DEFAULT_GUIDANCE, **provenance) -> ModelIndex:
    """The index of a model trained on latents of `latent_grid` (F, H, W) from a VAE with `vae_cfg`: its
    default clip is the one that grid decodes to."""
    frames, height, width = vae_cfg.pixel_shape(*latent_grid)
    return ModelIndex(objective=to_dict(objective), text_encoder=text_encoder or MINILM,
                      frames=frames, height=height, width=width, steps=steps, guidance=guidance, **provenance)


# the keys diffusers reads in the same file (`kinema export diffusers`, kinema.interop.diffusers): its pipeline
# class and one [library, class] per component; kinema's reader skips them and its writer keeps them
DIFFUSERS_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "transformer", "vae", "text_model",
                  "scheduler")


def read_model_index(folder: str | Path) -> ModelIndex:
    path = Path(folder) / "model_index.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; a model folder needs model_index.json, "
                                f"dit.safetensors/.json and vae.safetensors/.json")
    d = load_json(path)
    return from_dict(ModelIndex, {k: v for k, v in d.items() if k not in DIFFUSERS_KEYS}, where=str(path))


def _diffusers_keys(path: Path) -> dict:
    return {k: v for k, v in load_json(path).items() if k in DIFFUSERS_KEYS} if path.exists() else {}


def _write_json(path: Path, d: dict) -> Path:
    """Atomic: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(d, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_diffusers_keys(folder: str | Path, entries: dict) -> Path:
    """Set diffusers' keys in the folder's model_index.json, kinema's left as they are."""
    path = Path(folder) / "model_index.json"
    unknown = set(entries) - set(DIFFUSERS_KEYS)
    if unknown:
        raise ValueError(f"write_diffusers_keys: {sorted(unknown)} are not diffusers keys {list(DIFFUSERS_KEYS)}")
    return _write_json(path, {**entries, **{k: v for k, v in load_json(path).items() if k not in DIFFUSERS_KEYS}})


def write_model_index(folder: str | Path, index: ModelIndex) -> Path:
    """Atomic; diffusers' keys already in the file are kept."""
    path = Path(folder) / "model_index.json"
    return _write_json(path, {**_diffusers_keys(path), **{k: v for k, v in to_dict(index).items() if v is not None}})
