"""Prompt expansion: a short user prompt -> a detailed caption like those the model was trained on.

Sora (like DALL-E 3) trains on detailed recaptions, so at inference a short prompt is first expanded into
that distribution. The default backend is grounded in the shapes world's vocabulary: it parses what the
user said, keeps every stated attribute, fills in the unstated ones plausibly (seeded, so the same prompt
expands the same way), and writes the caption with the training templates. For real data, the same
interface talks to any LLM behind an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import json
import random
import urllib.request
import zlib
from typing import Protocol

from kinema.data.captions import ParsedObject, detailed_caption, parse_caption
from kinema.data.world import BACKGROUNDS, COLORS, SHAPES, SIZE_RADIUS, ObjectSpec, Scene


class PromptExpander(Protocol):
    def expand(self, prompt: str, seed: int = 0) -> str: ...


# the start cell that keeps a moving object in frame longest: opposite its direction
_START_FOR_MOTION = {"left": (None, "right"), "right": (None, "left"), "up": ("bottom", None), "down": ("top", None)}
_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")


def _fill(obj: ParsedObject, rng: random.Random, used_colors: set[str]) -> ParsedObject:
    """A copy of obj with every unstated attribute chosen, stated ones untouched."""
    free = [c for c in COLORS if c not in used_colors] or list(COLORS)
    motion = obj.motion or rng.choice(["left", "right", "up", "down", "still"])
    row, col = obj.row, obj.col
    if row is None and col is None:
        row, col = _START_FOR_MOTION.get(motion, (None, None))
    return ParsedObject(shape=obj.shape or rng.choice(SHAPES), color=obj.color or rng.choice(free),
                        size=obj.size or rng.choice(["small", "large"]), motion=motion,
                        speed=obj.speed or (None if motion == "still" else rng.choice(["slowly", "quickly"])),
                        row=row or rng.choice(_ROWS), col=col or rng.choice(_COLS))


def _spec(obj: ParsedObject, height: int, width: int) -> ObjectSpec:
    x = (_COLS.index(obj.col) + 0.5) * width / 3
    y = (_ROWS.index(obj.row) + 0.5) * height / 3
    return ObjectSpec(obj.shape, obj.color, obj.size, obj.motion, obj.speed, (x, y), SIZE_RADIUS[obj.size] * height)


class ShapesExpander:
    """Rule-based expansion in the shapes world's vocabulary."""

    def expand(self, prompt: str, seed: int = 0) -> str:
        parsed = parse_caption(prompt)
        if not parsed.objects:
            return prompt  # nothing we can ground: keep the user's words
        rng = random.Random(zlib.crc32(prompt.encode()) * 1000 + seed)
        objects, used = [], set()
        for obj in parsed.objects:
            filled = _fill(obj, rng, used)
            used.add(filled.color)
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

    def expand(self, prompt: str, seed: int = 0) -> str:
        shots = "\n".join(f"Example: {e}" for e in self.examples)
        body = {"model": self.model, "seed": seed, "temperature": 0.7,
                "messages": [{"role": "system", "content": f"{self.SYSTEM}\n{shots}"},
                             {"role": "user", "content": prompt}]}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.loads(response.read())
        return reply["choices"][0]["message"]["content"].strip()


def expand_prompt(prompt: str, seed: int = 0, expander: PromptExpander | None = None) -> str:
    return (expander or ShapesExpander()).expand(prompt, seed)
