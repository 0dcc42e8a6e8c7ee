"""Captions of shapes-world scenes at four levels, and the parser that reads attributes back out.

Writing: `caption_scene(scene, rng)` -> {"short", "medium", "detailed", "free"}, phrasing varied by templates and
synonyms so that models learn meaning, not one sentence (free varies word order and sentence frame as well).
Reading: `parse_caption(text)` -> `ParsedCaption` with whatever attributes the text states. The parser is
shared by tests, evaluation (what did the prompt ask for?), the captioner's metrics and prompt expansion.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from kinema.data.world import RGB, Scene, position_name

# short/medium/detailed/free: written here for the shapes world (`caption_scene`); original: an ingested video's own
# caption; recaption: written by `kinema caption run`
SHAPES_LEVELS = ("short", "medium", "detailed", "free")
CAPTION_LEVELS = (*SHAPES_LEVELS, "original", "recaption")

# ---------------------------------------------------------------------------------------------------
# Synonyms: canonical name -> phrasings. The first phrasing is the canonical one.
# ---------------------------------------------------------------------------------------------------

SHAPE_WORDS = {"circle": ["circle", "disc", "ball"], "square": ["square", "box"],
               "triangle": ["triangle"], "diamond": ["diamond", "rhombus"]}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big"]}
SPEED_WORDS = {"slowly": ["slowly", "gently", "at a slow pace"], "quickly": ["quickly", "fast", "rapidly"]}
DIRECTION_WORDS = {"left": ["left", "to the left", "leftward"], "right": ["right", "to the right", "rightward"],
                   "up": ["up", "upward", "upwards"], "down": ["down", "downward", "downwards"]}
MOVE_VERBS = ["moving", "sliding", "drifting", "gliding", "traveling", "heading"]
MOVE_VERBS_3RD = ["moves", "slides", "drifts", "glides", "travels", "heads"]
STILL_PHRASES = ["staying still", "standing still", "not moving", "motionless", "holding still"]
STILL_PHRASES_3RD = ["stays still", "does not move", "remains stationary", "sits motionless", "holds still"]
BACKGROUND_WORDS = {"black": ["black"], "dark gray": ["dark gray", "dark grey"], "navy": ["navy", "navy blue"]}
POSITION_WORDS = {"top": ["top", "upper"], "bottom": ["bottom", "lower"]}


def _pick(rng: random.Random, options: list[str]) -> str:
    return options[rng.randrange(len(options))]


def article(word: str, capital: bool = False) -> str:
    """'a' or 'an' for the word that follows."""
    a = "an" if word[:1] in "aeiou" else "a"
    return a.capitalize() if capital else a


# ---------------------------------------------------------------------------------------------------
# Writing captions
# ---------------------------------------------------------------------------------------------------


def _motion_phrase(obj, rng: random.Random, third_person: bool) -> str:
    if obj.motion == "still":
        return _pick(rng, STILL_PHRASES_3RD if third_person else STILL_PHRASES)
    verb = _pick(rng, MOVE_VERBS_3RD if third_person else MOVE_VERBS)
    direction, speed = _pick(rng, DIRECTION_WORDS[obj.motion]), _pick(rng, SPEED_WORDS[obj.speed])
    return f"{verb} {speed} {direction}" if rng.random() < 0.5 else f"{verb} {direction} {speed}"


def _position_phrase(obj, scene: Scene, rng: random.Random) -> str:
    row, col = position_name(*obj.start, scene.width, scene.height)
    row_word = _pick(rng, POSITION_WORDS[row]) if row in POSITION_WORDS else ""
    if row == "middle" and col == "center":
        where, preps = "center", ["near", "in", "at"]
    elif row == "middle":
        where, preps = f"{col} side", ["near", "on", "at"]
    elif col == "center":
        where, preps = f"{row_word} edge", ["near", "at"]
    else:
        where, preps = f"{row_word} {col} corner", ["near", "in", "at"]
    return f"{_pick(rng, preps)} the {where}"


def medium_caption(scene: Scene, rng: random.Random) -> str:
    """e.g. "a large red circle moving left and a small blue square staying still, on a black background":
    every attribute the probe judges (size, color, shape, motion, speed, background), without positions."""
    parts = []
    for o in scene.objects:
        noun = f"{_pick(rng, SIZE_WORDS[o.size])} {o.color} {_pick(rng, SHAPE_WORDS[o.shape])}"
        parts.append(f"{article(noun)} {noun} {_motion_phrase(o, rng, False)}")
    objects = " and ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + " and " + parts[-1]
    background = _pick(rng, BACKGROUND_WORDS[scene.background])
    return f"{objects}, on a {background} {_pick(rng, ['background', 'backdrop'])}"


def _detailed_object(obj, scene: Scene, rng: random.Random, first: bool) -> str:
    noun = f"{_pick(rng, SIZE_WORDS[obj.size])} {obj.color} {_pick(rng, SHAPE_WORDS[obj.shape])}"
    det = article(noun, capital=first)
    where, motion = _position_phrase(obj, scene, rng), _motion_phrase(obj, rng, True)
    if obj.motion == "still":
        return f"{det} {noun} {motion} {where}"
    return f"{det} {noun} starts {where} and {motion}"


def detailed_caption(scene: Scene, rng: random.Random) -> str:
    """Every object with size, color, shape, start position, direction and speed, plus the background."""
    parts = [_detailed_object(o, scene, rng, i == 0) for i, o in enumerate(scene.objects)]
    joiner = _pick(rng, [", while ", "; meanwhile ", ", and "])
    background = _pick(rng, BACKGROUND_WORDS[scene.background])
    backdrop = _pick(rng, ["background", "backdrop"])
    return joiner.join(parts) + f", on a {background} {backdrop}."


def short_caption(scene: Scene, rng: random.Random) -> str:
    """Weak alt-text: often incomplete, sometimes only the background or one attribute."""
    obj = scene.objects[rng.randrange(len(scene.objects))]
    options = [
        f"a {obj.shape}",
        f"{article(obj.color)} {obj.color} shape",
        f"shapes on a dark {_pick(rng, ['background', 'backdrop'])}",
        f"a moving {obj.shape}" if obj.motion != "still" else f"a {obj.shape} on screen",
        f"{len(scene.objects)} object{'s' if len(scene.objects) > 1 else ''}",
        "simple shapes animation",
    ]
    return _pick(rng, options)


def _free_object(obj, rng: random.Random) -> str:
    """One object, its words in one of several orders: size before the color or after the noun, the motion as a
    participle or a relative clause, the speed before or after the verb."""
    size, shape = _pick(rng, SIZE_WORDS[obj.size]), _pick(rng, SHAPE_WORDS[obj.shape])
    # a size after the noun is closed by a comma: "a red box that is big, moving left"
    noun = _pick(rng, [f"{size} {obj.color} {shape}", f"{obj.color} {shape} that is {size},",
                       f"{obj.color} {shape} of {size} size,"])
    if obj.motion == "still":
        motion = _pick(rng, [f"that {_pick(rng, STILL_PHRASES_3RD)}", _pick(rng, STILL_PHRASES),
                             "staying in place", "which is stationary"])
    else:
        direction, speed = _pick(rng, DIRECTION_WORDS[obj.motion]), _pick(rng, SPEED_WORDS[obj.speed])
        verb, verb_3rd = _pick(rng, [*MOVE_VERBS, "going"]), _pick(rng, [*MOVE_VERBS_3RD, "goes"])
        motion = _pick(rng, [f"{verb} {direction} {speed}", f"{speed} {verb} {direction}",
                             f"that {verb_3rd} {direction} {speed}", f"which {speed} {verb_3rd} {direction}"])
    return f"{article(noun)} {noun} {motion}"


def free_caption(scene: Scene, rng: random.Random) -> str:
    """Every attribute the medium level states, phrased freely: word order, sentence frame and joiners vary, so a
    model trained on it reads meaning rather than one template (paraphrased prompts; `kinema.eval.adherence`'s
    paraphrase category uses other frames, not these)."""
    objects = [_free_object(o, rng) for o in scene.objects]
    joined = objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + _pick(
        rng, [" and ", ", plus ", "; also "]) + objects[-1]
    background = _pick(rng, BACKGROUND_WORDS[scene.background])
    backdrop = _pick(rng, ["background", "backdrop"])
    frame = _pick(rng, ["{o} on a {b} {d}", "a {b} {d} with {o}", "{B} {d}. {O}.", "video of {o}, {b} {d}",
                        "in this clip, {o}, against a {b} {d}", "{O}; the whole scene has a {b} {d}."])
    return frame.format(o=joined, O=joined[:1].upper() + joined[1:], b=background, B=background.capitalize(),
                        d=backdrop)


COUNT_WORDS = {1: "one object", 2: "two objects", 3: "three objects"}


def with_count(caption: str, count: int) -> str:
    """The caption opened by its number of objects: "two objects: a large red circle moving left and ..."."""
    if count not in COUNT_WORDS:
        raise ValueError(f"with_count: a count of 1 to 3 objects, got {count}")
    return f"{COUNT_WORDS[count]}: {caption[:1].lower()}{caption[1:]}"


def caption_scene(scene: Scene, rng: random.Random, state_count: bool = False) -> dict[str, str]:
    """Every level's caption of the scene; with `state_count`, each level but short (alt text, which has its own
    "2 objects" form) opens with the number of objects (`with_count`). The draws from rng are the same either way."""
    # free is drawn last, so the other levels are the same draws as before it existed
    captions = {"short": short_caption(scene, rng), "medium": medium_caption(scene, rng),
                "detailed": detailed_caption(scene, rng), "free": free_caption(scene, rng)}
    if state_count:
        captions |= {k: with_count(v, len(scene.objects)) for k, v in captions.items() if k != "short"}
    return captions


# ---------------------------------------------------------------------------------------------------
# Reading captions back
# ---------------------------------------------------------------------------------------------------


def _alternation(words: dict[str, list[str]]) -> str:
    """Regex alternation of all phrasings, longest first so that 'to the left' wins over 'left'."""
    phrases = sorted({p for ps in words.values() for p in ps}, key=len, reverse=True)
    return "|".join(re.escape(p) for p in phrases)


def _canonical(words: dict[str, list[str]], phrase: str | None) -> str | None:
    if phrase is None:
        return None
    return next(name for name, ps in words.items() if phrase in ps)


_COLOR_WORDS = {c: [c] for c in RGB}
_BACKGROUND_RE = re.compile(rf"\b({_alternation(BACKGROUND_WORDS)}|dark)\s+(?:background|backdrop|scene)\b")
_OBJECT_RE = re.compile(
    rf"\b(?:({_alternation(SIZE_WORDS)})\s+)?(?:({_alternation(_COLOR_WORDS)})\s+)?"
    rf"({_alternation(SHAPE_WORDS)}|shape|object)s?\b"
)
_MOVE_VERBS = "|".join(sorted({*MOVE_VERBS, *MOVE_VERBS_3RD, "move", "moves", "go", "goes", "going"}))
_DIRECTION_RE = re.compile(
    rf"\b(?:{_MOVE_VERBS})\s+(?:(?:{_alternation(SPEED_WORDS)})\s+)?({_alternation(DIRECTION_WORDS)})\b"
)
_STILL_RE = re.compile(r"\b(?:still|not moving|does not move|doesn't move|motionless|stationary|in place)\b")
_SPEED_RE = re.compile(rf"\b({_alternation(SPEED_WORDS)})\b")
_SIZE_RE = re.compile(rf"\b({_alternation(SIZE_WORDS)})\b")  # a size stated after the noun: "a red disc (large)"
_POSITION_RE = re.compile(
    r"\b(?:near|in|at|on|from) the (?:(top|upper|bottom|lower|middle)\s*)?(left|right|center|middle)?"
)


@dataclass
class ParsedObject:
    shape: str | None = None
    color: str | None = None
    size: str | None = None
    motion: str | None = None
    speed: str | None = None
    row: str | None = None  # start position: top / middle / bottom
    col: str | None = None  # start position: left / center / right

    def attributes(self) -> dict[str, str | None]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "motion": self.motion,
                "speed": self.speed}


@dataclass
class ParsedCaption:
    background: str | None = None
    objects: list[ParsedObject] = field(default_factory=list)


def _parse_position(segment: str) -> tuple[str | None, str | None]:
    m = _POSITION_RE.search(segment)
    if not m or not (m.group(1) or m.group(2)):
        return None, None
    row = {"upper": "top", "lower": "bottom"}.get(m.group(1), m.group(1))
    col = m.group(2)
    if col == "middle":
        row, col = row or "middle", "center"
    if row is None:
        row = "middle" if col in ("left", "right", "center") else None
    if row is not None and col is None:
        col = "center"
    return row, col


def _parse_object(match: re.Match, segment: str) -> ParsedObject:
    size, color, shape = match.groups()
    if size is None and (m := _SIZE_RE.search(segment)):  # "one white triangle, small in size"
        size = m.group(1)
    obj = ParsedObject(_canonical(SHAPE_WORDS, shape) if shape not in ("shape", "object") else None,
                       color, _canonical(SIZE_WORDS, size))
    if m := _DIRECTION_RE.search(segment):
        obj.motion = _canonical(DIRECTION_WORDS, m.group(1))
    elif _STILL_RE.search(segment):
        obj.motion = "still"
    if obj.motion not in (None, "still") and (m := _SPEED_RE.search(segment)):
        obj.speed = _canonical(SPEED_WORDS, m.group(1))
    obj.row, obj.col = _parse_position(segment)
    return obj


def parse_caption(text: str) -> ParsedCaption:
    """Attributes a caption states, object by object, in order of mention. Unstated ones are None."""
    text = text.lower()
    parsed = ParsedCaption()
    if m := _BACKGROUND_RE.search(text):
        parsed.background = _canonical(BACKGROUND_WORDS, m.group(1)) if m.group(1) != "dark" else None
        text = text[: m.start()] + " " * (m.end() - m.start()) + text[m.end():]
    mentions = list(_OBJECT_RE.finditer(text))
    for i, m in enumerate(mentions):
        if not any(m.groups()[:2]) and m.group(3) in ("shape", "object"):
            continue  # "shapes", "3 objects": no attribute of any one object
        end = mentions[i + 1].start() if i + 1 < len(mentions) else len(text)
        parsed.objects.append(_parse_object(m, text[m.end(): end]))
    return parsed
