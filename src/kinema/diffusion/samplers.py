"""Samplers: short, pure loops from noise to data. Each takes the model as a callable `fn(x, t) -> output`
(t in [0, 1]); conditioning and classifier-free guidance are bound into that callable beforehand.

    euler  (flow)      x <- x + (s_next - s) * v
    euler-a (flow)     ancestral: x <- (1 - s_next) x0 + sqrt(s_next^2 - var) eps + sqrt(var) z  (DDPM's posterior)
    renoise (flow)     x <- (1 - s_next) x0 + s_next z: all of the next state's noise fresh (consistency models'
                       multistep sampling)
    ddim   (DDPM)      x <- sqrt(a_prev) x0 + sqrt(1 - a_prev - var) eps [+ sqrt(var) z]
    ddpm   (DDPM)      ancestral: x <- posterior mean(x, x0) + sqrt(posterior var) z

`start` (a step index) lets a sampler begin part-way, from a partly-noised input: that is SDEdit editing.
`callback(i, x)` sees every intermediate state, e.g. to show the denoising trajectory; `correct(x, t) -> x` may
move the state before each model call (attention guidance, dit/attention_guidance.py).
A new sampler is one function under `@register_sampler(name, kind, help)`: `sample`, the pipeline's checks and
`kinema generate --sampler` all read the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kinema.diffusion.objectives import EpsilonObjective, FlowObjective, Objective
from kinema.diffusion.schedules import ddim_timesteps, flow_sigmas

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor], None] | None
Corrector = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None  # (x, t) -> x, before each model call
# the guidance scale a new model folder samples with by default: 4 beat 7 on the three models judged in session 29
# (bundled v6: single-object 95.5 vs 92.0% at Euler over four prompt sets; the 1-3-object candidate and the
# from-scratch stage alike; docs/experiments/learning-efficiency.md). 7 had won on the stage-1 model (2026-12-01).
DEFAULT_GUIDANCE = 4.0


def check_guidance_interval(interval, what: str = "guidance interval") -> tuple[float, float]:
    """(lo, hi) with 0 <= lo <= hi <= 1 as a tuple of floats, or a ValueError naming `what`."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"{what} must be [lo, hi] with 0 <= lo <= hi <= 1 (noise levels), got {interval!r}")
    return lo, hi


def classifier_free_guidance(model: Callable[..., torch.Tensor], cond: dict, uncond: dict, scale: float,
                             interval: tuple[float, float] | None = None) -> ModelFn:
    """fn(x, t) = uncond + scale * (cond - uncond), both halves in one batched call.
    `cond` / `uncond` are the model's keyword arguments (text, text_mask, ...) for each half.
    `interval` (lo, hi) guides only where lo <= t <= hi and gives the conditional output elsewhere (guidance in a
    limited interval, Kynkaanniemi et al. 2024): strong guidance at the highest noise levels commits a sample to the
    prompt's features before there is a layout to put them in."""
    if scale == 1.0:
        return lambda x, t: model(x, t, **cond)
    both = {k: _cat_padded(cond[k], uncond[k]) if cond[k] is not None else None for k in cond}
    lo, hi = interval if interval is not None else (float("-inf"), float("inf"))

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inside = (t >= lo) & (t <= hi)  # (B,)
        if not inside.any():
            return model(x, t, **cond)
        out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        out = out_uncond + scale * (out_cond - out_uncond)
        return torch.where(inside.view(-1, *[1] * (x.dim() - 1)), out, out_cond)

    return guided


def _cat_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate on the batch dim, padding dim 1 (text length) with zeros / False when it differs."""
    if a.dim() >= 2 and a.shape[1] != b.shape[1] and a.shape[2:] == b.shape[2:]:
        n = max(a.shape[1], b.shape[1])
        a, b = (torch.cat([v, v.new_zeros(v.shape[0], n - v.shape[1], *v.shape[2:])], 1) for v in (a, b))
    return torch.cat([a, b])


def _full(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# ---------------------------------------------------------------------------------------------------
# Flow matching
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def euler_sample(fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, start: int = 0,
                 callback: Callback = None, correct: Corrector = None) -> torch.Tensor:
    """Integrate the velocity field from sigmas[start] down to sigmas[-1] (= 0)."""
    sigmas = sigmas.tolist()
    for i in range(start, len(sigmas) - 1):
        x = correct(x, _full(x, sigmas[i])) if correct else x
        v = fn(x, _full(x, sigmas[i]))
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        if callback:
            callback(i, x)
    return x


@torch.no_grad()
def flow_ancestral_sample(fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, eta: float | None = 1.0,
                          generator: torch.Generator | None = None, start: int = 0,
                          callback: Callback = None, correct: Corrector = None) -> torch.Tensor:
    """DDIM's step on the flow path x = (1 - s) x0 + s eps: the velocity gives x0 = x - s v and eps = x + (1 - s) v;
    the next state keeps a share of eps and draws the rest afresh. eta = 0 is exactly the Euler step, eta = 1 the
    posterior q(x_next | x, x0) of ancestral DDPM: fresh noise at every step lets a later step undo an earlier
    one's mistake instead of sharpening it. eta None keeps none of the current noise: x = (1 - s') x0 + s' z, the
    next state drawn afresh around the latest estimate (the `renoise` sampler; the multistep sampler of consistency
    models, Song et al. 2023). A mode the model is unsure of (an object drawn in two places at mid noise: the twins
    of a model trained on 1-3 objects) is then re-decided at every step instead of carried along by the kept noise:
    on the 1-3-object rung the count is right in 95 of 100 one-object scenes against 84 (Euler) and 85 (eta 1). The
    same re-deciding drops a half-drawn second or third object more often (that rung's count on 1-3-object scenes:
    64% against Euler's 72%), and the bundled one-object model draws its sizes worse with it: a per-model choice
    (docs/experiments/learning-efficiency.md, session 33)."""
    sigmas = sigmas.tolist()
    for i in range(start, len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = correct(x, _full(x, s)) if correct else x
        v = fn(x, _full(x, s))
        x0, eps = x - s * v, x + (1 - s) * v
        # the posterior variance for (alpha, sigma) -> (alpha', sigma'), alpha = 1 - s: DDIM's formula, written
        # without alphas_cumprod
        ratio = (1 - s) * s_next / ((1 - s_next) * s) if s_next > 0 else 0.0
        var = s_next**2 if eta is None else eta**2 * s_next**2 * (1 - ratio**2)
        x = (1 - s_next) * x0 + (s_next**2 - var) ** 0.5 * eps
        if var > 0:
            x = x + var**0.5 * _noise(x, generator)
        if callback:
            callback(i, x)
    return x


# ---------------------------------------------------------------------------------------------------
# DDPM family
# ---------------------------------------------------------------------------------------------------


def _x0_eps(obj: EpsilonObjective, x: torch.Tensor, out: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output -> (predicted x0, predicted eps) at signal fraction a."""
    sa, sb = a**0.5, (1 - a) ** 0.5
    if obj.prediction == "epsilon":
        return (x - sb * out) / sa, out
    return sa * x - sb * out, sb * x + sa * out


@torch.no_grad()
def ddim_sample(fn: ModelFn, x: torch.Tensor, obj: EpsilonObjective, timesteps: list[int], eta: float = 0.0,
                generator: torch.Generator | None = None, start: int = 0, callback: Callback = None,
                correct: Corrector = None) -> torch.Tensor:
    """DDIM (Song et al.); eta=0 is deterministic, eta=1 matches DDPM's variance."""
    ac = obj.schedule.alphas_cumprod().tolist()
    prevs = [*timesteps[1:], -1]
    for i in range(start, len(timesteps)):
        a, a_prev = ac[timesteps[i]], (ac[prevs[i]] if prevs[i] >= 0 else 1.0)
        t = _full(x, timesteps[i] / obj.schedule.num_train_timesteps)
        x = correct(x, t) if correct else x
        x0, eps = _x0_eps(obj, x, fn(x, t), a)
        var = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        x = a_prev**0.5 * x0 + (1 - a_prev - var) ** 0.5 * eps
        if var > 0 and prevs[i] >= 0:
            x = x + var**0.5 * _noise(x, generator)
        if callback:
            callback(i, x)
    return x


@torch.no_grad()
def ddpm_sample(fn: ModelFn, x: torch.Tensor, obj: EpsilonObjective, timesteps: list[int],
                generator: torch.Generator | None = None, start: int = 0, callback: Callback = None,
                correct: Corrector = None) -> torch.Tensor:
    """Ancestral sampling with the posterior q(x_prev | x_t, x0) ("fixed small" variance)."""
    ac = obj.schedule.alphas_cumprod().tolist()
    prevs = [*timesteps[1:], -1]
    for i in range(start, len(timesteps)):
        a, a_prev = ac[timesteps[i]], (ac[prevs[i]] if prevs[i] >= 0 else 1.0)
        t = _full(x, timesteps[i] / obj.schedule.num_train_timesteps)
        x = correct(x, t) if correct else x
        x0, _ = _x0_eps(obj, x, fn(x, t), a)
        alpha, beta = a / a_prev, 1 - a / a_prev
        mean = (a_prev**0.5 * beta / (1 - a)) * x0 + (alpha**0.5 * (1 - a_prev) / (1 - a)) * x
        x = mean + ((beta * (1 - a_prev) / (1 - a)) ** 0.5 * _noise(x, generator) if prevs[i] >= 0 else 0.0)
        if callback:
            callback(i, x)
    return x


# ---------------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampler:
    name: str
    kind: str  # the objective kind it fits (Objective.kind: "flow" or "ddpm")
    run: Callable  # (objective, fn, x, levels, generator, start, callback, correct) -> x
    help: str


SAMPLERS: dict[str, Sampler] = {}  # the registry: `sample`, the pipeline's checks and the CLI's choices read it


def register_sampler(name: str, kind: str, help: str) -> Callable:
    """Decorator: add a sampler under `name`, for objectives of `kind`; the first one of a kind is its default."""
    def add(run: Callable) -> Callable:
        SAMPLERS[name] = Sampler(name, kind, run, help)
        return run
    return add


def samplers_for(kind: str) -> tuple[str, ...]:
    return tuple(name for name, s in SAMPLERS.items() if s.kind == kind)


def default_sampler(kind: str) -> str:
    """The sampler of objectives of `kind` when none is named: the first one registered for it."""
    return samplers_for(kind)[0]


@register_sampler("euler", "flow", "Euler steps along the predicted velocity (flow matching)")
def _euler(obj, fn, x, levels, generator, start, callback, correct):
    return euler_sample(lambda x, t: obj.velocity(fn(x, t), x, t), x, torch.tensor(levels), start, callback, correct)


@register_sampler("euler-a", "flow", "ancestral steps: DDPM's posterior noise on the flow path (stochastic)")
def _euler_ancestral(obj, fn, x, levels, generator, start, callback, correct):
    return flow_ancestral_sample(lambda x, t: obj.velocity(fn(x, t), x, t), x, torch.tensor(levels), 1.0, generator,
                                 start, callback, correct)


@register_sampler("renoise", "flow", "each step predicts the clean clip and draws all of the next state's noise "
                  "afresh (stochastic; fewer objects drawn twice, by models trained on several per clip)")
def _renoise(obj, fn, x, levels, generator, start, callback, correct):
    return flow_ancestral_sample(lambda x, t: obj.velocity(fn(x, t), x, t), x, torch.tensor(levels), None, generator,
                                 start, callback, correct)


@register_sampler("ddim", "ddpm", "deterministic DDIM (epsilon / v models)")
def _ddim(obj, fn, x, levels, generator, start, callback, correct):
    return ddim_sample(fn, x, obj, levels, 0.0, generator, start, callback, correct)


@register_sampler("ddpm", "ddpm", "ancestral DDPM sampling (epsilon / v models)")
def _ddpm(obj, fn, x, levels, generator, start, callback, correct):
    return ddpm_sample(fn, x, obj, levels, generator, start, callback, correct)


def sampler_help() -> str:
    return "; ".join(f"{s.name}: {s.help}" for s in SAMPLERS.values())


def noise_levels(obj: Objective, steps: int) -> list:
    """The levels the sampler visits: sigmas for flow (steps + 1 values), integer timesteps for DDPM."""
    if isinstance(obj, FlowObjective):
        return flow_sigmas(steps, obj.shift).tolist()
    return ddim_timesteps(obj.schedule.num_train_timesteps, steps)


def noise_to(obj: Objective, x0: torch.Tensor, noise: torch.Tensor, steps: int, start: int) -> torch.Tensor:
    """x0 noised to the level where a sampler of `steps` steps begins at step `start` (for SDEdit)."""
    levels = noise_levels(obj, steps)
    if start >= len(levels):  # past the last step: nothing left to denoise
        return x0
    level = levels[start]
    if isinstance(obj, FlowObjective):
        return obj.add_noise(x0, noise, _full(x0, level))
    return obj.add_noise(x0, noise, torch.full((x0.shape[0],), level, dtype=torch.long, device=x0.device))


def sample(obj: Objective, fn: ModelFn, noise: torch.Tensor, steps: int, sampler: str | None = None,
           generator: torch.Generator | None = None, start: int = 0, callback: Callback = None,
           correct: Corrector = None) -> torch.Tensor:
    """Run the named sampler (default: euler for flow, ddim for DDPM) for `steps` steps; `correct(x, t)`, when
    given, moves the state before each model call."""
    sampler = sampler or default_sampler(obj.kind)
    if sampler not in SAMPLERS or SAMPLERS[sampler].kind != obj.kind:
        raise ValueError(f"sampler {sampler!r} does not fit a {obj.kind} model; expected one of "
                         f"{samplers_for(obj.kind)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return SAMPLERS[sampler].run(obj, fn, noise, noise_levels(obj, steps), generator, start, callback, correct)
