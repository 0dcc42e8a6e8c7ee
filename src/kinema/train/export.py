"""Model folders from a run's latest checkpoint: the DiT's (what `TextToVideoPipeline.from_pretrained` loads)
here, the captioner's in `kinema.train.captioner_task.export_captioner`, both through `latest_weights`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from kinema.io.weights import save_weights
from kinema.model_index import read_model_index, write_model_index
from kinema.train.checkpoint import load_latest_verified


def latest_weights(run: str | Path, weights: str = "ema") -> tuple[dict, dict[str, torch.Tensor]]:
    """(checkpoint, its `weights` state dict: "model" or "ema") of a run's latest checkpoint; "ema" falls back to
    the raw weights, since runs without EMA keep an empty one."""
    path, ckpt, skipped = load_latest_verified(Path(run) / "checkpoints")
    for warning in skipped:
        print(f"warning: {warning}; exporting {path.name if path else 'nothing'}", file=sys.stderr)
    if ckpt is None:
        raise FileNotFoundError(f"{run}/checkpoints: no readable checkpoint to export")
    return ckpt, ckpt[weights] or ckpt["model"]


def export_model_folder(run: str | Path, out: str | Path, weights: str = "ema", half: bool = False,
                        **sampling) -> Path:
    """Copy the run's model_index.json and VAE (its `model/` folder, written when the run starts), and write its
    latest checkpoint's `weights` ("model" or "ema") as dit.safetensors (float16 when `half`; loading casts back
    to float32): a model folder from a run that is still training, or one that was stopped. `sampling` sets the
    folder's sampling defaults (steps, guidance, sampler, guidance_interval, attention_guidance; None keeps the
    run's)."""
    run, out = Path(run), Path(out)
    if not (run / "model" / "model_index.json").exists():  # a run writes it before its first step
        raise FileNotFoundError(f"{run}/model/model_index.json: missing; not a `kinema dit train` run folder, or "
                                f"one started before runs wrote it at their start (resume it once to write it)")
    ckpt, state = latest_weights(run, weights)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out, "dit", state, ckpt["config"]["model"]["dit"])
    index = read_model_index(run / "model")
    for name in ("vae.safetensors", "vae.json"):
        src = run / "model" / name
        if not src.exists():
            raise FileNotFoundError(f"{src}: missing; the run's latents name no VAE folder, so it has none to export")
        if name == "vae.safetensors" and half:
            from safetensors.torch import load_file

            vae = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(src)).items()}
            save_weights(out, "vae", vae, json.loads((run / "model" / "vae.json").read_text()))
        elif not (name == "vae.json" and half):
            shutil.copyfile(src, out / name)
    chosen = {k: v for k, v in sampling.items() if v is not None}
    write_model_index(out, index.replace(trained_steps=ckpt["step"], weights=weights, **chosen))
    return out


