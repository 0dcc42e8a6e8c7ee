"""The shapes-world judge: read a clip, return what is in it (per object: color, shape, size, motion,
speed; plus background and object count), so generated videos can be checked against their prompts.

Exact geometry where it is reliable: every pixel is labelled with its nearest palette color; an object is
a color with enough pixels after a 1-pixel erosion (which removes anti-aliased seams between two shapes);
a scene's objects have distinct colors, so a color drawn as several separate blobs is several objects (copies
a model drew, or one object it split), and the count says so;
its centroid track gives motion and speed, its largest area the size. A small CNN, trained on rendered
shapes-world clips with degradations (`kinema eval train-probe`), reads the shape from the object's mask,
where geometry alone is fragile (small sizes, overlaps, blur).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kinema.data.world import BACKGROUNDS, COLORS, RGB, SHAPES

# the object colors the probe reads by default: the default world's; a world with a new color (data.world.NEW_COLORS)
# is read with `colors=` naming it, so a model that never saw it is not judged against a palette it cannot know
WORLD_COLORS = tuple(COLORS)
N_COLORS = len(COLORS)
CROP = 24  # shape classifier input: the object's mask resized to CROP x CROP
CROP_VIEWS = 4  # frames per object whose shape votes are averaged
SHAPE_WEIGHTS = Path(__file__).with_name("shape_probe.safetensors")


def palette(colors: tuple[str, ...] = WORLD_COLORS) -> torch.Tensor:
    """(len(colors) + 3, 3) RGB: the object colors, then the backgrounds (label k < len(colors) is colors[k])."""
    return torch.tensor([*(RGB[c] for c in colors), *BACKGROUNDS.values()], dtype=torch.float32)


@dataclass
class ProbedObject:
    color: str
    shape: str | None
    size: str
    motion: str
    speed: str | None
    area: float  # largest area over frames, pixels
    track: list[tuple[float, float]] = field(repr=False, default_factory=list)  # centroid (x, y) per frame
    presence: float = 1.0  # share of frames where the object is seen
    area_stability: float = 1.0  # 1 - coefficient of variation of its area over those frames
    pieces: int = 1  # separate blobs of its color (median over frames): >1 when a model draws copies or splits it


@dataclass
class ProbeResult:
    background: str
    objects: list[ProbedObject]

    @property
    def count(self) -> int:
        """Objects drawn: a world scene's colors are distinct, so copies of one color count once each."""
        return sum(o.pieces for o in self.objects)

    def temporal_consistency(self) -> float:
        """Mean over objects of presence x area stability: 1 when every object stays visible with a constant
        size from frame to frame (objects that flicker, vanish or morph score lower); 1 for an empty clip."""
        if not self.objects:
            return 1.0
        return sum(o.presence * max(0.0, o.area_stability) for o in self.objects) / len(self.objects)

    def by_color(self) -> dict[str, ProbedObject]:
        return {o.color: o for o in self.objects}


# ---------------------------------------------------------------------------------------------------
# Shape classifier
# ---------------------------------------------------------------------------------------------------


class ShapeNet(nn.Module):
    """(B, 1, 24, 24) soft mask -> (B, 4) shape logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, len(SHAPES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


_SHAPE_NET: ShapeNet | None = None


def shape_net() -> ShapeNet:
    """The packaged classifier (weights beside this file), loaded once."""
    global _SHAPE_NET
    if _SHAPE_NET is None:
        from safetensors.torch import load_file

        if not SHAPE_WEIGHTS.exists():
            raise FileNotFoundError(f"{SHAPE_WEIGHTS}: shape probe weights missing; run `kinema eval train-probe`")
        net = ShapeNet()
        net.load_state_dict(load_file(str(SHAPE_WEIGHTS)))
        _SHAPE_NET = net.eval()
    return _SHAPE_NET


def mask_crop(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) float mask of one object in one frame -> (1, CROP, CROP): its bounding square, resized."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if len(ys) == 0:
        return torch.zeros(1, CROP, CROP)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()).item() / 2 + 1.5
    theta = torch.tensor([[[half * 2 / mask.shape[1], 0, (2 * cx + 1) / mask.shape[1] - 1],
                           [0, half * 2 / mask.shape[0], (2 * cy + 1) / mask.shape[0] - 1]]], dtype=torch.float32)
    grid = F.affine_grid(theta, (1, 1, CROP, CROP), align_corners=False)
    return F.grid_sample(mask[None, None].float(), grid, align_corners=False)[0]


# ---------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------


def label_map(frames: np.ndarray | torch.Tensor, colors: tuple[str, ...] = WORLD_COLORS) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, H, W) index of the nearest palette color (objects first, then backgrounds)."""
    a = np.asarray(frames)
    x = torch.as_tensor(a if a.flags.writeable else a.copy()).float()  # a decoded frame buffer can be read-only
    d = ((x[..., None, :] - palette(colors)) ** 2).sum(-1)  # (F, H, W, colors + 3)
    return d.argmin(-1)


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """1-pixel erosion of (F, H, W) boolean masks (3x3 minimum)."""
    return -F.max_pool2d(-mask.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0.5


def _pieces(core: torch.Tensor, min_pixels: int) -> torch.Tensor:
    """(F, H, W) boolean masks -> (F,) number of 8-connected blobs of at least `min_pixels` pixels in each frame.
    Each pixel starts with its own id and takes its neighbourhood's largest until nothing changes (a blob's
    width in steps; a few dozen at 64x64)."""
    F_, H, W = core.shape
    ids = torch.arange(1, H * W + 1, dtype=torch.float32).view(1, H, W).expand(F_, H, W)  # exact in float32
    label = torch.where(core, ids, 0.0)
    while True:
        grown = torch.where(core, F.max_pool2d(label[:, None], 3, stride=1, padding=1)[:, 0], 0.0)
        if torch.equal(grown, label):
            break
        label = grown
    return torch.tensor([int((label[f][core[f]].unique(return_counts=True)[1] >= min_pixels).sum())
                         for f in range(F_)])


def _motion(track: torch.Tensor, height: int) -> tuple[str, str | None]:
    """Least-squares velocity of a (F, 2) centroid track -> (direction, speed)."""
    if track.shape[0] < 2:
        return "still", None
    t = torch.arange(track.shape[0], dtype=torch.float32)
    t = t - t.mean()
    v = (t[:, None] * (track - track.mean(0))).sum(0) / (t * t).sum()  # (vx, vy) px/frame
    vx, vy = v.tolist()
    speed = max(abs(vx), abs(vy))
    if speed < 0.3 * height / 64:
        return "still", None
    direction = ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")
    return direction, "quickly" if speed > 1.5 * height / 64 else "slowly"


def _size(area: float, height: int) -> str:
    """Small shapes cover at most ~90 px at 64x64, large ones at least ~148 (a large triangle)."""
    return "large" if area > 118 * (height / 64) ** 2 else "small"


def find_objects(frames: np.ndarray | torch.Tensor,
                 colors: tuple[str, ...] = WORLD_COLORS) -> tuple[ProbeResult, list[torch.Tensor]]:
    """Geometry only: background and objects (shape left None), with each object's mask crops
    (V, 1, CROP, CROP) from the V <= CROP_VIEWS frames where it covers most pixels."""
    labels = label_map(frames, colors)  # (F, H, W)
    F_, H, W = labels.shape
    n_colors = len(colors)
    counts = torch.stack([(labels == n_colors + b).sum((1, 2)) for b in range(len(BACKGROUNDS))], 1)  # (F, 3)
    background = list(BACKGROUNDS)[int(counts.sum(0).argmax())]
    min_pixels = max(2, round(3 * (H / 64) ** 2))  # a small triangle keeps ~6 px after erosion
    objects, crops = [], []
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    for k, color in enumerate(colors):
        mask = labels == k  # (F, H, W)
        core = _erode(mask)
        present = core.sum((1, 2)) >= min_pixels
        if present.sum() < max(1, F_ // 3):
            continue
        m = mask[present].float()
        n = m.sum((1, 2))
        track = torch.stack([(m * xs).sum((1, 2)) / n, (m * ys).sum((1, 2)) / n], 1)  # (F', 2)
        motion, speed = _motion(track, H)
        area = float(n.max())
        stability = 1.0 - float(n.std() / n.mean()) if len(n) > 1 else 1.0
        pieces = max(1, int(_pieces(core[present], min_pixels).median()))  # lower median: a brief overlap is one
        objects.append(ProbedObject(color, None, _size(area, H), motion, speed, area, track.tolist(),
                                    float(present.float().mean()), stability, pieces))
        views = n.argsort(descending=True)[:CROP_VIEWS]  # the frames where the object is least occluded
        crops.append(torch.stack([mask_crop(m[int(v)]) for v in views]))
    return ProbeResult(background, objects), crops


def probe_clip(frames: np.ndarray | torch.Tensor, colors: tuple[str, ...] = WORLD_COLORS) -> ProbeResult:
    """Read a (F, H, W, 3) uint8 clip: geometry, then the shape classifier on each object's mask. `colors`: the
    object colors to look for (the default world's unless a new color is being judged)."""
    result, crops = find_objects(frames, colors)
    with torch.no_grad():
        for obj, views in zip(result.objects, crops, strict=True):
            obj.shape = SHAPES[int(shape_net()(views).log_softmax(-1).mean(0).argmax())]
    return result


# ---------------------------------------------------------------------------------------------------
# Features for the Fréchet distance (an FVD analogue for the shapes world)
# ---------------------------------------------------------------------------------------------------


def probe_features(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """A fixed-length description of a clip: per palette color its share of pixels, centroid at the first
    and last frame and velocity; plus the background one-hot and pixel statistics. (8*6 + 3 + 7,) float."""
    a = np.asarray(frames)
    x = torch.as_tensor(a if a.flags.writeable else a.copy()).float() / 255.0  # (F, H, W, 3); a copy if read-only
    labels = label_map(frames)
    F_, H, W = labels.shape
    ys, xs = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    feats = []
    for k in range(N_COLORS):
        m = (labels == k).float()
        n = m.sum((1, 2))
        share = n / (H * W)
        safe = n.clamp(min=1)
        cx, cy = (m * xs).sum((1, 2)) / safe, (m * ys).sum((1, 2)) / safe
        seen = n > 0
        first, last = (int(seen.nonzero()[0]), int(seen.nonzero()[-1])) if seen.any() else (0, 0)
        span = max(1, last - first)
        feats += [share.mean().item(), cx[first].item(), cy[first].item(), cx[last].item(),
                  ((cx[last] - cx[first]) / span).item() * F_, ((cy[last] - cy[first]) / span).item() * F_]
    bg = torch.stack([(labels == N_COLORS + b).float().mean() for b in range(len(BACKGROUNDS))])
    stats = torch.cat([x.mean((0, 1, 2)), x.std((0, 1, 2)), x.diff(dim=0).abs().mean().view(1)
                       if F_ > 1 else torch.zeros(1)])
    return np.asarray(feats + bg.tolist() + stats.tolist(), dtype=np.float64)
