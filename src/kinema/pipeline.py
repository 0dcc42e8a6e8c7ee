"""Text-to-video: prompt (+ optional frames) -> uint8 video, from a model folder alone.

    pipe = TextToVideoPipeline.from_pretrained("models/shapes-64")
    frames = pipe("a large red circle moving quickly to the left", seed=0)   # (F, H, W, 3) uint8

A model folder holds model_index.json (objective, text encoder, default size/steps/guidance),
dit.safetensors + dit.json and vae.safetensors + vae.json. The steps of `__call__` are numbered below.
Conditioning on frames (image-to-video, extension, connecting, editing) goes through the same call.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kinema.data.captions import ParsedObject, parse_caption
from kinema.data.world import pixel_velocity
from kinema.diffusion.fit import denoising_error
from kinema.diffusion.objectives import Objective, keep_given, objective_from_dict
from kinema.diffusion.samplers import classifier_free_guidance, noise_to, sample, samplers_for
from kinema.dit.attention_guidance import (
    ObjectMotion,
    attention_corrector,
    check_attention_guidance,
    has_cross_attention,
    watch_flaws,
)
from kinema.dit.model import DiT, DiTConfig
from kinema.io.video import to_frames, to_tensor
from kinema.io.weights import WeightsError, load_model, load_weights, weights_sha256
from kinema.layers.lora import add_lora, lora_state_dict, set_scale
from kinema.model_index import ModelIndex, model_index_for, read_model_index
from kinema.precision import autocast, use_bf16
from kinema.text.encoder import CLAUSES, TextEncoder, clause_token_positions, load_text_encoder, split_clauses
from kinema.vae.model import VAEConfig, VideoVAE

MAX_PROMPT_CHARS = 1000
MAX_CANDIDATES = 16  # starting noises one call may sample side by side (`candidates`)


@dataclass
class FrameCondition:
    """Known pixel frames and where they go: `video` (F, H, W, 3) uint8 at frame indices `at`
    (indices into the output clip). For editing, `strength` in [0, 1] says how much to change."""

    video: np.ndarray
    at: list[int]
    strength: float | None = None  # set: SDEdit editing of the whole clip instead of conditioning


def load_backbone(folder: str | Path) -> torch.nn.Module:
    """The denoiser in `folder/dit.*`: the DiT, or the 3D U-Net baseline when its config says backbone "unet"."""
    cfg = json.loads((Path(folder) / "dit.json").read_text()) if (Path(folder) / "dit.json").exists() else {}
    if cfg.get("backbone") == "unet":
        from kinema.unet.model import UNet3D, UNetConfig

        return load_model(folder, "dit", UNet3D, UNetConfig)
    return load_model(folder, "dit", DiT, DiTConfig)


class TextToVideoPipeline:
    def __init__(self, dit: DiT, vae: VideoVAE, text_encoder: TextEncoder, objective: Objective,
                 index: ModelIndex):
        self.dit, self.vae, self.text_encoder, self.objective = dit.eval(), vae.eval(), text_encoder, objective
        self.index = index  # the folder's model_index.json: default size, steps, guidance, fps, sampler
        if index.objective["kind"] != objective.kind:  # the index's default sampler is for its own objective
            raise ValueError(f"objective {objective.kind!r} differs from the model index's {index.objective['kind']!r}")
        self.device = torch.device("cpu")
        # the DiT and VAE run under bf16 autocast where the hardware is fast at it ("auto": GPUs, CPUs with AMX,
        # measured ~1.4x DiT and ~6x VAE decode there; elsewhere float32, since emulated bf16 is far slower); the
        # samplers' state stays float32. True or False forces it.
        self.bf16: bool | str = "auto"
        # frame conditioning: which latent frames count as given ("any" / "all" of their pixel frames given),
        # and whether the given pixel frames are put back into the output exactly (the decoder draws them
        # approximately: it is causal, and the frames before them are generated)
        self.partial_frames = "any"
        self.paste_given = True
        # whether the given latent frames enter every sampling step clean, as models trained with clean given
        # frames saw them (the default since issue 23's fix); a model trained with them noised (the index says
        # given_frames "noised") is sampled the way it learned
        self.given_clean = index.given_frames == "clean"

    def _autocast(self):
        return autocast(self.device, use_bf16(self.bf16, self.device))

    # -----------------------------------------------------------------------------------------------
    # Loading
    # -----------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path, lora: str | Path | None = None,
                        lora_scale: float = 1.0) -> TextToVideoPipeline:
        """A model folder; with `lora`, a LoRA adapter folder (`kinema dit finetune`) added at `lora_scale`."""
        index = read_model_index(folder)
        dit = load_backbone(folder)
        if lora is not None:
            load_adapter(dit, lora, lora_scale, folder)
        vae = load_model(folder, "vae", VideoVAE, VAEConfig)
        return cls(dit, vae, load_text_encoder(index.text_encoder), objective_from_dict(index.objective), index)

    @classmethod
    def from_parts(cls, dit: DiT, vae_dir: str | Path, objective: Objective, latent_meta: dict,
                   latent_grid: tuple[int, int, int] = (5, 8, 8)) -> TextToVideoPipeline:
        """During training: the model in memory, the VAE from its folder; clips default to the size whose latent
        has `latent_grid` (F, H, W): the training data's."""
        vae = load_model(vae_dir, "vae", VideoVAE, VAEConfig)
        index = model_index_for(objective, latent_meta.get("text_encoder"), vae.cfg, latent_grid)
        return cls(dit, vae, load_text_encoder(index.text_encoder), objective, index)

    def to(self, device: str | torch.device) -> TextToVideoPipeline:
        self.device = torch.device(device)
        for module in (self.dit, self.vae, self.text_encoder):
            module.to(self.device)
        return self

    # -----------------------------------------------------------------------------------------------
    # Checks
    # -----------------------------------------------------------------------------------------------

    def sampler_for(self, sampler: str | None = None) -> str:
        """The sampler a call samples with: the one named, else the model folder's, else its objective's first."""
        return sampler or self.index.default_sampler

    def check(self, prompt: str, frames: int, height: int, width: int, steps: int, guidance: float,
              sampler: str | None, candidates: int = 1) -> None:
        """Clear errors for arguments the model cannot take."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        _, f, h, w = self.vae.cfg.latent_shape(frames, height, width)  # the VAE's own errors
        pt, ph, pw = self.dit.cfg.patch
        if h % ph or w % pw:
            s = self.vae.cfg.spatial_compression
            raise ValueError(f"height and width must be positive multiples of {s * max(ph, pw)} (VAE x{s} times "
                             f"patch {max(ph, pw)}), got {height}x{width}")
        if f % pt:
            raise ValueError(f"latent frames {f} not divisible by the temporal patch {pt}")
        if sampler is not None and sampler not in samplers_for(self.objective.kind):
            raise ValueError(f"sampler {sampler!r} does not fit this {self.objective.kind} model; "
                             f"expected one of {samplers_for(self.objective.kind)}")
        if not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES:
            raise ValueError(f"candidates must be an integer in [1, {MAX_CANDIDATES}], got {candidates!r}")

    # -----------------------------------------------------------------------------------------------
    # Generation
    # -----------------------------------------------------------------------------------------------

    def check_attention_guidance(self, value) -> tuple[float, float, float]:
        """(strength, until, motion), or a clear error where the model cannot take attention guidance."""
        strength, until, motion = check_attention_guidance(value)
        if strength and not has_cross_attention(self.dit):
            raise ValueError("attention guidance reads the DiT's cross-attention; this model has none (joint "
                             "attention); use strength 0")
        if strength and not self.index.text_encoder.endswith(CLAUSES):
            raise ValueError(f"attention guidance needs one clause token per object; this model's text encoder "
                             f"{self.index.text_encoder!r} has none (a '{CLAUSES}' encoder has); use strength 0")
        return strength, until, motion

    def object_clause_tokens(self, prompt: str, text_mask: torch.Tensor) -> list[int]:
        """The positions of the prompt's clause tokens that name one object each (data.captions.parse_caption):
        what attention guidance steers; the background clause and clauses naming no object are left out."""
        return [position for position, _ in self.object_clauses(prompt, text_mask)]

    def object_clauses(self, prompt: str, text_mask: torch.Tensor) -> list[tuple[int, ParsedObject]]:
        """(clause token position, the object it names) for each clause of the prompt that names one object."""
        clauses = split_clauses(prompt)
        positions = clause_token_positions(text_mask[0], len(clauses))
        named = [(p, parse_caption(c).objects) for p, c in zip(positions, clauses if positions else [], strict=True)]
        return [(p, objects[0]) for p, objects in named if len(objects) == 1]

    def object_motion(self, obj: ParsedObject, height: int) -> ObjectMotion | None:
        """What attention guidance's motion term asks of an object: its prompted direction at the world's speed
        (data.world.pixel_velocity; 'slowly' where the prompt names no speed) in DiT tokens per pixel frame; None where
        the prompt says nothing of its motion."""
        if obj.motion is None:
            return None
        vx, vy = pixel_velocity(obj.motion, obj.speed or "slowly", height)  # pixels per pixel frame
        _, ph, pw = self.dit.cfg.patch
        s = self.vae.cfg.spatial_compression
        return ObjectMotion((vy / (s * ph), vx / (s * pw)))

    def _first_frames(self, z: torch.Tensor) -> np.ndarray:
        """The first latent of a batch decoded to uint8 (F, H, W, 3)."""
        return to_frames(self.vae.decode(z)[0].float())

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        text, mask = self.text_encoder(prompts)
        return text.float().to(self.device), mask.to(self.device)

    def guidance_pair(self, prompt: str, negative_prompt: str | None = None):
        """((text, mask), (null text, null mask)): the prompt, and what guidance pushes away from: the negative
        prompt, or the empty caption (one zero token, masked) that training's caption dropout taught."""
        text, mask = self.encode_prompt([prompt])
        if negative_prompt:
            return (text, mask), self.encode_prompt([negative_prompt])
        return (text, mask), (torch.zeros_like(text[:, :1]), torch.zeros_like(mask[:, :1]))

    def _frame_condition(self, cond: FrameCondition, frames: int, height: int, width: int):
        """Pixel frames -> (latent cond, latent mask) on the output's latent grid."""
        video = np.zeros((frames, height, width, 3), dtype=np.uint8)
        given = np.zeros(frames, dtype=bool)
        for src, dst in enumerate(cond.at):
            if not 0 <= dst < frames:
                raise ValueError(f"conditioning frame index {dst} is outside the clip of {frames} frames")
            video[dst] = fit_frame(cond.video[src], height, width)
            given[dst] = True
        # frames not given are filled with the nearest given one: the causal encoder's latents of later given
        # frames depend on the frames before them, and a still history is closer to the truth than black
        known = np.flatnonzero(given)
        if len(known):
            nearest = known[np.abs(np.arange(frames)[:, None] - known[None]).argmin(1)]
            video = video[nearest]
        latents = self.vae.encode(to_tensor(video)[None].to(self.device)).float()  # (1, C, f, h, w)
        # a latent frame is given when a pixel frame it covers is (frame 0 alone; then groups of t): its other
        # frames hold the nearest given one, so a lone end frame (--connect, the end of --extend-backward) is
        # conditioned on too instead of left to the model. `partial_frames = "all"` is the stricter rule (only
        # latent frames whose every pixel frame is given), which left such ends 30-50/255 off.
        rule = all if self.partial_frames == "all" else any
        latent_given = torch.tensor([bool(rule(given[g])) for g in self.vae.cfg.frame_groups(frames)],
                                    dtype=torch.float32, device=self.device)
        mask = latent_given.view(1, 1, -1, 1, 1).expand(1, 1, *latents.shape[2:])
        return latents, mask

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        sampler: str | None = None,
        guidance_interval: tuple[float, float] | None = None,
        attention_guidance: float | tuple[float, ...] | None = None,
        candidates: int | None = None,
        condition: FrameCondition | None = None,
        callback: Callable[[int, np.ndarray], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        callback_every: int = 1,
        decoded: list | None = None,
    ) -> np.ndarray:
        """`callback(i, frames)` sees every `callback_every`-th intermediate state decoded to pixels (each
        decode costs a VAE pass; with several candidates, the kept one's states, after the last step);
        `progress(i, steps)` is only told the step. A `decoded` list receives the
        frames as the VAE drew them, before given frames are put back (to measure conditioning fidelity).
        `attention_guidance` (strength, until[, motion]), or a strength alone: dit/attention_guidance.py (None: the
        model folder's, else off). `candidates` K > 1 samples K starting noises side by side (one batch) and keeps
        the clip the conditional model denoises best (diffusion/fit.py), at about 1.6x (K = 2) the time of one on
        a CPU (None: the model folder's, else 1)."""
        d = self.index
        frames, height, width = frames or d.frames, height or d.height, width or d.width
        steps = d.steps if steps is None else steps
        guidance = d.guidance if guidance is None else guidance
        sampler = self.sampler_for(sampler)
        guidance_interval = guidance_interval or d.guidance_interval
        candidates = d.candidates if candidates is None else candidates
        self.check(prompt, frames, height, width, steps, guidance, sampler, candidates)
        strength, until, motion = self.check_attention_guidance(
            attention_guidance if attention_guidance is not None else d.attention_guidance or 0.0)

        # 1. encode the prompt (and the negative prompt, or the empty caption, for guidance)
        (text, mask), (null_text, null_mask) = self.guidance_pair(prompt, negative_prompt)

        with self._autocast():  # steps 2-5 in bf16 where it is faster (see __init__)
            # 2. prepare latents: seeded noise on the latent grid (K candidates: K noises), and any given frames
            shape = (candidates, *self.vae.cfg.latent_shape(frames, height, width))
            generator = torch.Generator(device=self.device).manual_seed(seed)
            x = torch.randn(shape, generator=generator, device=self.device)
            kwargs, start = {}, 0
            if condition is not None and condition.strength is None:
                cond, cond_mask = self._frame_condition(condition, frames, height, width)
                kwargs = {"cond": cond, "cond_mask": cond_mask}
            elif condition is not None:
                start = _edit_start(condition.strength, steps)
                clip = to_tensor(_fit_clip(condition.video, frames, height, width))[None].to(self.device)
                source = self.vae.encode(clip).float()
                x = noise_to(self.objective, source, x, steps, start)

            # 3. denoise with classifier-free guidance; the prompt and any given frames (batch 1) are repeated
            # for the K candidates
            fn = classifier_free_guidance(self.dit, _batched({"text": text, "text_mask": mask, **kwargs}, candidates),
                                          _batched({"text": null_text, "text_mask": null_mask, **kwargs}, candidates),
                                          guidance, guidance_interval)
            if "cond" in kwargs and self.given_clean:  # the given frames enter every step clean, as in training
                guided = fn
                fn = lambda x, t: guided(keep_given(x, kwargs["cond"], kwargs["cond_mask"]), t)  # noqa: E731

            def conditional(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                """The model conditioned on the prompt alone, for a batch of any size (K candidates while steering,
                K x noises while judging them)."""
                if "cond" in kwargs and self.given_clean:
                    z = keep_given(z, kwargs["cond"], kwargs["cond_mask"])
                return self.dit(z, t, **_batched({"text": text, "text_mask": mask, **kwargs}, z.shape[0]))

            correct, clauses, motions, frame_times = None, [], [], []
            if strength:  # steer the early steps by the conditional model's cross-attention to each object
                clauses = self.object_clauses(prompt, mask)
                if not clauses:
                    warnings.warn(f"attention guidance: no clause of {prompt!r} names one object the caption parser "
                                  "knows (shapes-world words); sampling without it", stacklevel=2)
                frame_times = [sum(g) / len(g) for g in self.vae.cfg.frame_groups(frames)]  # latent frame centres
                motions = [self.object_motion(o, height) for _, o in clauses]
                correct = attention_corrector(self.dit, conditional, [p for p, _ in clauses], strength, until,
                                              motions, frame_times, motion)

            states: list[tuple[int, torch.Tensor]] = []  # K > 1: the states the callback will see, once judged

            def trace(i: int, z: torch.Tensor) -> None:
                if progress:
                    progress(i, steps)
                if callback and i % callback_every == 0:
                    if candidates > 1:
                        states.append((i, z.clone()))
                    else:
                        callback(i, self._first_frames(z))

            x = sample(self.objective, fn, x, steps, sampler, generator, start, trace, correct)
            if candidates > 1:  # keep the candidate whose latent the prompt explains best (diffusion/fit.py)
                judge = torch.Generator(device=self.device).manual_seed(seed)
                # where the clause tokens are grounded (attention guidance on), the judge's pass at noise level 0.5
                # also shows an object drawn nowhere or moving against its prompted direction; such candidates rank
                # last (the error alone prefers a missing object: less to explain; it does not see directions)
                judged, flaws_in = watch_flaws(self.dit, conditional, [p for p, _ in clauses], motions, frame_times)
                errors = denoising_error(self.objective, judged, x, judge)
                best = int((errors + 1e3 * flaws_in(candidates).to(errors)).argmin())
                x = x[best:best + 1]
                for i, z in states:  # the kept candidate's own path
                    callback(i, self._first_frames(z[best:best + 1]))
            if "cond" in kwargs:  # given frames are kept exactly as given (their latents), not as re-generated
                x = kwargs["cond_mask"] * kwargs["cond"] + (1 - kwargs["cond_mask"]) * x

            # 4. decode to pixels, 5. postprocess to uint8 (F, H, W, 3)
            video = self._first_frames(x)
        if decoded is not None:
            decoded.append(video.copy())
        if condition is not None and condition.strength is None and self.paste_given:
            for src, dst in enumerate(condition.at):  # the given frames, exactly as given
                video[dst] = fit_frame(condition.video[src], height, width)
        return video


def _batched(kwargs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The model's batch-1 keyword tensors repeated (as views) for a batch of n."""
    return {k: v.expand(n, *v.shape[1:]) for k, v in kwargs.items()}


def _edit_start(strength: float, steps: int) -> int:
    """SDEdit: strength 1 starts from pure noise (step 0), strength 0 returns the input (start = steps)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"edit strength must be in [0, 1], got {strength}")
    return round((1.0 - strength) * steps)


def fit_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))


def _fit_clip(video: np.ndarray, frames: int, height: int, width: int) -> np.ndarray:
    """Resize a clip's frames and take/pad (repeat last) to `frames` frames."""
    idx = [min(i, len(video) - 1) for i in range(frames)]
    return np.stack([fit_frame(video[i], height, width) for i in idx])


def load_adapter(model: nn.Module, folder: str | Path, scale: float = 1.0, base: str | Path | None = None) -> dict:
    """Add the LoRA adapter in `folder` (adapter.safetensors + adapter.json) to `model`; returns its meta. With
    `base` (the model folder `model` came from), an adapter trained on other weights is refused: their content
    hashes differ."""
    state, meta = load_weights(folder, "adapter")
    want = meta.get("base_dit_sha256")
    if base is not None and want and weights_sha256(base, "dit") != want:
        raise ValueError(f"{folder}/adapter.json: trained on {meta.get('base_model')}, whose DiT weights differ from "
                         f"{base}'s; an adapter only fits the weights it was trained on")
    add_lora(model, meta["rank"], meta["alpha"], tuple(meta["targets"]))
    expected = set(lora_state_dict(model.state_dict()))
    if expected != set(state):
        raise WeightsError(f"{folder}/adapter.safetensors does not fit this model: missing "
                           f"{sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]}")
    model.load_state_dict(state, strict=False)
    set_scale(model, scale)
    return meta
