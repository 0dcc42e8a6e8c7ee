"""The learning-efficiency ladder: from a small recipe that clearly works toward the full shapes world and the
project's configuration, one factor per rung, so the rung where prompt adherence breaks names the cause.

    kinema experiment ladder --out runs/ladder --rungs base abs-pos [--doc docs/experiments/learning-efficiency.md]

A rung is a world (WorldConfig fields), a VAE folder, a DiT (DiTConfig fields), training settings, the flow
objective's noise levels, the caption mix, the frame-conditioning share and, for a curriculum, the rung whose
trained DiT it starts from. For each rung:

1. its world is synthesised (cached per world and seed) and encoded with its VAE (cached per VAE);
2. a DiT is trained for `steps` (resumes from its checkpoints);
3. it is scored on `eval_n` fresh scenes of the same world, captioned at the rung's eval level
   (`kinema.eval.fresh`): generated clips judged by the probe against the scene (count, color, shape, motion;
   size, speed and background where the world varies them), all-correct per prompt, temporal consistency, and the
   word-swap sensitivity: how much the flow loss on real held-out clips rises when their caption's direction word
   is swapped;
4. its ceiling: the all-correct the probe reads on the rung's VAE's reconstructions of the same eval scenes (what
   any DiT on that latent could reach on them; cached per world and VAE);
5. results.json and a markdown table of every rung run so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kinema.data.world import BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES, SPEEDS, WorldConfig
from kinema.eval.fresh import evaluate
from kinema.presets import FLOW_NOISE
from kinema.text.encoder import DEFAULT_TEXT_ENCODER

# ---------------------------------------------------------------------------------------------------
# Rungs
# ---------------------------------------------------------------------------------------------------

SIMPLE_WORLD = {"min_objects": 1, "max_objects": 1, "shapes": ["circle", "square", "triangle"],
                "colors": ["red", "orange", "yellow", "green", "cyan", "blue"], "backgrounds": ["black"],
                "sizes": ["large"], "motions": ["left", "right", "up", "down"], "speeds": ["quickly"]}


@dataclass(frozen=True)
class Rung:
    name: str
    change: str  # what this rung changes, in words
    world: dict = field(default_factory=lambda: dict(SIMPLE_WORLD))  # WorldConfig fields
    vae: str = "models/vae-x8c16"  # a folder with vae.safetensors + vae.json (the x8 VAE of bundled v1-v4)
    dit: dict = field(default_factory=lambda: {"dim": 128, "depth": 4, "heads": 4, "frame_conditioning": False})
    train: dict = field(default_factory=lambda: {"lr": 6e-4, "grad_clip": 1.0, "ema_decay": 0.999})
    caption_mix: dict = field(default_factory=lambda: {"medium": 1.0})
    objective: dict = field(default_factory=dict)  # FlowObjective fields (noise-level distribution, sampling shift)
    text: str = DEFAULT_TEXT_ENCODER  # the text encoder of the latent cache's captions (kinema.text.encoder)
    cond_prob: float = 0.0
    foreground_weight: float = 0.0  # extra DiT loss weight on object positions (DiTTask.foreground_weight)
    foreground_of: str = "clip"  # whose object positions: the clip's, or "either" (DiTTask.foreground_of)
    grounding_weight: float = 0.0  # cross-attention grounding loss (DiTTask.grounding_weight, train.grounding)
    eval_level: str = "medium"  # caption level of the evaluation prompts
    clips: int = 8192
    init_from: str | None = None  # a rung whose trained DiT starts this one (a curriculum); run first if needed

    def then(self, name: str, change: str, **fields) -> Rung:
        """The next rung: this one with `fields` merged in (dicts are updated, not replaced)."""
        merged = {k: (getattr(self, k) | v if isinstance(v, dict) else v) for k, v in fields.items()}
        return dataclasses.replace(self, name=name, change=change, **merged)


def default_rungs() -> dict[str, Rung]:
    base = Rung("base", "simple world, 17x64x64, bundled x8/16-ch VAE, DiT xs (RoPE only), medium captions")
    ref = base.then("ref", "the reference recipe's DiT and training on base's data: width 192, 6 heads, abs "
                    "positions, lr 1e-3, no clip, EMA 0.998", dit={"dim": 192, "heads": 6, "abs_pos": True},
                    train={"lr": 1e-3, "grad_clip": 100.0, "ema_decay": 0.998})
    rungs = [
        base,
        ref,
        base.then("abs-pos", "+ fixed 3D sin/cos absolute positions", dit={"abs_pos": True}),
        base.then("no-clip", "grad clip 1.0 -> 100 (effectively none)", train={"grad_clip": 100.0}),
        base.then("lr1e-3", "lr 6e-4 -> 1e-3", train={"lr": 1e-3}),
        base.then("w192", "width 128 -> 192, heads 4 -> 6", dit={"dim": 192, "heads": 6}),
        # from ref, one factor back to base at a time: which of ref's differences carry it
        ref.then("ref-rope", "ref without absolute positions (RoPE only)", dit={"abs_pos": False}),
        ref.then("ref-clip1", "ref with grad clip 1.0", train={"grad_clip": 1.0}),
        ref.then("ref-lr6e-4", "ref with lr 6e-4", train={"lr": 6e-4}),
        ref.then("ref-w128", "ref at width 128, 4 heads", dit={"dim": 128, "heads": 4}),
        ref.then("ref-ema999", "ref with EMA 0.999", train={"ema_decay": 0.999}),
    ]
    # session 18: binding in isolation. Every multi-object rung so far started from the full world; these add a
    # second object to ref's simple world (86% on one object), so a break here is binding, not world size
    rungs.append(ref.then("ref-two", "ref's simple world with exactly 2 objects per clip",
                          world={"min_objects": 2, "max_objects": 2}))
    two = rungs[-1]
    rungs.append(two.then("ref-two-refiner", "ref-two with 2 trainable text-refiner layers (words gather their "
                          "object's other words before the video reads them)", dit={"text_refiner": 2}))
    rungs.append(two.then("ref-two-nopool", "ref-two without the pooled prompt vector in adaLN (the prompt enters "
                          "through cross-attention only)", dit={"pooled_text": False}))
    rungs.append(two.then("ref-two-cur", "ref-two started from ref's trained DiT (one object first)", init_from="ref"))
    rungs.append(two.then("ref-two-cond", "ref-two with 30% frame-conditioning samples", cond_prob=0.3,
                          dit={"frame_conditioning": True}))
    # session 19: the one routing mechanism not yet tried: the words updated by the video in every block (MM-DiT)
    rungs.append(two.then("ref-two-joint", "ref-two with joint text-video attention (MM-DiT blocks: the prompt is a "
                          "second stream, one attention over both)", dit={"joint_attention": True}))
    # the layout of two objects is decided at high noise (the sheets show them merging and trading colors): train
    # more there and sample with more steps there (SD3's shift; median training noise level 0.5 -> 0.69)
    rungs.append(two.then("ref-two-hinoise", "ref-two trained and sampled at higher noise (logit-normal mean 0.8, "
                          "sampling shift 2)", objective=dict(FLOW_NOISE)))
    # a word's token state barely says which object it belongs to (swapping the objects' directions moves a color
    # word's state 1-6%): clause tokens, one per object's clause encoded on its own, after the words
    rungs.append(two.then("ref-two-clauses", "ref-two with clause tokens (each object's clause encoded on its own, "
                          "after the word tokens: minilm:0,6+clauses)", text="minilm:0,6+clauses"))
    # session 22: ref-two-hinoise is the only two-object rung that climbs with steps (9% at 1500, 47% at 6000); from
    # it, one factor each at 6000 steps: the width (on w-speeds 128 -> 256 took 12 -> 47%), and the bundled model's
    # latent with the objective it needs there (x0: on s4c8 v-s4c8-hinoise -> v-s4c8-x0 took motion 78 -> 95%)
    hinoise_two = next(r for r in rungs if r.name == "ref-two-hinoise")
    rungs.append(hinoise_two.then("ref-two-w256", "ref-two-hinoise at width 256, 8 heads",
                                  dit={"dim": 256, "heads": 8}))
    # (ref-two-w256: 55%, motion 66% the weak attribute; ref-two-s4c8-x0: 8%, shape 59%.) Does the wider one keep
    # climbing? 6000 more steps from its weights (a cosine restart, as the bundled model's 4000 + 8000)
    rungs.append(rungs[-1].then("ref-two-w256-more", "ref-two-w256 continued from its trained DiT (a cosine restart)",
                                init_from="ref-two-w256"))
    # ref-two-w256-more: still 55%, motion 63%: one object moves as told, the other stands or follows it. Position
    # words as a handle: captions that say where each object starts, trained and judged on (w-objects-detailed asked
    # this of the full world at 3000 steps: 0%; here on the world where everything but motion is learned)
    w256 = next(r for r in rungs if r.name == "ref-two-w256")
    rungs.append(w256.then("ref-two-w256-detailed", "ref-two-w256 on detailed captions (each object's start "
                           "stated), trained and judged on", caption_mix={"medium": 0.0, "detailed": 1.0},
                           eval_level="detailed"))
    rungs.append(hinoise_two.then("ref-two-s4c8-x0", "ref-two-hinoise on the bundled x4-space, 8-channel latent "
                                  "(models/vae-s4c8, patch 1x4x4) predicting x0", vae="models/vae-s4c8",
                                  dit={"patch": (1, 4, 4)}, objective={"prediction": "x0"}))
    # session 23: from ref-two-w256 (55%, motion the one weak attribute), one factor each at 6000 steps on the ways
    # a video token could learn which direction word is its object's: each object's clause as one token (one hop from
    # "blue square" to its direction, where word tokens need two), no bag-of-words pooled vector in adaLN (it gives
    # every token both directions alike, which would make the objects move together), and two more blocks
    clauses = w256.then("ref-two-w256-clauses", "ref-two-w256 with clause tokens (minilm:0,6+clauses)",
                        text="minilm:0,6+clauses")
    rungs.append(clauses)
    rungs.append(w256.then("ref-two-w256-nopool", "ref-two-w256 without the pooled prompt vector in adaLN",
                           dit={"pooled_text": False}))
    rungs.append(w256.then("ref-two-w256-d6", "ref-two-w256 at depth 6", dit={"depth": 6}))
    # (ref-two-w256-clauses: 89%, motion 98%: the plateau was binding.) Next toward the bundled model: the same on
    # its x4-space latent (at width 192 without clauses, ref-two-s4c8-x0: 8%)
    s4c8_clauses = clauses.then("ref-two-s4c8-x0-clauses", "ref-two-w256-clauses on the bundled x4-space, "
                                "8-channel latent (models/vae-s4c8, patch 1x4x4) predicting x0", vae="models/vae-s4c8",
                                dit={"patch": (1, 4, 4)}, objective={"prediction": "x0"})
    rungs.append(s4c8_clauses)
    # session 24: (ref-two-s4c8-x0-clauses: 84%; the bundled v5 DiT fine-tuned with clauses on the full world's 1-3
    # objects: 2% on two-object prompts, the objects trading colors and merging.) Which of the full world's factors
    # breaks it: small objects alone, then all of the full world's two-object scenes at once
    sizes_two = s4c8_clauses.then("ref-two-s4c8-clauses-sizes", "ref-two-s4c8-x0-clauses + small objects",
                                  world={"sizes": list(SIZES)})
    full_two = s4c8_clauses.then("ref-two-s4c8-clauses-full", "ref-two-s4c8-x0-clauses on the full world's "
                                 "two-object scenes (4 shapes, 8 colors, 2 sizes, 2 speeds, still, 3 backgrounds)",
                                 world={"shapes": list(SHAPES), "colors": list(COLORS), "sizes": list(SIZES),
                                        "speeds": list(SPEEDS), "motions": list(MOTIONS),
                                        "backgrounds": list(BACKGROUNDS)})
    rungs += [sizes_two, full_two]
    # (-sizes: 38%, -full: 6%; ceilings 95 / 97%: small objects are the first break, the other world factors the rest)
    rungs.append(s4c8_clauses.then("ref-two-s4c8-clauses-colors", "ref-two-s4c8-x0-clauses + 8 colors (purple, white)",
                                   world={"colors": list(COLORS)}))
    # session 25: is the small-object break slow learning or a wall? The same rung given 6000 more steps (a cosine
    # restart from its weights, as ref-two-w256-more); and the world's remaining factors, one each
    rungs.append(sizes_two.then("ref-two-s4c8-clauses-sizes-more", "ref-two-s4c8-clauses-sizes continued from its "
                                "trained DiT (a cosine restart)", init_from="ref-two-s4c8-clauses-sizes"))
    # (-sizes-more: 38 -> 61% at 12000 steps, large+large scenes fail as often as mixed ones: slow learning, not a
    # token-size wall.) Does the full world's two-object rung climb the same way?
    rungs.append(full_two.then("ref-two-s4c8-clauses-full-more", "ref-two-s4c8-clauses-full continued from its "
                               "trained DiT (a cosine restart)", init_from="ref-two-s4c8-clauses-full"))
    # (-full-more: 6 -> 34% at 12000 steps, every attribute up: it climbs.) And on:
    rungs.append(full_two.then("ref-two-s4c8-clauses-full-more2", "ref-two-s4c8-clauses-full-more continued 6000 "
                               "steps more (a cosine restart)", init_from="ref-two-s4c8-clauses-full-more"))
    # session 26: a curriculum at equal total steps: the simple world's two-object model (84%, binding learned) as
    # the start of the full world's, against -full-more's 12000 steps from scratch (34%)
    rungs.append(full_two.then("ref-two-s4c8-clauses-full-cur", "ref-two-s4c8-clauses-full started from "
                               "ref-two-s4c8-x0-clauses's trained DiT (binding first, on the simple world)",
                               init_from="ref-two-s4c8-x0-clauses"))
    # -full-more's sheet: most failures drop the small object (a few latent positions of a flat background, so the
    # flow loss barely sees it missing); object positions weighted 10x in the loss, on the full world from scratch
    rungs.append(full_two.then("ref-two-s4c8-clauses-full-fg9", "ref-two-s4c8-clauses-full with object positions "
                               "weighted 10x in the loss", foreground_weight=9.0))
    # session 27: the probe now counts copies of one color as objects, and -fg9 draws them: count 94% -> 30%,
    # all-correct 6% -> 2% (the rungs without the weight read the same as before). The weight on the clip's objects
    # alone makes a missing object cost 10x an extra one; weighting the positions where the model drew one as well:
    rungs.append(full_two.then("ref-two-s4c8-clauses-full-fgeither", "ref-two-s4c8-clauses-full with object "
                               "positions, the clip's and those the model drew, weighted 10x in the loss",
                               foreground_weight=9.0, foreground_of="either"))
    # (-fgeither: 6%, count 61%, still copies on its sheet.) The bundled candidate on the plain loss (two-B: 1-3
    # objects, the caption mix with free and short, 30% frame conditioning, held-out pairs) draws a single-object
    # prompt as two identical objects in 44% of them at 12000 steps; the exactly-two rungs never see a one-object
    # prompt. Toward it from -full one factor each: 1-3 objects (judged on 1-3-object prompts, by_count splits them),
    # then its caption mix
    full_13 = full_two.then("ref-two-s4c8-clauses-full-13", "ref-two-s4c8-clauses-full with 1-3 objects per clip",
                            world={"min_objects": 1, "max_objects": 3})
    rungs += [full_13, full_13.then("ref-two-s4c8-clauses-full-13-mix", "ref-two-s4c8-clauses-full-13 with the bundled "
                                    "caption mix (detailed .4, free .3, medium .2, short .1)",
                                    caption_mix={"detailed": 0.4, "free": 0.3, "medium": 0.2, "short": 0.1})]
    # two-B's twins sit about half a frame from the prompted object (session 29 sheets). Each RoPE axis of a 32-dim
    # head has 5 frequency pairs; at theta 10000 over 4 token rows they turn 3, 0.47, 0.075, 0.012 and 0.002 rad end
    # to end, so one pair carries nearly all of a token's row. theta 100 spreads them (3, 1.2, 0.47, 0.19, 0.075 rad):
    theta100 = full_13.then("ref-two-s4c8-clauses-full-13-theta100", "ref-two-s4c8-clauses-full-13 with RoPE theta "
                            "100 (10000 before)", dit={"rope_theta": 100.0})
    rungs.append(theta100)
    # how many objects a caption asks for is said today only by how many object phrases it has (one clause token
    # each); softmax cross-attention averages over tokens, so "one clause" and "two clauses" can read alike. The
    # count as a word of every caption ("two objects: a large red circle ..."), in training and in the prompts:
    count_13 = full_13.then("ref-two-s4c8-clauses-full-13-count", "ref-two-s4c8-clauses-full-13 with the number "
                            "of objects stated in every caption", world={"state_count": True})
    rungs.append(count_13)
    # (session 30, one-object / two-object count over 100 fresh scenes each: control 75 / 48%, theta100 84 / 59%,
    # count 79 / 61%: the position code cuts the twins, the stated count helps two-object counts.) Both together:
    rungs.append(count_13.then("ref-two-s4c8-clauses-full-13-theta100-count", "ref-two-s4c8-clauses-full-13-count "
                               "with RoPE theta 100", dit={"rope_theta": 100.0}))
    # (-theta100-count: they do not add, one-object prompts 52% right against theta100's 67%.) two-F (two-B's recipe at
    # theta 100) still draws the prompted object twice in 24-30% of single-object prompts at 12000 steps, at offsets in
    # every direction, though no training clip holds two objects of one color. Drawing one object where the noisy
    # latent hints at two places is a choice among positions: a softmax over the video tokens, per object. With
    # cross-attention each video token reads the words (a softmax over words) and decides alone; with joint attention
    # (MM-DiT) each clause token also reads every video token and can say where its object is:
    rungs.append(theta100.then("ref-two-s4c8-clauses-full-13-theta100-joint", "ref-two-s4c8-clauses-full-13-theta100 "
                               "with joint text-video attention (MM-DiT blocks)", dit={"joint_attention": True}))
    # (-theta100-joint, session 32: worse everywhere, one-object prompts 37% right against 67%, count missed in 43
    # of 122 against 17, its loss 8% higher at equal steps: a clause token that reads the video is no help.) Back to
    # the one lever that cut the twins, the position code: at theta 10 every one of an axis's 5 frequency pairs turns
    # at least 0.48 rad over a frame's 4 token rows (at 100 the last two turn 0.19 and 0.075)
    rungs.append(theta100.then("ref-two-s4c8-clauses-full-13-theta10", "ref-two-s4c8-clauses-full-13 with RoPE theta "
                               "10", dit={"rope_theta": 10.0}))
    # (-theta10: one-object prompts 57% right, count missed 20 of 122: no better than theta 100's 67% / 17.)
    # and depth: keeping one copy of an object where the noisy latent hints at two is a comparison between positions
    # (which mark is stronger), more rounds of self-attention than 4 blocks may be what that takes
    rungs.append(theta100.then("ref-two-s4c8-clauses-full-13-theta100-d6", "ref-two-s4c8-clauses-full-13-theta100 "
                               "at depth 6 (4 before)", dit={"depth": 6}))
    # (-theta100-d6: loss 6-8% lower, count missed in 17 of 122 as at depth 4: a better fit, as many twins.)
    # session 28's trajectories: nothing object-like until mid-way, then two faint marks that both sharpen. The
    # sampler's own states there are smeared averages over positions, which no training input looks like (exposure
    # bias); the ancestral sampler, whose fresh noise brings its states back toward the path, halved the twins.
    # Training on inputs a little off the path instead (DDPM-IP, gamma 0.1):
    rungs.append(theta100.then("ref-two-s4c8-clauses-full-13-theta100-ip", "ref-two-s4c8-clauses-full-13-theta100 "
                               "trained with input perturbation 0.1 (DDPM-IP)", objective={"input_perturbation": 0.1}))
    # (-theta100-ip: count missed in 23 of 122 against 17: not exposure bias that training-side noise removes.)
    # Nothing in training says which video tokens a clause token belongs to: a model may read "a small red circle"
    # in two places and draw it there. The world knows where each object is, so the cross-attention can be told
    # (TokenCompose's token loss: each clause token's attention should fall on its object's tokens):
    rungs.append(theta100.then("ref-two-s4c8-clauses-full-13-theta100-ground", "ref-two-s4c8-clauses-full-13-theta100 "
                               "with a cross-attention grounding loss (weight 0.1): each clause token read where its "
                               "object is", grounding_weight=0.1))
    # the two-object models memorise once small objects come in: flow loss on fresh scenes over their own training
    # clips (eval.fresh.memorisation) is +6.5% on the simple world, +5.4% with 8 colors, +15% with small objects (+18%
    # after 12000 steps), +13% on the full world; 8192 clips cover few of the two-object combinations. Twice the
    # clips (as many as the bundled model's data) at the same steps:
    rungs.append(sizes_two.then("ref-two-s4c8-clauses-sizes-16k", "ref-two-s4c8-clauses-sizes on 16384 clips "
                                "(8192 before)", clips=16384))
    # (-sizes-16k: 45%, memorisation +12.6%: within noise of -sizes' 38%; twice the steps gave 61%)
    # a small object is ~1% of the latent positions and the sheets show it dropped or drawn as a copy of the large
    # one: the loss weight on object positions (v-s4c8-x0-fg9; no clear gain for one object's shape)
    rungs.append(sizes_two.then("ref-two-s4c8-clauses-sizes-fg9", "ref-two-s4c8-clauses-sizes with object positions "
                                "weighted 10x in the loss", foreground_weight=9.0))
    for name, change, fields in (
        ("shapes", "the 4th shape (diamond)", {"shapes": list(SHAPES)}),
        ("speeds", "slow motion", {"speeds": list(SPEEDS)}),
        ("still", "still objects", {"motions": list(MOTIONS)}),
        ("bg", "dark gray and navy backgrounds", {"backgrounds": list(BACKGROUNDS)}),
    ):
        rungs.append(s4c8_clauses.then(f"ref-two-s4c8-clauses-{name}", f"ref-two-s4c8-x0-clauses + {change}",
                                       world=fields))
    # and the one factor that lifted two-object motion before the noise levels were fixed (ref-two -> ref-two-p1:
    # motion 37 -> 49%): tokens of 8x8 px, so two objects rarely share one
    rungs.append(hinoise_two.then("ref-two-hinoise-p1", "ref-two-hinoise at patch 1x1x1 (320 tokens, 8x8 px per "
                                  "token)", dit={"patch": (1, 1, 1)}))
    rungs.append(ref.then("ref-hinoise", "ref trained and sampled at higher noise (does the easy world lose?)",
                          objective=dict(FLOW_NOISE)))
    # finer tokens: at patch 1x2x2 a token is 16x16 px and two large objects often share one; on w-sizes, 8x8-px
    # tokens took all-correct 14 -> 44% (v-s4c8 -> v-s4c8-p2)
    rungs.append(two.then("ref-two-p1", "ref-two at patch 1x1x1 (320 tokens, 8x8 px per token)",
                          dit={"patch": (1, 1, 1)}))
    # from ref toward the full shapes world, one world factor per rung (each keeps the one before)
    world = ref
    for name, change, fields in (
        ("w-shapes", "+ the 4th shape (diamond)", {"shapes": ["circle", "square", "triangle", "diamond"]}),
        ("w-colors", "+ 8 colors (purple, white)", {"colors": list(COLORS)}),
        ("w-sizes", "+ small objects (radius H/12)", {"sizes": ["small", "large"]}),
        ("w-speeds", "+ slow motion (H/64 px per frame)", {"speeds": ["slowly", "quickly"]}),
        ("w-still", "+ still objects", {"motions": ["left", "right", "up", "down", "still"]}),
        ("w-bg", "+ dark gray and navy backgrounds", {"backgrounds": list(BACKGROUNDS)}),
    ):
        world = world.then(name, change, world=fields)
        rungs.append(world)
    # what the bundled model adds on top of the full single-object world (session 15: the full world at 8000 steps
    # reached 18% against w-bg's 44% at 3000): more objects, the caption mix, frame-conditioning samples
    bg = next(r for r in rungs if r.name == "w-bg")
    rungs.append(bg.then("w-objects", "w-bg with 1-3 objects per clip", world={"max_objects": 3}))
    # session 16: w-objects is where adherence breaks (2%); from it, one factor: depth 4 -> 6 (the scaling study's
    # best size in the simple world, 192x6: 88%)
    objects = rungs[-1]
    rungs.append(objects.then("w-objects-d6", "w-objects at depth 6", dit={"depth": 6}))
    # session 17: a curriculum at equal total steps: w-bg's trained DiT (single objects) continued on 1-3 objects
    rungs.append(objects.then("w-objects-cur", "w-objects started from w-bg's trained DiT (single objects first)",
                              init_from="w-bg"))
    rungs.append(objects.then("w-objects-w256", "w-objects at width 256, 8 heads", dit={"dim": 256, "heads": 8}))
    # captions that say where each object starts (the detailed level), trained and judged on: can the words be bound
    # to objects by place, as prompt expansion would write them?
    rungs.append(objects.then("w-objects-detailed", "w-objects on detailed captions (each object's start stated)",
                              caption_mix={"medium": 0.0, "detailed": 1.0}, eval_level="detailed"))
    rungs.append(bg.then("w-bg-mix", "w-bg trained on the default caption mix (detailed .5, medium .4, short .1)",
                         caption_mix={"detailed": 0.5, "medium": 0.4, "short": 0.1}))
    rungs.append(bg.then("w-bg-cond", "w-bg with 30% frame-conditioning samples", cond_prob=0.3,
                         dit={"frame_conditioning": True}))
    rungs.append(bg.then("w-bg-hinoise", "w-bg trained and sampled at higher noise (as ref-two-hinoise)",
                         objective=dict(FLOW_NOISE)))
    speeds = next(r for r in rungs if r.name == "w-speeds")
    rungs.append(speeds.then("w-speeds-w256", "w-speeds at width 256, 8 heads", dit={"dim": 256, "heads": 8}))
    # the latent: where small shapes break (w-sizes), the x4-space VAE at the same token count (16x16 px per token)
    sizes = next(r for r in rungs if r.name == "w-sizes")
    rungs.append(sizes.then("v-s4c8", "w-sizes on the x4-space, 8-channel VAE (models/vae-s4c8), patch 1x4x4",
                            vae="models/vae-s4c8", dit={"patch": (1, 4, 4)}))
    rungs.append(rungs[-1].then("v-s4c8-hinoise", "v-s4c8 trained and sampled at higher noise (as ref-two-hinoise)",
                                objective=dict(FLOW_NOISE)))
    rungs.append(sizes.then("v-s4c8-p2", "w-sizes on models/vae-s4c8 at patch 1x2x2 (320 tokens, 8x8 px per token)",
                            vae="models/vae-s4c8", dit={"patch": (1, 2, 2)}))
    # JiT (Li & He 2025): a network that predicts the clean data handles high-dimensional tokens that a velocity
    # (noise) predictor cannot; the s4c8 latent at 80 tokens has 128 values per token
    s4c8_hinoise = next(r for r in rungs if r.name == "v-s4c8-hinoise")
    rungs.append(s4c8_hinoise.then("v-s4c8-x0", "v-s4c8-hinoise predicting x0 (the clean latent; the loss and "
                                   "sampler use the velocity it implies)", objective={"prediction": "x0"}))
    # session 21: on s4c8 the bundled curriculum's shape stalls at 62% (blobs) where motion is 98%; v-s4c8-p2's 8x8-px
    # tokens learned shape faster per step but cost 5.5x. At a quarter of the width the 320 tokens cost about as much
    # per step as 80 wide ones: is it the token size that draws shapes, at equal compute? (No: 17% vs 31%, shape 30%
    # vs 33%, motion 45% vs 95%; the width matters more.)
    rungs.append(rungs[-1].then("v-s4c8-x0-p2w96", "v-s4c8-x0 at patch 1x2x2 (320 tokens of 8x8 px), width 96, "
                                "3 heads", dit={"patch": (1, 2, 2), "dim": 96, "heads": 3}))
    # session 22: a small object is ~4% of the latent positions, so the flow loss is mostly background; the reference
    # autoencoder weighted object pixels 10x. The same weighting in the DiT's loss: does shape come sooner?
    x0_rung = next(r for r in rungs if r.name == "v-s4c8-x0")
    rungs.append(x0_rung.then("v-s4c8-x0-fg9", "v-s4c8-x0 with object positions weighted 10x in the loss (latent "
                              "positions far from the clip's median latent)", foreground_weight=9.0))
    rungs.append(sizes.then("w-sizes-hinoise", "w-sizes trained and sampled at higher noise (the x8 control for "
                            "v-s4c8-hinoise)", objective=dict(FLOW_NOISE)))
    rungs.append(rungs[-1].then("w-sizes-x0", "w-sizes-hinoise predicting x0 (does x0 help the x8 latent's 64-value "
                                "tokens too?)", objective={"prediction": "x0"}))
    return {r.name: r for r in rungs}


# ---------------------------------------------------------------------------------------------------
# Data: synthesise and encode each world once
# ---------------------------------------------------------------------------------------------------


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def vae_key(vae_dir: str | Path) -> str:
    """A VAE's identity for the cache: its weights' content hash (moving or linking the folder keeps it)."""
    from kinema.io.weights import weights_sha256

    return _key(weights_sha256(vae_dir, "vae"))


def world_config(rung: Rung, frames: int, size: int) -> WorldConfig:
    return WorldConfig(**{"frames": frames, "height": size, "width": size, **rung.world})


DATA_SEED = 5  # every rung's training clips: clip i of a world is clip_seed(DATA_SEED, i)


def prepare_latents(rung: Rung, cache: Path, frames: int, size: int, seed: int = DATA_SEED) -> Path:
    """The rung's world as a latent cache (synthesised and encoded once, shared by rungs that agree)."""
    from kinema.data.shards import synth_dataset
    from kinema.encode import encode_dataset, reencode_text

    world = world_config(rung, frames, size)
    data = cache / f"world-{_key([dataclasses.asdict(world), rung.clips, seed])}"
    latents = cache / f"latents-{data.name[6:]}-{vae_key(rung.vae)}"
    if not (data / "captions.jsonl").exists():
        synth_dataset(data, rung.clips, world, seed=seed, progress=False)
    if not (latents / "index.jsonl").exists():
        encode_dataset(rung.vae, data, latents, batch_size=32, progress=False)
    if rung.text == DEFAULT_TEXT_ENCODER:
        return latents
    retexted = cache / f"{latents.name}-{_key(rung.text)}"  # the same latents, the captions re-encoded
    if not (retexted / "index.jsonl").exists():
        reencode_text(latents, retexted, rung.text, progress=False)
    return retexted


# ---------------------------------------------------------------------------------------------------
# One rung, the ladder, the report
# ---------------------------------------------------------------------------------------------------


@dataclass
class LadderExperiment:
    out: Path
    rungs: tuple[str, ...] = ("base",)
    steps: int = 1500
    batch_size: int = 32
    frames: int = 17
    size: int = 64
    eval_n: int = 64
    eval_steps: int = 25
    guidance: float = 4.0
    seed: int = 0
    # the sampler the rungs are scored with; None: the model's default (Euler for these flow models), into
    # result.json; another name scores each trained rung again into result-<sampler>.json (training is reused);
    # either way the result names the sampler used
    sampler: str | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        unknown = [r for r in self.rungs if r not in default_rungs()]
        if unknown:
            raise ValueError(f"unknown ladder rungs {unknown}; expected some of {list(default_rungs())}")


def run_rung(exp: LadderExperiment, rung: Rung, rungs: dict[str, Rung] | None = None) -> dict:
    """Train, score and record one rung (a finished one is read back); `rungs` resolves `init_from` by name."""
    from kinema.config import TrainConfig
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.dit.model import DiTConfig
    from kinema.train.dit_task import DiTTask
    from kinema.train.loop import train

    run = exp.out / rung.name
    done = run / ("result.json" if exp.sampler is None else f"result-{exp.sampler}.json")
    if done.exists():
        result = json.loads(done.read_text())
        if "ceiling" not in result:  # a rung recorded before rungs had ceilings gets one
            result["ceiling"] = rung_ceiling(exp, rung)
            done.write_text(json.dumps(result, indent=2))
        return result
    init_steps, init_minutes = 0, 0.0
    if rung.init_from is not None:  # the curriculum's first stage, trained (or reused) under the same budget
        rungs = default_rungs() if rungs is None else rungs
        first = run_rung(exp, rungs[rung.init_from], rungs)
        init_steps, init_minutes = first.get("total_steps", first["steps"]), first["train_minutes"]
    data = LatentDataset(prepare_latents(rung, exp.out / "cache", exp.frames, exp.size))
    dit_cfg = DiTConfig(**{"in_channels": data.latent_shape[0], "text_dim": data.meta["text_dim"], **rung.dit})
    train_cfg = TrainConfig(**{"steps": exp.steps, "batch_size": exp.batch_size, "warmup_steps": 100,
                               "log_every": 25, "ckpt_every": 250, "seed": exp.seed, **rung.train})
    task = DiTTask(data, dit_cfg, FlowObjective(**rung.objective), train_cfg.batch_size, seed=exp.seed,
                   caption_mix=rung.caption_mix, cond_prob=rung.cond_prob, vae_dir=Path(rung.vae),
                   foreground_weight=rung.foreground_weight, foreground_of=rung.foreground_of,
                   grounding_weight=rung.grounding_weight,
                   sample_steps=exp.eval_steps,
                   init_from=None if rung.init_from is None else exp.out / rung.init_from / "model")
    if not (run / "result.json").exists():  # scored once already: trained, its model is there to score again
        train(task, train_cfg, run, progress=False)
    minutes = init_minutes + training_minutes(run / "metrics.jsonl", train_cfg.batch_size)
    world = world_config(rung, exp.frames, exp.size)
    scores = evaluate(run / "model", world, rung.eval_level, exp.eval_n, exp.eval_steps, exp.guidance, run,
                      train_data=(DATA_SEED, rung.clips), sampler=exp.sampler)
    result = {"rung": dataclasses.asdict(rung), "steps": exp.steps, "total_steps": init_steps + exp.steps,
              "train_minutes": minutes,
              "threads": torch.get_num_threads(), "params": sum(p.numel() for p in task.build_model().parameters()),
              **scores, "ceiling": rung_ceiling(exp, rung)}
    done.write_text(json.dumps(result, indent=2))
    return result


def rung_ceiling(exp: LadderExperiment, rung: Rung) -> float:
    """All-correct (over the attributes the rung's prompts decide) that the probe reads on the rung's VAE's
    reconstructions of its eval scenes: the most any DiT on that latent can score on them."""
    from kinema.eval.fresh import eval_scenes, varied_attributes
    from kinema.eval.vae import scenes_ceiling
    from kinema.io.video import atomic_write_bytes
    from kinema.io.weights import load_model
    from kinema.vae.model import VAEConfig, VideoVAE

    world = world_config(rung, exp.frames, exp.size)
    path = exp.out / "cache" / f"ceiling-{_key([dataclasses.asdict(world), exp.eval_n])}-{vae_key(rung.vae)}.json"
    if not path.exists():
        vae = load_model(rung.vae, "vae", VideoVAE, VAEConfig).eval()
        scores = scenes_ceiling(vae, eval_scenes(world, exp.eval_n), progress=False,
                                decided=tuple(varied_attributes(world)))
        atomic_write_bytes(path, json.dumps(scores, indent=2).encode())
    return json.loads(path.read_text())["reconstructed"]["all_correct"]


def training_minutes(metrics: Path, batch_size: int) -> float:
    """Wall minutes of the training steps, from the logged throughput (so a resumed run counts each step once)."""
    seconds, last = 0.0, 0
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if r["step"] > last:
            seconds += (r["step"] - last) * batch_size / r["samples_per_s"]
            last = r["step"]
    return seconds / 60


def run_ladder(exp: LadderExperiment, doc: Path | None = None) -> list[dict]:
    rungs = default_rungs()
    results = [run_rung(exp, rungs[name], rungs) for name in exp.rungs]
    everything = [json.loads(p.read_text()) for p in sorted(exp.out.glob("*/result.json"))]
    (exp.out / "results.json").write_text(json.dumps(everything, indent=2))
    if doc is not None:
        write_doc(doc, report_table(everything))
    return results


TABLE_START, TABLE_END = "<!-- ladder table: written by `kinema experiment ladder --doc` -->", "<!-- /ladder table -->"


def write_doc(doc: Path, table: str) -> Path:
    """Put the table between the markers of an existing page (the prose around it is kept), or start a page."""
    from kinema.io.video import atomic_write_bytes

    block = f"{TABLE_START}\n{table}{TABLE_END}"
    text = doc.read_text() if doc.exists() else f"# Learning efficiency: the ladder\n\n{TABLE_START}\n{TABLE_END}\n"
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"{doc}: has no ladder-table markers ({TABLE_START!r} ... {TABLE_END!r}); refusing to "
                         "overwrite a page written by hand: add the markers where the table goes")
    head, _, rest = text.partition(TABLE_START)
    atomic_write_bytes(doc, (head + block + rest.partition(TABLE_END)[2]).encode())
    return doc


def report_table(results: list[dict]) -> str:
    """One markdown row per rung, in ladder order; '-' for an attribute the rung's world keeps fixed."""
    order = {name: i for i, name in enumerate(default_rungs())}
    results = sorted(results, key=lambda r: order.get(r["rung"]["name"], len(order)))
    attrs = ("color", "shape", "motion", "count", "size", "speed", "background")
    head = ("| rung | change | steps | all correct | ceiling | " + " | ".join(attrs)
            + " | temporal | word swap | train min |\n" + "|---" * (len(attrs) + 8) + "|\n")
    rows = []
    for r in results:
        cells = [f"{r[a]:.0%}" if a in r else "-" for a in attrs]
        steps = r.get("total_steps", r["steps"])
        ceiling = f"{r['ceiling']:.0%}" if "ceiling" in r else "-"
        rows.append(f"| {r['rung']['name']} | {r['rung']['change']} | {steps} | **{r['all_correct']:.0%}** | "
                    f"{ceiling} | " + " | ".join(cells) + f" | {r['temporal']:.3f} | {r['word_swap']:+.0%} | "
                    f"{r['train_minutes']:.1f} |")
    return head + "\n".join(rows) + "\n"
