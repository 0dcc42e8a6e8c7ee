"""Adherence on fresh scenes of a given world: the judge of the ladder, the scaling study and the recaption
ablation, which train on worlds other than the default one (`kinema eval adherence` judges the default world's fixed
prompt set).

    scores = evaluate(model_dir, world, "medium", n=64, steps=25, guidance=4.0, out=run_dir)

Each of n fresh scenes (seeds far from any training seed) is captioned at `level`, generated, and judged by the probe
against the scene: count, color, shape, motion, and size, speed and background where the world varies them; all
correct per prompt; temporal consistency; and the word-swap sensitivity, how much the flow loss on the real clips
rises when their captions' direction words are reversed (0: the model ignores them); given the training data's seed,
how much higher that loss is on fresh scenes than on the model's own training clips (memorisation). A contact sheet
of the first 8.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from kinema.data.world import WorldConfig

SWAP = {"left": "right", "right": "left", "up": "down", "down": "up"}


def eval_scenes(world: WorldConfig, n: int, seed: int = 9_000_000) -> list:
    """n fresh scenes (seeds far from any training seed)."""
    from kinema.data.world import sample_scene

    return [sample_scene(world, seed + i) for i in range(n)]


def caption(scene, level: str, seed: int, state_count: bool = False) -> str:
    from kinema.data.captions import caption_scene

    return caption_scene(scene, random.Random(seed), state_count)[level]


def swapped(scene):
    """The scene with every moving object's direction reversed (left <-> right, up <-> down)."""
    from kinema.data.world import Scene

    d = scene.to_dict()
    for o in d["objects"]:
        o["motion"] = SWAP.get(o["motion"], o["motion"])
    return Scene.from_dict(d)


def varied_attributes(world: WorldConfig) -> list[str]:
    """The attributes a prompt of this world decides (a fixed attribute is right by construction)."""
    out = ["count", "color", "shape", "motion"]
    out += [a for a, names in (("size", world.sizes), ("speed", world.speeds), ("background", world.backgrounds))
            if len(names) > 1]
    return out


def _latents(pipe, clips: list[np.ndarray]) -> torch.Tensor:
    """Rendered clips (F, H, W, 3) uint8 through the pipeline's VAE: (B, C, f, h, w)."""
    from kinema.io.video import to_tensor

    with pipe._autocast():
        return torch.cat([pipe.vae.encode(to_tensor(c)[None]).float() for c in clips])


@torch.no_grad()
def _flow_loss(pipe, x0: torch.Tensor, prompts: list[str], draws: int) -> float:
    """Mean flow loss on clean latents x0 under `prompts`, at logit-normal noise levels; the draws are seeded, so two
    calls on latents of the same shape see the same noise."""
    obj = pipe.objective  # a flow objective: every caller's models are flow-matching
    text, mask = pipe.encode_prompt(prompts)
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(draws):
        sigma = torch.sigmoid(torch.randn(len(prompts), generator=g))
        noise = torch.randn(x0.shape, generator=g)
        x_t = obj.add_noise(x0, noise, sigma)
        with pipe._autocast():
            pred = obj.velocity(pipe.dit(x_t, sigma, text=text, text_mask=mask).float(), x_t, sigma)
        total += (pred - obj.target(x0, noise)).pow(2).mean().item() / draws
    return total


def word_swap_sensitivity(pipe, scenes: list, level: str, draws: int = 4, state_count: bool = False) -> float:
    """Relative rise of the flow loss on real clips when the caption's direction words are reversed (same noise,
    same noise levels): 0 means the model ignores the direction words."""
    from kinema.data.world import render

    moving = [(i, s) for i, s in enumerate(scenes) if any(o.motion in SWAP for o in s.objects)]
    x0 = _latents(pipe, [render(s).numpy() for _, s in moving])
    losses = [_flow_loss(pipe, x0, [caption(s, level, i, state_count) for (i, _), s in zip(moving, scene_list,
                                                                                               strict=True)],
                         draws) for scene_list in ([s for _, s in moving], [swapped(s) for _, s in moving])]
    return losses[1] / losses[0] - 1


def memorisation(pipe, world: WorldConfig, level: str, train_seed: int, n: int = 64, draws: int = 4) -> float:
    """Relative rise of the flow loss on n fresh scenes over n of the model's own training clips (clips 0..n-1 of a
    dataset synthesised from `world` with `train_seed`, their own captions), same noise: near 0 when the model has
    learned the world, not its clips."""
    from kinema.data.shards import clip_seed, make_clip
    from kinema.data.world import render

    seen = [make_clip(world, clip_seed(train_seed, i)) for i in range(n)]
    fresh = eval_scenes(world, n)
    train_loss = _flow_loss(pipe, _latents(pipe, [v.numpy() for v, _ in seen]),
                            [s.captions[level] for _, s in seen], draws)
    fresh_loss = _flow_loss(pipe, _latents(pipe, [render(s).numpy() for s in fresh]),
                            [caption(s, level, i, world.state_count) for i, s in enumerate(fresh)], draws)
    return fresh_loss / train_loss - 1


def evaluate(model_dir: Path, world: WorldConfig, level: str, n: int, steps: int, guidance: float,
             out: Path, train_data: tuple[int, int] | None = None, sampler: str | None = None) -> dict:
    """Generate one clip per fresh scene's caption, judge it; per-attribute accuracy, all-correct, temporal
    consistency, the word-swap sensitivity, and a contact sheet of the first 8; given the training data as (seed,
    clips) of a synthesised world, also how much more the model's loss is on fresh scenes than on its own clips
    (`memorisation`, on min(n, clips) of each). `sampler` None: the model folder's; the one used is recorded."""
    from kinema.eval.adherence import score
    from kinema.eval.probe import probe_clip
    from kinema.io.video import contact_sheet, save_image
    from kinema.pipeline import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(model_dir)
    scenes = eval_scenes(world, n)
    attributes = varied_attributes(world)
    hits: dict[str, list[bool]] = {a: [] for a in attributes}
    correct, temporal, shown, prompts = [], [], [], []
    motion_at: dict[int, list[bool]] = {}  # object index in the caption's order -> its motion verdicts
    for i, scene in enumerate(scenes):
        prompt = caption(scene, level, i, world.state_count)
        clip = pipe(prompt, frames=world.frames, height=world.height, width=world.width, steps=steps,
                    guidance=guidance, seed=i, sampler=sampler)
        probed = probe_clip(clip)
        verdicts = score(probed, scene.to_dict())
        for a in attributes:
            hits[a] += verdicts[a]
        for k, hit in enumerate(verdicts["motion"]):
            motion_at.setdefault(k, []).append(hit)
        correct.append(all(all(verdicts[a]) for a in attributes))
        prompts.append({"prompt": prompt, "correct": correct[-1],
                        "wrong": [a for a in attributes if not all(verdicts[a])]})
        temporal.append(probed.temporal_consistency())
        if len(shown) < 8:
            shown.append((clip, prompt))
    sheet = contact_sheet([c for c, _ in shown], [p for _, p in shown], scale=2)
    save_image(out / ("eval.png" if sampler is None else f"eval-{sampler}.png"), sheet)
    counts = [len(s.objects) for s in scenes]
    by_count = {str(k): {"all_correct": float(np.mean([c for c, m in zip(correct, counts, strict=True) if m == k])),
                         "n": counts.count(k)} for k in sorted(set(counts))}
    # all-correct by the scene's object sizes, smallest first ("large+small"): which mixes fail
    mixes = ["+".join(sorted(o.size for o in s.objects)) for s in scenes]
    by_sizes = {m: {"all_correct": float(np.mean([c for c, k in zip(correct, mixes, strict=True) if k == m])),
                    "n": mixes.count(m)} for m in sorted(set(mixes))}
    swap = word_swap_sensitivity(pipe, scenes, level, state_count=world.state_count)
    return {"all_correct": float(np.mean(correct)), **{a: float(np.mean(v)) for a, v in hits.items()},
            "temporal": float(np.mean(temporal)), "word_swap": swap, "n": n, "sampler": pipe.sampler_for(sampler),
            **({} if train_data is None else
               {"memorisation": memorisation(pipe, world, level, train_data[0], min(n, train_data[1]))}),
            "by_count": by_count, "by_sizes": by_sizes,
            "motion_by_object": [float(np.mean(motion_at[k])) for k in sorted(motion_at)], "prompts": prompts}
