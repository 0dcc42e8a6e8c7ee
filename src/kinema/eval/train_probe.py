"""Train the probe's shape classifier on rendered shapes-world clips (clean and degraded), and validate the
whole probe per attribute. `kinema eval train-probe` writes the packaged weights."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kinema.data.shards import make_clip
from kinema.data.world import SHAPES, WorldConfig
from kinema.eval.degrade import degrade, random_degrade
from kinema.eval.probe import SHAPE_WEIGHTS, ShapeNet, find_objects, probe_clip

ATTRIBUTES = ("count", "background", "color", "shape", "size", "motion", "speed")


def _crops_and_labels(n_clips: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for i in range(n_clips):
        size = int(rng.choice([48, 64, 96]))
        frames, scene = make_clip(WorldConfig(frames=9, height=size, width=size), seed * 1_000_000 + i)
        frames = random_degrade(frames.numpy(), rng) if rng.random() < 0.7 else frames.numpy()
        result, found = find_objects(frames)
        truth = {o.color: o.shape for o in scene.objects}
        for obj, views in zip(result.objects, found, strict=True):
            if obj.color in truth:
                crops += list(views)
                labels += [SHAPES.index(truth[obj.color])] * len(views)
    return torch.stack(crops), torch.tensor(labels)


def train_shape_classifier(n_clips: int = 3000, epochs: int = 12, seed: int = 0, out: Path = SHAPE_WEIGHTS) -> float:
    """Train ShapeNet; returns held-out accuracy. Writes safetensors weights to `out`."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    x, y = _crops_and_labels(n_clips, seed)
    x_val, y_val = _crops_and_labels(max(200, n_clips // 10), seed + 1)
    net = ShapeNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            b = perm[i:i + 128]
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x_val).argmax(-1) == y_val).float().mean().item()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    import kinema.eval.probe as probe

    probe._SHAPE_NET = None  # reload the new weights on next use
    return acc


def validate_probe(n: int = 300, seed: int = 10_000, degradations=("clean", "blur", "noise", "blur+noise"),
                   transform=None) -> dict[str, dict[str, float]]:
    """Per degradation, the probe's accuracy per attribute on held-out rendered clips (17x64x64).
    `transform(frames) -> frames` adds a custom degradation (e.g. a VAE round trip) as 'custom'."""
    cfg = WorldConfig()
    kinds = list(degradations) + (["custom"] if transform else [])
    hits: dict[str, dict[str, list[bool]]] = {k: defaultdict(list) for k in kinds}
    from tqdm import tqdm

    for i in tqdm(range(n), desc="probe", unit="clip"):
        frames, scene = make_clip(cfg, seed + i)
        for kind in kinds:
            clip = transform(frames.numpy()) if kind == "custom" else degrade(frames.numpy(), kind, seed + i)
            result = probe_clip(clip)
            _score(result, scene, hits[kind])
    return {k: {a: float(np.mean(v)) for a, v in h.items()} for k, h in hits.items()}


def _score(result, scene, hits: dict[str, list[bool]]) -> None:
    """The adherence verdicts (speed only for moving objects), added to `hits`."""
    from kinema.eval.adherence import score

    for attr, verdicts in score(result, scene.to_dict()).items():
        hits[attr] += verdicts
