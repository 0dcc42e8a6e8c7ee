"""Training objectives. Each meets the model only through `model(x_t, t, **cond)` with t in [0, 1].

    EpsilonObjective  DDPM: predict the noise (or v = sqrt(a) eps - sqrt(1-a) x0), MSE
    FlowObjective     rectified flow: predict the velocity eps - x0 at s ~ logit-normal, MSE

Frame conditioning (image-to-video, extension): where `cond_mask` is 1 the latent frames are given. They
enter x_t clean (not noised) and are left out of the loss, as in Wan's and Open-Sora's I2V training: the model
is never asked to predict what it was given, and sampling keeps those frames clean at every step
(`keep_given`), so training and sampling see the same inputs.

A per-position loss weight (`loss_weight`, (B, 1, F, H, W)) reweights the mean; `latent_foreground_weight` makes
one that counts a clip's object positions (far from its background latent) more. `loss_weight` may also be a
function of the model's estimate of the clean latent (detached), for a weight that also counts the objects the model
drew where the clip has none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import torch

from kinema.diffusion.schedules import DDPMSchedule

Model = Callable[..., torch.Tensor]
# a (B, 1, F, H, W) weight, or a function of the model's clean-latent estimate (B, C, F, H, W) that gives one
LossWeight: TypeAlias = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=torch.float32).to(like.dtype)


def keep_given(x_t: torch.Tensor, cond: torch.Tensor | None, cond_mask: torch.Tensor | None) -> torch.Tensor:
    """x_t with the given latent frames (cond_mask 1, broadcast over channels) replaced by their clean values."""
    if cond is None or cond_mask is None:
        return x_t
    return torch.lerp(x_t, cond.to(x_t.dtype), cond_mask.to(x_t.dtype))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, cond_mask: torch.Tensor | None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the elements that were not given (all of them without a mask); with `weight`
    ((B, 1, F, H, W), broadcast over channels) a weighted mean over those elements."""
    err = (pred.float() - target.float()).pow(2)  # (B, C, F, H, W)
    if cond_mask is None and weight is None:
        return err.mean()
    w = None if cond_mask is None else 1 - cond_mask.float()  # (B, 1, F, H, W): 0 where a frame is given
    if weight is not None:
        w = weight.float() if w is None else w * weight.float()
    w = w.expand_as(err)
    return (err * w).sum() / w.sum().clamp(min=1.0)


def latent_foreground_weight(x0: torch.Tensor, weight: float, threshold: float = 0.5,
                             estimate: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, F, H, W) normalised latents -> (B, 1, F, H, W): 1 + weight where a position's latent is further than
    `threshold` (RMS over channels) from the clip's per-channel median latent, 1 elsewhere. On a flat background the
    median is the background's latent and the far positions are the objects' (on the s4c8 shapes latent about 10% of
    them at 0.5; the median distance is 0.08), which plain MSE weighs by their small share of the clip.

    With `estimate` (the model's clean latent, same shape) also where the estimate is far from the clip's background:
    weighting the clip's objects alone makes a missing object cost `weight + 1` times an extra one, so a model unsure
    of the count learns to draw copies; counting both makes either mistake cost the same."""
    median = x0.float().flatten(2).median(dim=2).values[..., None, None, None]  # (B, C, 1, 1, 1)

    def far(x: torch.Tensor) -> torch.Tensor:  # (B, 1, F, H, W)
        return (x.float() - median).pow(2).mean(dim=1, keepdim=True).sqrt() > threshold

    fg = far(x0) if estimate is None else far(x0) | far(estimate)
    return 1.0 + weight * fg.float()


def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) to broadcast over x."""
    return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class EpsilonObjective:
    schedule: DDPMSchedule = DDPMSchedule()
    prediction: str = "epsilon"  # epsilon | v
    kind: str = "ddpm"

    def __post_init__(self) -> None:
        if self.prediction not in ("epsilon", "v"):
            raise ValueError(f"prediction must be 'epsilon' or 'v', got {self.prediction!r}")

    def _alpha_bar(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps -> the cumulative alpha at each, shaped to broadcast over `like`."""
        return _expand(self.schedule.alphas_cumprod().to(like.device)[timesteps], like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        a = self._alpha_bar(timesteps, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction == "epsilon":
            return noise
        a = self._alpha_bar(timesteps, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def sample_timesteps(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        return torch.randint(0, self.schedule.num_train_timesteps, (n,), generator=generator, device=device)

    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator | None = None,
             loss_weight: LossWeight = None, **cond) -> torch.Tensor:
        timesteps = self.sample_timesteps(x0.shape[0], generator, x0.device)
        noise = _randn(x0, generator)
        x_t = keep_given(self.add_noise(x0, noise, timesteps), cond.get("cond"), cond.get("cond_mask"))
        pred = model(x_t, self.schedule.model_time(timesteps), **cond)
        if callable(loss_weight):
            loss_weight = loss_weight(self.clean_estimate(pred.detach(), x_t, timesteps))
        return masked_mse(pred, self.target(x0, noise, timesteps), cond.get("cond_mask"), loss_weight)

    def clean_estimate(self, pred: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The x0 the network's output implies (from noise or v); unstable at the noisiest steps, as x0 is there."""
        a = self._alpha_bar(timesteps, x_t)
        if self.prediction == "epsilon":
            return (x_t - (1 - a).sqrt() * pred) / a.sqrt()
        return a.sqrt() * x_t - (1 - a).sqrt() * pred


X0_MIN_SIGMA = 0.05  # x0 prediction: the smallest sigma the velocity divides by (JiT clips 1 - t at 0.05 too)


@dataclass(frozen=True)
class FlowObjective:
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # sampling-time shift of the sigma schedule (SD3)
    # what the network outputs: "velocity" (noise - x0), or "x0", the clean latent, turned into a velocity for the
    # loss and the sampler (JiT, Li & He 2025: high-dimensional tokens are easier to denoise than to predict noise for)
    prediction: str = "velocity"
    # training only: the network's input gets gamma * sigma more noise than its level says while the target stays
    # the path's own (DDPM-IP, Ning et al. 2023): it learns to denoise states a little off the path, as a sampler's
    # own states are after imperfect steps (exposure bias). Typical gamma 0.1; 0 is off
    input_perturbation: float = 0.0
    kind: str = "flow"

    def __post_init__(self) -> None:
        if self.prediction not in ("velocity", "x0"):
            raise ValueError(f"FlowObjective.prediction: {self.prediction!r}; expected 'velocity' or 'x0'")
        if not 0 <= self.input_perturbation < 1:
            raise ValueError(f"FlowObjective.input_perturbation: {self.input_perturbation}; expected 0 <= gamma < 1")

    def velocity(self, out: torch.Tensor, x_t: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """The network's output as the velocity samplers integrate; for x0 prediction v = (x_t - x0) / sigma, with
        sigma floored so the clean end does not blow up (its loss is then x0's error / sigma^2)."""
        if self.prediction == "velocity":
            return out
        return (x_t - out) / _expand(sigmas, x_t).clamp(min=X0_MIN_SIGMA)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        s = _expand(sigmas, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def sample_sigmas(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """Logit-normal noise levels (SD3): most training where the velocity is hardest to guess."""
        z = torch.randn(n, generator=generator, device=device) * self.logit_std + self.logit_mean
        return torch.sigmoid(z)

    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator | None = None,
             loss_weight: LossWeight = None, **cond) -> torch.Tensor:
        sigmas = self.sample_sigmas(x0.shape[0], generator, x0.device)
        noise = _randn(x0, generator)
        x_t = keep_given(self.add_noise(x0, noise, sigmas), cond.get("cond"), cond.get("cond_mask"))
        seen = x_t  # what the network reads: x_t, or x_t with the extra noise of input_perturbation
        if self.input_perturbation:
            extra = _expand(sigmas, x0) * self.input_perturbation * _randn(x0, generator)
            seen = keep_given(x_t + extra, cond.get("cond"), cond.get("cond_mask"))
        out = model(seen, sigmas, **cond)
        if callable(loss_weight):
            loss_weight = loss_weight(self.clean_estimate(out.detach(), x_t, sigmas))
        # the velocity from x_t itself: for x0 prediction the loss is then x0's error / sigma^2 whatever the input
        return masked_mse(self.velocity(out, x_t, sigmas), self.target(x0, noise), cond.get("cond_mask"), loss_weight)

    def clean_estimate(self, out: torch.Tensor, x_t: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """The x0 the network's output implies: itself for x0 prediction, x_t - sigma v for velocity."""
        return out if self.prediction == "x0" else x_t - _expand(sigmas, x_t) * out


Objective = EpsilonObjective | FlowObjective


def make_objective(name: str) -> Objective:
    """'flow', 'epsilon' (DDPM) or 'v' (DDPM with v-prediction)."""
    if name == "flow":
        return FlowObjective()
    if name in ("epsilon", "v"):
        return EpsilonObjective(prediction=name)
    raise ValueError(f"unknown objective {name!r}; expected flow, epsilon or v")


def objective_from_dict(d: dict) -> Objective:
    """Inverse of `kinema.config.to_dict` for an objective (as saved in model_index.json)."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind == "flow":
        return FlowObjective(**d)
    if kind == "ddpm":
        return EpsilonObjective(schedule=DDPMSchedule(**d.pop("schedule")), **d)
    raise ValueError(f"objective kind {kind!r} unknown; expected 'flow' or 'ddpm'")
