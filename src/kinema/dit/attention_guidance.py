"""Attention guidance: in the first, noisiest sampling steps, nudge the latent so that every object the prompt
names is read by the video tokens strongly and in one place.

A model that draws one prompted object twice, or drops it, shows it in its cross-attention before the clip has a
layout: with clause tokens (`minilm:...+clauses`, one text token per object phrase) each object has one token,
and the share of the video tokens' attention that token gets is a map of where the model means to draw it. On
two-G (a two-object candidate trained with the grounding loss) at the 7th of 30 steps, samples that end with an
object missing have that object's clause token read at 0.03 at most (0.12 where the clip comes out right), and
samples that end with an object drawn twice have it read over a wider area (spatial variance 1.8 against 1.1
tokens^2). So each guided step takes the conditional model's attention maps and moves the latent down the
gradient of

    excite:  mean over objects and latent frames of (1 - the largest share any video token gives the object)
    spread:  mean over objects and latent frames of the spatial variance of the object's map (normalised to sum
             1 per frame, in tokens^2), / 4

(Attend-and-Excite, Chefer et al. 2023, for the first term: its update on the latent, one object token per
object; the second keeps the excited attention in one place, as Divide-and-Bind's does with a total-variation
term), by `strength` x the noise level, the gradient scaled to unit RMS, at every step whose noise level is at
least `until`. The model's weights are untouched; each guided step costs one conditional forward and backward.

Where the prompt says how an object moves (the caption parser's motion and speed), a third term moves its map the
same way: the map's peak (the centroid of map^4, so that moving it means moving the blob, not growing a second one)
should travel at least half the prompted displacement between consecutive latent frames along the prompted
direction (hinge), and stay put for a still object:

    motion:  mean over the objects the prompt gives a motion of  mean over latent-frame pairs of
             relu(0.5 x speed x dt - displacement . direction)   (moving)   or   |displacement|   (still)

It is off by default (weight 0): on v7's two-object prompts at 20 steps (four sets) weight 1 has each object move as
prompted 98.0% of the time instead of 95.5%, but draws an object twice in 7.5% of prompts instead of 5.5%, and
all-correct stays where it was (78.5 against 79.5%).

On two-G, kinema eval adherence's two-object prompts (four seeds x 50, euler-a, guidance 4): all attributes right
58.5% -> 74.0% at strength 0.05 until 0.75 (seed 123: the count 84% -> 96%, drawn twice 14% -> 2%, missing
22% -> 0%). It needs a model whose clause tokens are read where their objects are, i.e. one trained with the
grounding loss (train/grounding.py): on the same model trained as long without it (two-Gc) and on its parent
(two-F) the maps do not say where the objects are, exciting them draws copies (44-56% of two-object prompts), and
all-correct falls to 34-40% (docs/experiments/learning-efficiency.md).

    guide = attention_corrector(dit, model_fn, tokens, strength=0.05, until=0.75)
    x = sample(objective, fn, noise, steps, sampler, correct=guide)

The same maps tell the judge of several candidates (diffusion/fit.py) which ones are wrong in a way the denoising
error cannot see (`watch_flaws` reads them from the judge's own pass at level 0.5, no extra model call): a finished
sample's missing object has its clause token read by no video token (`unread`; the error alone prefers such
samples: less to explain), and an object drawn moving the wrong way has its map's peak travel against the prompted
direction (`wrong_way`: on the bundled model's candidates, 4% of those it flags are right, against 73% of all).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kinema.layers.attention import CrossAttention, attention_shares, kept_cross_attention
from kinema.layers.patches import token_grid

DEFAULT_UNTIL = 0.75  # guided while the noise level is >= this: the first 5 of 10 steps (7 of 15) at shift 2
SPREAD_WEIGHT = 0.25  # a spread of 4 tokens^2 (two blobs 4 tokens apart) weighs as much as an object not read
DEFAULT_MOTION = 0.0  # the motion term's weight: off unless asked for (it trades the count for motion, see above)
PEAK_POWER = 4.0  # the motion term follows the centroid of map**4: the peak (map**1, the mass, let a copy move it)
# An object the sample does not draw: its clause token's largest attention share, averaged over latent frames, at most
# this where the sample is noised to PRESENCE_LEVEL. On v7's two-object candidates (ten steps, six prompt sets, 600)
# the least-read object of the 13 with one missing reads 0.001-0.088 (11 under 0.015), of the 587 with both drawn
# 0.023-0.118 (median 0.072); thresholds 0.01-0.02 choose alike.
UNREAD_SHARE = 0.015
PRESENCE_LEVEL = 0.5


@dataclass(frozen=True)
class ObjectMotion:
    """How the prompt says one object moves, on the DiT's token grid: (dy, dx) in tokens per pixel frame; (0, 0)
    for an object that stays still."""
    velocity: tuple[float, float]


def check_attention_guidance(value, what: str = "attention guidance") -> tuple[float, float, float]:
    """(strength, until, motion) with strength a finite number >= 0, until in [0, 1] and motion (the motion term's
    weight) a finite number >= 0, or a ValueError naming `what`; a single number is the strength, a pair (strength,
    until), with the defaults for the rest."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = (value,)
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        values = []
    if not 1 <= len(values) <= 3:
        values = [float("nan")]
    strength, until, motion = (*values, *(float("nan"), DEFAULT_UNTIL, DEFAULT_MOTION)[len(values):])
    if not (math.isfinite(strength) and strength >= 0 and 0 <= until <= 1 and math.isfinite(motion) and motion >= 0):
        raise ValueError(f"{what} must be STRENGTH, STRENGTH,UNTIL or STRENGTH,UNTIL,MOTION with STRENGTH >= 0, "
                         f"0 <= UNTIL <= 1 (a noise level) and MOTION >= 0, got {value!r}")
    return strength, until, motion


def has_cross_attention(model: nn.Module) -> bool:
    return any(isinstance(m, CrossAttention) for m in model.modules())


def clause_maps(kept: list, tokens: Sequence[int], grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, K, f, h, w): the share of each video token's attention that each of the K text tokens at `tokens`
    (positions in the prompt, the null key in front not counted) gets, heads and kept layers averaged."""
    shares = torch.stack([attention_shares(q, k, mask) for q, k, mask in kept]).mean(0)  # (B, L, 1 + Lt)
    index = torch.tensor([t + 1 for t in tokens], device=shares.device)
    return shares.index_select(-1, index).transpose(1, 2).unflatten(-1, grid)


def spread(maps: torch.Tensor) -> torch.Tensor:
    """(..., f, h, w) >= 0 -> (..., f): the spatial variance of each frame's map normalised to sum 1 (tokens^2);
    0 for a map on one token, larger the farther apart its mass is."""
    p, ys, xs = _normalised(maps)
    my, mx = (p * ys).sum((-2, -1), keepdim=True), (p * xs).sum((-2, -1), keepdim=True)
    return (p * ((ys - my) ** 2 + (xs - mx) ** 2)).sum((-2, -1))


def centroids(maps: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """(..., f, h, w) >= 0 -> (..., f, 2): each frame's centroid (y, x) in tokens of map**power (1: the mass;
    larger: nearer the peak)."""
    p, ys, xs = _normalised(maps if power == 1 else maps.clamp_min(0) ** power)
    return torch.stack([(p * ys).sum((-2, -1)), (p * xs).sum((-2, -1))], -1)


def _normalised(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each frame's map scaled to sum 1, and the token rows (h, 1) and columns (1, w)."""
    h, w = maps.shape[-2:]
    p = maps / maps.sum((-2, -1), keepdim=True).clamp_min(1e-12)
    ys = torch.arange(h, dtype=p.dtype, device=p.device).view(h, 1)
    xs = torch.arange(w, dtype=p.dtype, device=p.device).view(1, w)
    return p, ys, xs


def _check_tracks(what: str, maps: torch.Tensor, motions: Sequence, frame_times: Sequence[float]) -> None:
    """A ValueError naming `what` unless there is one motion per object and one time per latent frame of `maps`."""
    if len(motions) != maps.shape[1] or len(frame_times) != maps.shape[2]:
        raise ValueError(f"{what}: {len(motions)} motions and {len(frame_times)} frame times for maps of "
                         f"shape {tuple(maps.shape)} (B, K objects, f frames, h, w)")


def _check_motions(what: str, motions: Sequence, tokens: Sequence[int], frame_times: Sequence[float] | None) -> None:
    """A ValueError naming `what` unless there is one motion (or None) per clause token and the frame times."""
    if len(motions) != len(tokens) or frame_times is None:
        raise ValueError(f"{what}: {len(motions)} motions for {len(tokens)} tokens, frame_times {frame_times!r}; "
                         "expected one motion (or None) per token and the frame times")


def attention_guidance_loss(maps: torch.Tensor) -> torch.Tensor:
    """(B, K, f, h, w) clause maps -> (B,): excite + SPREAD_WEIGHT x spread, each a mean over objects and frames."""
    excite = (1 - maps.flatten(-2).amax(-1)).mean((1, 2))
    return excite + SPREAD_WEIGHT * spread(maps).mean((1, 2))


def motion_loss(maps: torch.Tensor, motions: Sequence[ObjectMotion | None], frame_times: Sequence[float]
                ) -> torch.Tensor:
    """(B, K, f, h, w) clause maps, one motion per object (None: the prompt does not say), the pixel-frame time of
    each latent frame's centre -> (B,): the mean over the objects with a motion of the mean over consecutive latent
    frames of relu(0.5 x speed x dt - the peak's displacement along the direction) for a moving object, or the
    length of the displacement for a still one; 0 where no object has a motion or there is one latent frame."""
    _check_tracks("motion_loss", maps, motions, frame_times)
    moves = torch.diff(centroids(maps, PEAK_POWER), dim=2)  # (B, K, f - 1, 2) tokens
    dt = torch.diff(torch.tensor(frame_times, dtype=moves.dtype, device=moves.device))  # (f - 1,) pixel frames
    terms = []
    for k, motion in enumerate(motions):
        if motion is None or moves.shape[2] == 0:
            continue
        velocity = torch.tensor(motion.velocity, dtype=moves.dtype, device=moves.device)
        speed = velocity.norm()
        if speed == 0:
            terms.append(moves[:, k].norm(dim=-1).mean(-1))
        else:
            along = (moves[:, k] * velocity / speed).sum(-1)  # (B, f - 1)
            terms.append(torch.relu(0.5 * speed * dt - along).mean(-1))
    return torch.stack(terms, 1).mean(1) if terms else maps.new_zeros(maps.shape[0])


def attention_corrector(model: nn.Module, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        tokens: Sequence[int], strength: float, until: float = DEFAULT_UNTIL,
                        motions: Sequence[ObjectMotion | None] | None = None,
                        frame_times: Sequence[float] | None = None, motion_weight: float = DEFAULT_MOTION,
                        ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """correct(x, t) -> x for samplers (diffusion.samplers.sample's `correct`): at noise levels t >= until, one
    step of strength * t down the attention guidance loss's gradient (scaled to unit RMS per sample) on x.
    `model_fn(x, t)` runs `model` conditioned on the prompt (its output is not used: its cross-attention is);
    `tokens` are the prompt's object clause tokens; `motions` (one per token, None where the prompt gives none) with
    `frame_times` (each latent frame's centre in pixel frames) add the motion term at `motion_weight`. No tokens
    or strength 0: x unchanged."""
    patch = tuple(model.cfg.patch)
    moving = motion_weight > 0 and motions is not None and any(m is not None for m in motions)
    if moving:
        _check_motions("attention_corrector", motions, tokens, frame_times)

    def loss(maps: torch.Tensor) -> torch.Tensor:
        total = attention_guidance_loss(maps)
        return total + motion_weight * motion_loss(maps, motions, frame_times) if moving else total

    def correct(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not tokens or strength == 0 or float(t.max()) < until:
            return x
        grid = token_grid(x.shape, patch)
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            with kept_cross_attention(model) as kept:
                model_fn(leaf, t)
            (grad,) = torch.autograd.grad(loss(clause_maps(kept, tokens, grid)).sum(), leaf)
        grad = grad.float()
        rms = grad.flatten(1).square().mean(1).sqrt().clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        step = strength * t.float().view(-1, *[1] * (x.dim() - 1)) * grad / rms
        return (x.float() - step).to(x.dtype)

    return correct


def unread(maps: torch.Tensor, share: float = UNREAD_SHARE) -> torch.Tensor:
    """(B, K, f, h, w) clause maps -> (B,) True where some object's clause token is read by no video token: its
    largest attention share, averaged over latent frames, at most `share` (an object the sample does not draw)."""
    return (maps.flatten(-2).amax(-1).mean(-1) <= share).any(1)


def wrong_way(maps: torch.Tensor, motions: Sequence[ObjectMotion | None], frame_times: Sequence[float]
              ) -> torch.Tensor:
    """(B, K, f, h, w) clause maps, one motion per object (None: the prompt does not say), each latent frame's centre
    in pixel frames -> (B,) True where some object the prompt moves has its map's peak (the centroid of
    map**PEAK_POWER) travel against its prompted direction: the least-squares slope of the peak's track over the
    frame times, along the direction, below 0. Still objects and a single latent frame flag nothing."""
    _check_tracks("wrong_way", maps, motions, frame_times)
    flagged = torch.zeros(maps.shape[0], dtype=torch.bool, device=maps.device)
    if maps.shape[2] < 2:
        return flagged
    track = centroids(maps.float(), PEAK_POWER)  # (B, K, f, 2) tokens
    times = torch.tensor(frame_times, dtype=track.dtype, device=track.device)
    times = (times - times.mean()).view(-1, 1)  # (f, 1)
    slope = (track * times).sum(2) / times.square().sum()  # (B, K, 2) tokens per pixel frame
    for k, motion in enumerate(motions):
        if motion is None or not any(motion.velocity):
            continue
        velocity = torch.tensor(motion.velocity, dtype=slope.dtype, device=slope.device)
        flagged |= (slope[:, k] * velocity).sum(-1) < 0
    return flagged


def watch_flaws(model: nn.Module, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                tokens: Sequence[int], motions: Sequence[ObjectMotion | None] | None = None,
                frame_times: Sequence[float] | None = None, level: float = PRESENCE_LEVEL, tolerance: float = 0.01,
                ) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable[[int], torch.Tensor]]:
    """(fn, flaws_in): `fn` is `model_fn` that also keeps the clause maps of its calls at noise level `level`
    (within `tolerance`), so a judge that calls it there (diffusion/fit.py's levels) reads them for free;
    `flaws_in(batch)` -> (batch,) 2 where an object is drawn nowhere (`unread`), else 1 where one moves the wrong
    way (`wrong_way`, given `motions`, one per token, and `frame_times`), else 0, on those maps averaged over the
    noises batched with each sample ((noises x batch) rows, sample-minor); all 0 where no call was at `level` or
    there are no tokens. A judge ranks candidates by their flaws first, then by their error."""
    if motions is not None:
        _check_motions("watch_flaws", motions, tokens, frame_times)
    patch = tuple(model.cfg.patch)
    kept_maps: list[torch.Tensor] = []

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not tokens or abs(float(t.float().mean()) - level) > tolerance:
            return model_fn(x, t)
        with kept_cross_attention(model) as kept:
            out = model_fn(x, t)
        kept_maps.append(clause_maps(kept, tokens, token_grid(x.shape, patch)))
        return out

    def flaws_in(batch: int) -> torch.Tensor:
        if not kept_maps:
            return torch.zeros(batch, dtype=torch.long)
        maps = torch.cat(kept_maps).float().unflatten(0, (-1, batch)).mean(0)
        flaws = 2 * unread(maps).long()
        if motions is not None:
            flaws = torch.maximum(flaws, wrong_way(maps, motions, frame_times).long())
        return flaws

    return fn, flaws_in
