"""The shapes world: procedural clips with exact ground truth (its specification is this module: WorldConfig and
the vocabularies below).

A clip is 1 to 3 flat-colored shapes moving in straight lines over a flat background. Everything is
derived from a `Scene` record, so captions can be checked and generated videos can be judged.

    cfg = WorldConfig(frames=17, height=64, width=64)
    scene = sample_scene(cfg, seed=0)
    frames = render(scene)            # (F, H, W, 3) uint8
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field

import torch

# ---------------------------------------------------------------------------------------------------
# Vocabulary: the exact palette and attribute names of the world
# ---------------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 200, 60),
    "cyan": (30, 210, 220),
    "blue": (40, 80, 235),
    "purple": (160, 60, 220),
    "white": (240, 240, 240),
}
# colors outside the default world: concepts the bundled model has never seen, for teaching one to it (LoRA,
# docs/experiments/lora.md); chosen where the bundled VAE reproduces them (a pure magenta comes back purple)
NEW_COLORS: dict[str, tuple[int, int, int]] = {
    "pink": (250, 110, 180),
}
RGB = {**COLORS, **NEW_COLORS}  # every color a world can render
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "dark gray": (64, 64, 64),
    "navy": (20, 20, 80),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
MOTIONS = ("left", "right", "up", "down", "still")
SPEEDS = ("slowly", "quickly")

SIZE_RADIUS = {"small": 1 / 12, "large": 1 / 6}  # circumradius as a fraction of H
SPEED_PX = {"slowly": 1 / 64, "quickly": 1 / 32}  # pixels per frame as a fraction of H
DIRECTION = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}


def check_new_color(name: str, what: str) -> str:
    """`name` if it is a color outside the default world (NEW_COLORS); else an error naming `what` gave it."""
    if name not in NEW_COLORS:
        raise ValueError(f"{what}: {name!r} is not a color outside the default world; expected one of "
                         f"{list(NEW_COLORS)} (kinema.data.world.NEW_COLORS)")
    return name


def _check_names(field_name: str, given: tuple[str, ...], allowed: tuple[str, ...] | list[str]) -> None:
    for name in given:
        if name not in allowed:
            raise ValueError(f"WorldConfig.{field_name}: unknown name {name!r}; expected one of {list(allowed)}")


@dataclass(frozen=True)
class WorldConfig:
    """What clips the world makes. Every field is validated here, with errors that name the field."""

    frames: int = 17
    height: int = 64
    width: int = 64
    fps: int = 8
    min_objects: int = 1
    max_objects: int = 3
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    sizes: tuple[str, ...] = SIZES
    motions: tuple[str, ...] = MOTIONS
    speeds: tuple[str, ...] = SPEEDS
    holdout: tuple[str, ...] = ()  # "color shape" pairs never generated, e.g. ("yellow triangle",)
    # teaching a new concept with replay of the rest: this share of clips has a first object of one of the
    # `featured` colors, the other clips none of them
    featured: tuple[str, ...] = ()
    featured_share: float = 0.0
    # every caption level but short opens with the number of objects ("two objects: a large red circle ..."), so
    # the count is a word of the caption and not only the number of object phrases in it
    state_count: bool = False

    def __post_init__(self) -> None:
        for name in ("shapes", "colors", "backgrounds", "sizes", "motions", "speeds", "holdout", "featured"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_names("shapes", self.shapes, SHAPES)
        _check_names("colors", self.colors, list(RGB))
        _check_names("featured", self.featured, self.colors)
        if not 0.0 <= self.featured_share <= 1.0 or (self.featured_share > 0) != bool(self.featured):
            raise ValueError(f"WorldConfig.featured_share: need a share in [0, 1], above 0 exactly when featured "
                             f"colors are given, got {self.featured_share} with featured={list(self.featured)}")
        if self.featured and len(self.colors) - len(self.featured) < self.max_objects:
            raise ValueError(f"WorldConfig.featured: clips without a featured color need max_objects "
                             f"({self.max_objects}) other colors, got {len(self.colors) - len(self.featured)}")
        _check_names("backgrounds", self.backgrounds, list(BACKGROUNDS))
        _check_names("sizes", self.sizes, SIZES)
        _check_names("motions", self.motions, MOTIONS)
        _check_names("speeds", self.speeds, SPEEDS)
        for pair in self.holdout:
            color, _, shape = pair.partition(" ")
            if color not in RGB or shape not in SHAPES:
                raise ValueError(f"WorldConfig.holdout: {pair!r} is not a 'color shape' pair like 'red circle'")
        if self.frames < 1 or self.height < 16 or self.width < 16:
            raise ValueError(f"WorldConfig: need frames >= 1 and height, width >= 16, got "
                             f"{self.frames}x{self.height}x{self.width}")
        if not 1 <= self.min_objects <= self.max_objects <= len(self.colors):
            raise ValueError(f"WorldConfig: need 1 <= min_objects <= max_objects <= number of colors "
                             f"({len(self.colors)}), got {self.min_objects}..{self.max_objects}")
        if any(not getattr(self, n) for n in ("shapes", "colors", "backgrounds", "sizes", "motions", "speeds")):
            raise ValueError("WorldConfig: every attribute list needs at least one name")

    @classmethod
    def from_dict(cls, d: dict) -> WorldConfig:
        from kinema.config import from_dict

        return from_dict(cls, d)


# ---------------------------------------------------------------------------------------------------
# Scene records: the ground truth of one clip
# ---------------------------------------------------------------------------------------------------


def pixel_velocity(motion: str, speed: str | None, height: int) -> tuple[float, float]:
    """(vx, vy) in pixels per frame of an object moving `motion` at `speed` (None: it does not move) in a clip
    `height` pixels high."""
    dx, dy = DIRECTION[motion]
    step = SPEED_PX[speed] * height if speed else 0.0
    return dx * step, dy * step


@dataclass
class ObjectSpec:
    shape: str
    color: str
    size: str
    motion: str  # left / right / up / down / still
    speed: str | None  # slowly / quickly; None when still
    start: tuple[float, float]  # (x, y) center in pixels at frame 0
    radius: float  # circumradius in pixels

    def velocity(self, height: int) -> tuple[float, float]:
        """(vx, vy) in pixels per frame."""
        return pixel_velocity(self.motion, self.speed, height)

    def centers(self, frames: int, height: int) -> torch.Tensor:
        """(F, 2) center (x, y) per frame."""
        vx, vy = self.velocity(height)
        t = torch.arange(frames, dtype=torch.float32)
        return torch.stack([self.start[0] + vx * t, self.start[1] + vy * t], dim=1)


@dataclass
class Scene:
    background: str
    objects: list[ObjectSpec]
    frames: int
    height: int
    width: int
    fps: int
    seed: int | None = None
    captions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        objects = [ObjectSpec(**{**o, "start": tuple(o["start"])}) for o in d["objects"]]
        return cls(**{**d, "objects": objects})


def position_name(x: float, y: float, width: int, height: int) -> tuple[str, str]:
    """(row, column) of a point on a 3x3 grid: row in top/middle/bottom, column in left/center/right."""
    row = "top" if y < height / 3 else "bottom" if y > 2 * height / 3 else "middle"
    col = "left" if x < width / 3 else "right" if x > 2 * width / 3 else "center"
    return row, col


# ---------------------------------------------------------------------------------------------------
# Sampling scenes
# ---------------------------------------------------------------------------------------------------


def _start_range(extent: int, radius: float, shift: float) -> tuple[float, float]:
    """Interval of start coordinates keeping the center inside [radius, extent - radius] all clip long.

    When the path is longer than the room (long clips), the margin shrinks so that the object still
    stays mostly inside the frame."""
    for margin in (radius, radius / 2, 0.0):
        lo, hi = margin - min(shift, 0.0), extent - margin - max(shift, 0.0)
        if lo <= hi:
            return lo, hi
    mid = (extent - shift) / 2
    return mid, mid


def _sample_object(rng: random.Random, cfg: WorldConfig, color: str) -> ObjectSpec:
    shapes = [s for s in cfg.shapes if f"{color} {s}" not in cfg.holdout] or list(cfg.shapes)
    size, motion = rng.choice(cfg.sizes), rng.choice(cfg.motions)
    speed = None if motion == "still" else rng.choice(cfg.speeds)
    radius = SIZE_RADIUS[size] * cfg.height
    obj = ObjectSpec(rng.choice(shapes), color, size, motion, speed, (0.0, 0.0), radius)
    vx, vy = obj.velocity(cfg.height)
    x_lo, x_hi = _start_range(cfg.width, radius, vx * (cfg.frames - 1))
    y_lo, y_hi = _start_range(cfg.height, radius, vy * (cfg.frames - 1))
    obj.start = (round(rng.uniform(x_lo, x_hi), 2), round(rng.uniform(y_lo, y_hi), 2))
    return obj


def _overlap(a: ObjectSpec, b: ObjectSpec, cfg: WorldConfig) -> bool:
    """Whether two objects overlap much at the first or the last frame."""
    ca, cb = a.centers(cfg.frames, cfg.height), b.centers(cfg.frames, cfg.height)
    gap = (ca[[0, -1]] - cb[[0, -1]]).norm(dim=1)
    return bool((gap < 0.8 * (a.radius + b.radius)).any())


def sample_scene(cfg: WorldConfig, seed: int) -> Scene:
    """A random scene, a pure function of (cfg, seed). Objects have distinct colors and, where a few
    tries allow it, do not overlap at the start or end of the clip."""
    rng = random.Random(seed)
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    background = rng.choice(cfg.backgrounds)
    if not cfg.featured:
        colors = rng.sample(list(cfg.colors), n)
    else:  # a featured color first in featured_share of the clips, none in the others
        others = [c for c in cfg.colors if c not in cfg.featured]
        lead = [rng.choice(cfg.featured)] if rng.random() < cfg.featured_share else []
        colors = lead + rng.sample(others, n - len(lead))
    objects: list[ObjectSpec] = []
    for color in colors:
        for _ in range(20):
            obj = _sample_object(rng, cfg, color)
            if not any(_overlap(obj, other, cfg) for other in objects):
                break
        objects.append(obj)
    return Scene(background, objects, cfg.frames, cfg.height, cfg.width, cfg.fps, seed)


# ---------------------------------------------------------------------------------------------------
# Rendering: signed distances on a pixel grid, all frames at once
# ---------------------------------------------------------------------------------------------------

_TRIANGLE_NORMALS = torch.tensor(  # outward edge normals of an upward-pointing equilateral triangle
    [[math.cos(a), math.sin(a)] for a in (math.pi / 2, math.pi * 7 / 6, -math.pi / 6)]
)


def signed_distance(shape: str, dx: torch.Tensor, dy: torch.Tensor, radius: float) -> torch.Tensor:
    """Signed distance in pixels (negative inside) from offsets (dx, dy) to a shape of circumradius r."""
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - radius
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - radius / math.sqrt(2)
    if shape == "diamond":
        return (dx.abs() + dy.abs() - radius) / math.sqrt(2)
    if shape == "triangle":
        n = _TRIANGLE_NORMALS.to(dx)
        planes = dx[..., None] * n[:, 0] + dy[..., None] * n[:, 1]  # (..., 3)
        return planes.amax(dim=-1) - radius / 2
    raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


def object_coverage(obj: ObjectSpec, frames: int, height: int, width: int) -> torch.Tensor:
    """(F, H, W) anti-aliased coverage in [0, 1]: 1 inside, a one-pixel ramp at the edge."""
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    c = obj.centers(frames, height)  # (F, 2)
    dx = xs[None, None, :] - c[:, 0, None, None]  # (F, 1, W)
    dy = ys[None, :, None] - c[:, 1, None, None]  # (F, H, 1)
    dx, dy = torch.broadcast_tensors(dx, dy)  # (F, H, W)
    return (0.5 - signed_distance(obj.shape, dx, dy, obj.radius)).clamp(0.0, 1.0)


def render(scene: Scene) -> torch.Tensor:
    """(F, H, W, 3) uint8 frames of a scene; objects are painted in list order (later on top)."""
    F, H, W = scene.frames, scene.height, scene.width
    img = torch.tensor(BACKGROUNDS[scene.background], dtype=torch.float32).expand(F, H, W, 3).clone()
    for obj in scene.objects:
        alpha = object_coverage(obj, F, H, W)[..., None]  # (F, H, W, 1)
        color = torch.tensor(RGB[obj.color], dtype=torch.float32)
        img = img * (1 - alpha) + color * alpha
    return img.round().to(torch.uint8)
