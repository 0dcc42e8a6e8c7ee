"""Training task for the DiT: cached latents + text embeddings, caption-level mix, caption dropout (for
classifier-free guidance) and random frame masks (so one model also does image-to-video, extension,
connecting and editing). Exports a complete model folder that `TextToVideoPipeline` loads."""

from __future__ import annotations

import dataclasses
import random
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from kinema.config import from_dict, to_dict
from kinema.data.buckets import batch_indices, bucket_batch_indices
from kinema.data.latents import LatentDataset
from kinema.diffusion.objectives import LossWeight, Objective, latent_foreground_weight
from kinema.dit.model import DiT, DiTConfig, deepen_state, deeper_block_sources, finer_position_scale, repatch_state
from kinema.io.weights import load_config, load_weights, save_weights
from kinema.layers.attention import kept_cross_attention
from kinema.model_index import model_index_for, write_model_index
from kinema.text.encoder import CLAUSES
from kinema.train.distributed import DistInfo
from kinema.train.grounding import GroundingTargets, grounding_loss
from kinema.vae.model import VAEConfig

SAMPLE_PROMPTS = [
    "a large red circle moving quickly to the left",
    "a small yellow triangle moving slowly up",
    "a large blue square staying still on a black background",
    "a green diamond moving right and a white circle moving down",
]


def frame_mask(kind: str, frames: int, rng: random.Random) -> torch.Tensor:
    """(F,) 0/1 mask of the latent frames given as conditioning, for one conditioning task."""
    mask = torch.zeros(frames)
    k = rng.randint(1, max(1, frames - 1))
    if kind == "first":  # image-to-video
        mask[0] = 1
    elif kind == "prefix":  # extend forward
        mask[:k] = 1
    elif kind == "suffix":  # extend backward
        mask[frames - k:] = 1
    elif kind == "ends":  # connect two clips
        mask[0] = mask[-1] = 1
    return mask


def sample_rng(seed: int, micro_batch: int, index: int) -> random.Random:
    """The generator of one sample's draws (caption level, dropout, frame mask): a distinct stream for every
    (seed, global micro-batch, clip), since a string seed is hashed whole (an arithmetic mix such as
    seed * 1_000_003 + step * 997 + index repeats draws across steps once a dataset has over 997 clips).
    `micro_batch` is the global micro-batch number (step * grad_accum + micro) * world_size + rank, as for the
    noise (train.loop.step_generator): 1 process with gradient accumulation N and N processes draw the same."""
    return random.Random(f"{seed}/{micro_batch}/{index}")


@torch.no_grad()
def load_widened(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load `state` into `model`, where a weight may have a wider input than stored (e.g. richer text
    features): the stored columns go last and the new ones start at zero, so the loaded model computes
    exactly what the stored one did and training learns to use the new inputs."""
    own = model.state_dict()
    if set(own) != set(state):
        raise ValueError(f"{where}: parameter names differ from this model's: missing "
                         f"{sorted(set(own) - set(state))[:3]}, unexpected {sorted(set(state) - set(own))[:3]}")
    for name, target in own.items():
        src = state[name].to(target.dtype)
        if src.shape == target.shape:
            target.copy_(src)
        elif src.ndim == 2 and src.shape[0] == target.shape[0] and src.shape[1] < target.shape[1]:
            target.zero_()[:, -src.shape[1]:] = src
        else:
            raise ValueError(f"{where}: {name} has shape {tuple(src.shape)}, this model needs {tuple(target.shape)} "
                             "(only a wider input can be padded)")


@dataclass
class DiTTask:
    data: LatentDataset
    model_cfg: DiTConfig  # or a UNetConfig: the same task trains the U-Net baseline
    objective: Objective
    batch_size: int
    grad_accum: int = 1
    seed: int = 0
    caption_mix: dict[str, float] = field(default_factory=lambda: {"detailed": 0.5, "medium": 0.4, "short": 0.1})
    clip_levels: list[str] | None = None  # a fixed caption level per clip (overrides caption_mix), e.g. ablations
    train_indices: list[int] | None = None  # train on these clips only (default: all), e.g. to hold some out
    caption_dropout: float = 0.1
    cond_prob: float = 0.3  # share of samples trained with some frames given
    foreground_weight: float = 0.0  # extra loss weight on object positions (latent_foreground_weight); 0: none
    foreground_of: str = "clip"  # whose objects: "clip" (the clip's), or "either" (also where the model drew one)
    # the step from which foreground_weight counts (0: every step): e.g. once layout and motion are learned
    # (docs/experiments/learning-efficiency.md, session 45: from the hour's middle +6.5 points on one latent, -1 on
    # another; from its start -2; session 48: +4 on a third, the hour's default since)
    foreground_from: int = 0
    # or a share of the run's steps (0 < share < 1; the loop tells the task its length, sized by a --minutes budget
    # too): the hour's recipe, whose step count is not known before its warmup ends (session 48)
    foreground_from_share: float = 0.0
    # the flow objective's logit-normal noise centre from the step the foreground weight starts (None: unchanged):
    # high noise first for layout and motion, then lower noise for the objects' shapes
    late_logit_mean: float | None = None
    # weight of the cross-attention grounding loss (train.grounding: each object's clause token read where that
    # object is; needs clause tokens and a shapes-world source with scenes); 0: none
    grounding_weight: float = 0.0
    vae_dir: Path | None = None  # for decoding samples and for the exported model folder
    sample_prompts: list[str] = field(default_factory=lambda: list(SAMPLE_PROMPTS))
    sample_steps: int = 30
    init_from: Path | None = None  # a model folder whose DiT weights start the run (before any checkpoint)
    name: str = "dit"

    def __post_init__(self) -> None:
        if self.foreground_from < 0:
            raise ValueError(f"foreground_from: {self.foreground_from}; expected a step >= 0")
        if self.foreground_from and not self.foreground_weight:
            raise ValueError(f"foreground_from: {self.foreground_from} with no foreground_weight; the step says when "
                             f"the weight starts (e.g. `--foreground-weight 4 --foreground-from 3000`)")
        if not 0 <= self.foreground_from_share < 1:
            raise ValueError(f"foreground_from_share: {self.foreground_from_share}; expected a share 0 <= s < 1")
        if self.foreground_from_share and (self.foreground_from or not self.foreground_weight):
            raise ValueError(f"foreground_from_share: {self.foreground_from_share} needs a foreground_weight and no "
                             f"foreground_from step (e.g. `--foreground-weight 4 --foreground-from 45%`)")
        if self.late_logit_mean is not None and not (self.foreground_from or self.foreground_from_share):
            raise ValueError(f"late_logit_mean: {self.late_logit_mean} needs the step it starts from, "
                             f"--foreground-from (e.g. `--foreground-weight 4 --foreground-from 45%`)")
        if self.late_logit_mean is not None and not hasattr(self.objective, "logit_mean"):
            raise ValueError("late_logit_mean: sets the flow objective's noise centre; this objective has none")
        self._run_steps: int | None = None  # the run's length, once the loop knows it (set_run_steps)
        if self.foreground_of not in ("clip", "either"):
            raise ValueError(f"foreground_of: {self.foreground_of!r}; expected 'clip' or 'either'")
        if self.grounding_weight and getattr(self.model_cfg, "joint_attention", True):
            raise ValueError("grounding_weight: the grounding loss reads cross-attention; this model has none "
                             "(joint attention, or not a DiT)")
        if self.grounding_weight and not str(self.data.meta.get("text_encoder", "")).endswith(CLAUSES):
            raise ValueError(f"grounding_weight: {self.data.root} was encoded with "
                             f"{self.data.meta.get('text_encoder')!r}; grounding needs one clause token per object "
                             f"(a text encoder named '...{CLAUSES}', e.g. `kinema vae encode --text-encoder "
                             f"minilm:0,6{CLAUSES}`)")
        stored = self.init_config
        if stored is not None and stored.patch != self.model_cfg.patch:  # continued on finer patches
            scale = finer_position_scale(stored, self.model_cfg.patch)  # raises unless it divides
            self.model_cfg = dataclasses.replace(self.model_cfg, position_scale=scale)
        if stored is not None and stored.depth != self.model_cfg.depth:  # continued with more blocks
            try:
                deeper_block_sources(stored.depth, self.model_cfg.depth)
            except ValueError as e:
                raise ValueError(f"{self.init_from}/dit.json: {e}") from e
        text_dim = self.data.meta.get("text_dim")
        if text_dim and text_dim != self.model_cfg.text_dim:  # the text width is the cache's text encoder's
            self.model_cfg = dataclasses.replace(self.model_cfg, text_dim=text_dim)

    @cached_property
    def init_config(self) -> DiTConfig | None:
        """The init_from model's config (None without one): where its patch or depth is not this run's,
        `build_model` converts its weights (`repatch_state` for a finer patch, then `deepen_state` for more blocks)."""
        if self.init_from is None or not isinstance(self.model_cfg, DiTConfig):
            return None
        return from_dict(DiTConfig, load_config(self.init_from, "dit"), where=f"{self.init_from}/dit.json")

    def build_model(self) -> nn.Module:
        if getattr(self.model_cfg, "backbone", "dit") == "unet":  # the 3D U-Net baseline (scaling study)
            from kinema.unet.model import UNet3D

            return UNet3D(self.model_cfg)
        model = DiT(self.model_cfg)
        if self.init_from is not None:
            state, _ = load_weights(self.init_from, "dit")
            stored = self.init_config
            if stored is not None and stored.patch != self.model_cfg.patch:
                state = repatch_state(state, stored, self.model_cfg)
            if stored is not None and stored.depth != self.model_cfg.depth:
                state = deepen_state(state, stored, self.model_cfg.depth)
            load_widened(model, state, where=f"{self.init_from}/dit.safetensors")
        return model

    def model_config(self) -> dict:
        objective = to_dict(self.objective)
        if not objective.get("input_perturbation"):  # unset: not part of the run's identity (older runs resume)
            objective.pop("input_perturbation", None)
        config = {"dit": to_dict(self.model_cfg), "objective": objective}
        if self.grounding_weight:  # written only when set, as foreground_weight below (older runs resume)
            config["grounding_weight"] = self.grounding_weight
        if self.foreground_weight:  # written only when set, so runs saved before it existed still resume
            config["foreground_weight"] = self.foreground_weight
            if self.foreground_of != "clip":
                config["foreground_of"] = self.foreground_of
            if self.foreground_from:
                config["foreground_from"] = self.foreground_from
            if self.foreground_from_share:
                config["foreground_from_share"] = self.foreground_from_share
        if self.late_logit_mean is not None:
            config["late_logit_mean"] = self.late_logit_mean
        return config

    def set_run_steps(self, steps: int) -> None:
        """The loop's word of the run's length (train/loop.py): where a share of it starts the foreground weight."""
        self._run_steps = steps

    def _foreground_on(self, step: int) -> bool:
        if not self.foreground_weight:
            return False
        if self.foreground_from_share:  # off until the run's length is known (a --minutes budget: after warmup)
            return self._run_steps is not None and step >= round(self.foreground_from_share * self._run_steps)
        return step >= self.foreground_from

    def tokens_per_sample(self) -> int:
        c, f, h, w = self.data.latent_shape
        pt, ph, pw = self.model_cfg.patch
        return (f // pt) * (h // ph) * (w // pw)

    def _cond_mask(self, x0: torch.Tensor, rngs: list[random.Random]) -> torch.Tensor:
        """(B, 1, F, H, W) 1 where a latent frame is given (the clean x0 there is the conditioning)."""
        B, _, F, H, W = x0.shape
        masks = []
        for rng in rngs:
            kind = rng.choice(["first", "prefix", "suffix", "ends"]) if rng.random() < self.cond_prob else "none"
            masks.append(frame_mask(kind, F, rng))
        return torch.stack(masks).view(B, 1, F, 1, 1).expand(B, 1, F, H, W).to(x0)

    def _indices(self, step: int, micro: int, info: DistInfo) -> list[int]:
        """One micro-batch of dataset indices; with several size buckets, all from one bucket."""
        pool = self.train_indices if self.train_indices is not None else range(len(self.data))
        buckets = self.data.buckets
        if len(buckets) == 1:
            return [pool[i] for i in batch_indices(len(pool), self.seed, step, micro, self.grad_accum, info.rank,
                                                   info.world_size, self.batch_size)]
        keep = set(pool)
        groups = [[i for i in buckets[b] if i in keep] for b in sorted(buckets)]
        number = (step * self.grad_accum + micro) * info.world_size + info.rank
        return bucket_batch_indices([g for g in groups if g], self.seed, number, self.batch_size)

    def _levels(self, idx: list[int], rngs: list[random.Random]) -> list[str]:
        if self.clip_levels is not None:
            return [self.clip_levels[i] for i in idx]
        mix = {lv: p for lv, p in self.caption_mix.items() if lv in self.data.text}
        mix = mix or {lv: 1.0 for lv in self.data.text}  # e.g. ingested videos: one caption level only
        return [rng.choices(list(mix), list(mix.values()))[0] for rng in rngs]

    def batch(self, step: int, micro: int, info: DistInfo) -> dict:
        idx = self._indices(step, micro, info)
        number = (step * self.grad_accum + micro) * info.world_size + info.rank
        rngs = [sample_rng(self.seed, number, i) for i in idx]
        levels = self._levels(idx, rngs)
        b = self.data.gather(idx, levels)
        keep = torch.tensor([rng.random() >= self.caption_dropout for rng in rngs])
        mask = b.mask & keep[:, None]  # a dropped caption: every token masked, the null token remains
        cond_mask = self._cond_mask(b.latents, rngs)
        to = info.device
        out = {"x0": b.latents.to(to), "text": (b.text * mask[..., None]).to(to), "text_mask": mask.to(to),
               "cond": b.latents.to(to), "cond_mask": cond_mask.to(to),
               "foreground": self._foreground_on(step)}
        if self.grounding_weight:
            owner, token_masks = self._grounding.batch(idx, b.captions, mask)
            out |= {"ground_owner": owner.to(to), "ground_masks": token_masks.to(to)}
        return out

    @cached_property
    def _late_objective(self) -> Objective:
        """The objective of the steps the foreground weight is on: its noise centre moved to late_logit_mean."""
        if self.late_logit_mean is None:
            return self.objective
        return dataclasses.replace(self.objective, logit_mean=self.late_logit_mean)

    @cached_property
    def _grounding(self) -> GroundingTargets:
        vae_cfg = from_dict(VAEConfig, self.data.meta["vae_config"], where="latent cache meta.json vae_config")
        frames = vae_cfg.pixel_frames(self.data.latent_shape[1])
        return GroundingTargets.from_dataset(self.data, vae_cfg.frame_groups(frames), vae_cfg.spatial_compression,
                                             self.model_cfg.patch)

    def loss(self, model: nn.Module, batch: dict, generator: torch.Generator):
        def flow_loss() -> torch.Tensor:
            weight = self._loss_weight(batch["x0"]) if batch["foreground"] else None
            objective = self._late_objective if batch["foreground"] else self.objective
            return objective.loss(model, batch["x0"], generator, weight,
                                  text=batch["text"], text_mask=batch["text_mask"], cond=batch["cond"],
                                  cond_mask=batch["cond_mask"])

        if not self.grounding_weight:
            return flow_loss(), {}
        with kept_cross_attention(model) as kept:
            loss = flow_loss()
        ground = grounding_loss(kept, batch["ground_owner"], batch["ground_masks"])
        return loss + self.grounding_weight * ground, {"flow_loss": loss.detach(), "grounding": ground.detach()}

    def _loss_weight(self, x0: torch.Tensor) -> LossWeight:
        """None (plain MSE), the clip's object positions weighted, or a function of the model's clean estimate that
        also weights the positions where it drew an object ("either")."""
        if not self.foreground_weight:
            return None
        if self.foreground_of == "clip":
            return latent_foreground_weight(x0, self.foreground_weight)
        return lambda estimate: latent_foreground_weight(x0, self.foreground_weight, estimate=estimate)

    @torch.no_grad()
    def samples(self, model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        """Videos for the sample prompts, as one contact sheet (needs the VAE)."""
        if self.vae_dir is None:
            return []
        from kinema.io.video import contact_sheet, save_image
        from kinema.pipeline import TextToVideoPipeline

        pipe = TextToVideoPipeline.from_parts(model, self.vae_dir, self.objective, self.data.meta,
                                              self.data.latent_shape[1:])
        clips = [pipe(p, steps=self.sample_steps, seed=i) for i, p in enumerate(self.sample_prompts)]
        return [save_image(out_dir / f"samples-{step:07d}.png", contact_sheet(clips, self.sample_prompts, scale=2))]

    def start(self, out_dir: Path) -> None:
        """The model folder's files besides the DiT weights (VAE, model_index.json), written before the first
        step, so `kinema dit export --run` turns any checkpoint of the run into a model folder while it trains."""
        folder = out_dir / "model"
        folder.mkdir(parents=True, exist_ok=True)
        if self.vae_dir is not None:
            for name in ("vae.safetensors", "vae.json"):
                shutil.copyfile(Path(self.vae_dir) / name, folder / name)
        vae_cfg = from_dict(VAEConfig, self.data.meta["vae_config"], where="latent cache meta.json vae_config")
        index = model_index_for(self.objective, self.data.meta.get("text_encoder"), vae_cfg,
                                self.data.latent_shape[1:], steps=self.sample_steps,
                                init_from=None if self.init_from is None else str(self.init_from))
        write_model_index(folder, index)

    def export(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> Path:
        """A model folder: dit.*, vae.* (copied) and model_index.json, loadable by TextToVideoPipeline."""
        self.start(out_dir)
        return save_weights(out_dir / "model", "dit", state_dict, to_dict(self.model_cfg))
