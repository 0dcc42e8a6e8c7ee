"""Prompt expansion: a short user prompt -> a detailed caption like those the model was trained on.

Sora (like DALL-E 3) trains on detailed recaptions, so at inference a short prompt is first expanded into
that distribution. The default backend is grounded in the shapes world's vocabulary: it parses what the
user said, keeps every stated attribute, fills in the unstated ones plausibly (seeded, so the same prompt
expands the same way), and writes the caption with the training templates. When frames are given
(image-to-video, extension), `known` holds what they show (read by the caller, e.g. with the probe): the
unstated attributes come from it instead of chance, and the user's words still win. For real data, the same
interface talks to any LLM behind an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import json
import random
import re
import urllib.request
import zlib
from collections.abc import Container
from dataclasses import replace
from typing import Protocol

from kinema.data.captions import SIZE_WORDS, ParsedCaption, ParsedObject, detailed_caption, parse_caption
from kinema.data.world import BACKGROUNDS, COLORS, SHAPES, SIZE_RADIUS, ObjectSpec, Scene


class PromptExpander(Protocol):
    def expand(self, prompt: str, seed: int = 0, known: ParsedCaption | None = None) -> str: ...


# the start cell that keeps a moving object in frame longest: opposite its direction
_START_FOR_MOTION = {"left": (None, "right"), "right": (None, "left"), "up": ("bottom", None), "down": ("top", None)}
_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")


def _fill(obj: ParsedObject, rng: random.Random, used_colors: set[str],
          taken: Container[tuple[str, str]] = ()) -> ParsedObject:
    """A copy of obj with every unstated attribute chosen, stated ones untouched. An unstated start cell avoids
    the cells in `taken` (where earlier objects start) while a free one fits what is stated: the world never
    starts two objects on top of each other, so a caption that does is one the model never saw."""
    free = [c for c in COLORS if c not in used_colors] or list(COLORS)
    motion = obj.motion or rng.choice(["left", "right", "up", "down", "still"])
    row, col = obj.row, obj.col
    if row is None and col is None:
        row, col = _START_FOR_MOTION.get(motion, (None, None))
    filled = ParsedObject(shape=obj.shape or rng.choice(SHAPES), color=obj.color or rng.choice(free),
                          size=obj.size or rng.choice(["small", "large"]), motion=motion,
                          speed=obj.speed or (None if motion == "still" else rng.choice(["slowly", "quickly"])),
                          row=row or rng.choice(_ROWS), col=col or rng.choice(_COLS))
    if (filled.row, filled.col) in taken and not (obj.row and obj.col):
        cells = [(r, c) for r in ([row] if row else _ROWS) for c in ([col] if col else _COLS)]
        if free_cells := [cell for cell in cells if cell not in taken]:
            row, col = rng.choice(free_cells)
            filled = replace(filled, row=row, col=col)
    return filled


def _spec(obj: ParsedObject, height: int, width: int) -> ObjectSpec:
    x = (_COLS.index(obj.col) + 0.5) * width / 3
    y = (_ROWS.index(obj.row) + 0.5) * height / 3
    return ObjectSpec(obj.shape, obj.color, obj.size, obj.motion, obj.speed, (x, y), SIZE_RADIUS[obj.size] * height)


_ADJECTIVES = re.compile(r"\b(?:" + "|".join(sorted({*(w for ws in SIZE_WORDS.values() for w in ws), *COLORS},
                                                   key=len, reverse=True)) + r")\b", re.IGNORECASE)


def _with_noun(prompt: str, noun: str) -> str:
    """The prompt with a shape noun where its object would be: after its last size/color word ("a big orange
    keeps going" -> "a big orange circle keeps going"), else in front ("it keeps moving left")."""
    found = list(_ADJECTIVES.finditer(prompt))
    if not found:
        return f"a {noun} {prompt}"
    end = found[-1].end()
    return f"{prompt[:end]} {noun}{prompt[end:]}"


def ground(stated: ParsedCaption, known: ParsedCaption) -> ParsedCaption:
    """What the user stated, completed from what the given frames show. Each stated object takes the unstated
    attributes of the shown object it matches (same color, else same shape, else the next one shown: the user
is describing what the frames show, and their words win);
    with no object stated, the shown objects are the objects. Stated attributes are never changed."""
    background = stated.background or known.background
    if not stated.objects:
        return ParsedCaption(background, list(known.objects))
    pool, objects = list(known.objects), []
    for obj in stated.objects:
        match = next((k for k in pool if obj.color and k.color == obj.color), None) or \
            next((k for k in pool if obj.shape and k.shape == obj.shape), None) or (pool[0] if pool else None)
        if match is None:
            objects.append(obj)
            continue
        pool.remove(match)
        fill = {a: getattr(match, a) for a in ("shape", "color", "size", "row", "col") if getattr(obj, a) is None}
        if obj.motion is None and match.motion is not None:  # the frames show motion (extension)
            fill |= {"motion": match.motion, "speed": obj.speed or match.speed}
        objects.append(replace(obj, **fill))
    return ParsedCaption(background, objects)


class ShapesExpander:
    """Rule-based expansion in the shapes world's vocabulary."""

    def expand(self, prompt: str, seed: int = 0, known: ParsedCaption | None = None) -> str:
        parsed = parse_caption(prompt)
        if known is not None:
            if not parsed.objects and known.objects:  # "it keeps moving left": the words refer to what is shown
                words = parse_caption(_with_noun(prompt, known.objects[0].shape or "circle"))
                if words.objects:
                    parsed = ParsedCaption(parsed.background or words.background,
                                           [replace(words.objects[0], shape=None)] + list(words.objects[1:]))
            parsed = ground(parsed, known)
        if not parsed.objects:
            return prompt  # nothing we can ground: keep the user's words
        rng = random.Random(zlib.crc32(prompt.encode()) * 1000 + seed)
        objects, used, taken = [], set(), set()
        for obj in parsed.objects:
            filled = _fill(obj, rng, used, taken)
            used.add(filled.color)
            taken.add((filled.row, filled.col))
            objects.append(filled)
        background = parsed.background or rng.choice(list(BACKGROUNDS))
        scene = Scene(background, [_spec(o, 64, 64) for o in objects], 17, 64, 64, 8)
        return detailed_caption(scene, rng)


class OpenAIExpander:
    """Any chat model behind an OpenAI-compatible /v1/chat/completions endpoint (e.g. a local vLLM)."""

    SYSTEM = ("Rewrite the user's video prompt as one detailed caption in the style of the examples. Keep every "
              "detail the user gave; add plausible specifics for the rest. Answer with the caption only.")

    def __init__(self, base_url: str, model: str, examples: list[str] | None = None, api_key: str = "none",
                 timeout: float = 30.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.examples, self.api_key, self.timeout = model, examples or [], api_key, timeout

    def expand(self, prompt: str, seed: int = 0, known: ParsedCaption | None = None) -> str:
        shots = "\n".join(f"Example: {e}" for e in self.examples)
        if known is not None and known.objects:  # what the given frames show, for the model to keep
            prompt = f"{prompt}\n(The video starts from frames that show: {detailed_caption_of(known)})"
        body = {"model": self.model, "seed": seed, "temperature": 0.7,
                "messages": [{"role": "system", "content": f"{self.SYSTEM}\n{shots}"},
                             {"role": "user", "content": prompt}]}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.loads(response.read())
        return reply["choices"][0]["message"]["content"].strip()


def detailed_caption_of(parsed: ParsedCaption) -> str:
    """A plain description of parsed facts (for an LLM expander's context)."""
    parts = [" ".join(v for v in (o.size, o.color, o.shape, o.motion) if v) for o in parsed.objects]
    return "; ".join(parts) + (f"; {parsed.background} background" if parsed.background else "")


def expand_prompt(prompt: str, seed: int = 0, expander: PromptExpander | None = None,
                  known: ParsedCaption | None = None) -> str:
    return (expander or ShapesExpander()).expand(prompt, seed, known)
