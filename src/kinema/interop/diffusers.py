"""Diffusers interop: a kinema model folder that diffusers' own `from_pretrained` loads and runs.

    kinema export diffusers models/shapes-64          # adds the files diffusers reads (small JSON only)

    from kinema.interop.diffusers import KinemaPipeline
    pipe = KinemaPipeline.from_pretrained("models/shapes-64")          # DiffusionPipeline.from_pretrained
    video = pipe("a large red circle moving quickly to the right", generator=torch.Generator().manual_seed(0)).frames

What the export adds to the folder (nothing is copied: the weights stay in dit.safetensors and vae.safetensors,
with their content hashes, so there is one copy of each fact):

    model_index.json     gains diffusers' keys: `_class_name`, `_diffusers_version` and one
                         [library, class] entry per component (kinema's own keys stay and are read as before;
                         the text encoder is the `text_model` component, since kinema's `text_encoder` key names it)
    scheduler/           scheduler_config.json of diffusers' FlowMatchEulerDiscreteScheduler with the model's shift
    transformer/, vae/, text_model/
                         config.json naming the kinema file the component loads (`kinema_file`: dit, vae) or the
                         text encoder (`kinema_text_encoder`)

The components are diffusers `ModelMixin`s whose `from_pretrained` reads those kinema files; the denoising loop
runs on diffusers' scheduler (set to kinema's sigma schedule, so it matches `kinema generate --sampler euler`): a
folder whose default sampler is another (model_index.json `sampler`, e.g. euler-a) samples with Euler here, with the
folder's guidance and guidance interval.
Only flow-matching models export (the DDPM objective has no kinema-schedule twin in diffusers' config here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers import __version__ as diffusers_version
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from kinema.diffusion.objectives import FlowObjective, objective_from_dict
from kinema.diffusion.samplers import classifier_free_guidance
from kinema.diffusion.schedules import flow_sigmas
from kinema.io.video import to_frames
from kinema.model_index import read_model_index
from kinema.pipeline import TextToVideoPipeline, load_backbone
from kinema.text.encoder import load_text_encoder
from kinema.vae.model import VAEConfig, VideoVAE

LIBRARY = __name__  # the [library, class] that model_index.json names for kinema's components


def _component_config(path: str | os.PathLike) -> tuple[Path, dict]:
    """(the model folder, the component's config.json) for a component folder such as MODEL/transformer."""
    path = Path(path)
    config = path / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{config}: not found; run `kinema export diffusers {path.parent}` first")
    return path.parent, json.loads(config.read_text())


class KinemaTransformer(ModelMixin, ConfigMixin):
    """The denoiser (kinema's DiT, or its 3D U-Net baseline) as a diffusers model: `forward(hidden_states (B, C, F,
    H, W), timestep (B,) in [0, 1], encoder_hidden_states (B, L, D), encoder_attention_mask (B, L))` -> the velocity
    diffusers' FlowMatchEulerDiscreteScheduler integrates (an x0-predicting model's output is converted, as kinema's
    own sampler does)."""

    @register_to_config
    def __init__(self, kinema_file: str = "dit", prediction: str = "velocity"):
        super().__init__()
        self.model: torch.nn.Module | None = None
        self.objective = FlowObjective(prediction=prediction)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> KinemaTransformer:
        folder, config = _component_config(pretrained_model_name_or_path)
        out = cls(kinema_file=config.get("kinema_file", "dit"), prediction=config.get("prediction", "velocity"))
        out.model = load_backbone(folder)  # dit.safetensors, its SHA-256 checked
        return out.eval()

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(hidden_states, timestep, text=encoder_hidden_states, text_mask=encoder_attention_mask)
        return self.objective.velocity(out, hidden_states, timestep)


class KinemaVAE(ModelMixin, ConfigMixin):
    """kinema's video VAE: `encode(video (B, 3, F, H, W) in [-1, 1])` -> normalised latents, `decode` back."""

    @register_to_config
    def __init__(self, kinema_file: str = "vae"):
        super().__init__()
        self.model: VideoVAE | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> KinemaVAE:
        from kinema.io.weights import load_model

        folder, config = _component_config(pretrained_model_name_or_path)
        out = cls(kinema_file=config.get("kinema_file", "vae"))
        out.model = load_model(folder, out.config.kinema_file, VideoVAE, VAEConfig)
        return out.eval()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.model.encode(video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents)


class KinemaTextEncoder(ModelMixin, ConfigMixin):
    """kinema's text encoder (the packaged MiniLM by default): `forward(prompts)` -> (tokens (B, L, D), mask)."""

    @register_to_config
    def __init__(self, kinema_text_encoder: str = "minilm"):
        super().__init__()
        self.model = load_text_encoder(kinema_text_encoder)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> KinemaTextEncoder:
        _, config = _component_config(pretrained_model_name_or_path)
        return cls(kinema_text_encoder=config["kinema_text_encoder"]).eval()

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(prompts)


@dataclass
class KinemaPipelineOutput(BaseOutput):
    frames: np.ndarray  # (F, H, W, 3) uint8


class KinemaPipeline(DiffusionPipeline):
    """Text to video with a kinema model, as a diffusers pipeline; defaults (size, steps, guidance) come from the
    folder's model_index.json, as in `kinema generate`."""

    model_cpu_offload_seq = "text_model->transformer->vae"

    def __init__(self, transformer: KinemaTransformer, vae: KinemaVAE, text_model: KinemaTextEncoder,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, text_model=text_model, scheduler=scheduler)

    def _kinema(self) -> TextToVideoPipeline:
        """kinema's pipeline on the same modules: its checks and its prompt encoding."""
        index = read_model_index(self.config._name_or_path)
        return TextToVideoPipeline(self.transformer.model, self.vae.model, self.text_model.model,
                                   objective_from_dict(index.objective), index)

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str | None = None, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 output_type: str = "np") -> KinemaPipelineOutput:
        kinema = self._kinema()
        d = kinema.index
        frames, height, width = num_frames or d.frames, height or d.height, width or d.width
        steps = num_inference_steps or d.steps
        guidance = d.guidance if guidance_scale is None else guidance_scale
        kinema.check(prompt, frames, height, width, steps, guidance, None)

        (text, mask), (null_text, null_mask) = kinema.guidance_pair(prompt, negative_prompt)
        guided = classifier_free_guidance(self.transformer, {"encoder_hidden_states": text,
                                                             "encoder_attention_mask": mask},
                                          {"encoder_hidden_states": null_text, "encoder_attention_mask": null_mask},
                                          guidance, d.guidance_interval)
        shape = (1, *self.vae.model.cfg.latent_shape(frames, height, width))
        x = torch.randn(shape, generator=generator)
        # kinema's schedule: n equal steps from 1 to 0 (the scheduler applies the shift, as kinema's flow_sigmas do)
        self.scheduler.set_timesteps(sigmas=flow_sigmas(steps).tolist()[:-1])
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            sigma = self.scheduler.sigmas[i].expand(1)  # the model's time input: the noise level in [0, 1]
            x = self.scheduler.step(guided(x, sigma).float(), t, x).prev_sample
        video = self.vae.decode(x)
        return KinemaPipelineOutput(frames=to_frames(video[0].float()) if output_type == "np" else video)


# ---------------------------------------------------------------------------------------------------
# Export: the files diffusers reads, beside kinema's
# ---------------------------------------------------------------------------------------------------


def export_diffusers(folder: str | Path) -> list[Path]:
    """Add diffusers' model_index keys and the component folders to a kinema model folder; returns what it wrote."""
    from kinema.model_index import write_diffusers_keys

    folder = Path(folder)
    index = read_model_index(folder)
    if index.objective.get("kind") != "flow":
        raise ValueError(f"{folder}/model_index.json: objective {index.objective.get('kind')!r}; the diffusers "
                         f"export supports flow-matching models (FlowMatchEulerDiscreteScheduler)")
    objective = objective_from_dict(index.objective)
    written = []
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=objective.shift).save_config(folder / "scheduler")
    written.append(folder / "scheduler" / "scheduler_config.json")
    components = {"transformer": (KinemaTransformer, {"kinema_file": "dit", "prediction": objective.prediction}),
                  "vae": (KinemaVAE, {"kinema_file": "vae"}),
                  "text_model": (KinemaTextEncoder, {"kinema_text_encoder": index.text_encoder})}
    for name, (cls, config) in components.items():
        path = folder / name / "config.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"_class_name": cls.__name__, "_diffusers_version": diffusers_version, **config},
                                   indent=2) + "\n")
        written.append(path)
    entries = {"_class_name": KinemaPipeline.__name__, "_diffusers_version": diffusers_version,
               **{name: [LIBRARY, cls.__name__] for name, (cls, _) in components.items()},
               "scheduler": ["diffusers", FlowMatchEulerDiscreteScheduler.__name__]}
    written.append(write_diffusers_keys(folder, entries))
    return written
