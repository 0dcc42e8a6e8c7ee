"""Few-step generation by rectified-flow reflow (Liu et al., "Flow Straight and Fast"; InstaFlow).

    kinema dit distill --model TEACHER --latents LATENTS --out RUN [--pairs 1024 --teacher-steps 16]

1. pairs: the teacher (a flow model, classifier-free guidance on) turns seeded noise z into a latent x for
   prompts drawn from the latent cache's captions; (z, x, prompt) saved in chunks (resumable, atomic)
2. student = a copy of the teacher, trained by flow matching on the straight lines between each z and its x:
   x_s = (1 - s) x + s z, target velocity z - x. Its paths become straight, so a few Euler steps suffice;
   guidance is baked in (the pairs were made with it), so the student samples with guidance 1: one model
   call per step instead of two
3. the student's model folder: the teacher's, with the new DiT and defaults steps=4, guidance=1
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kinema.config import to_dict
from kinema.data.latents import LatentDataset
from kinema.diffusion.samplers import classifier_free_guidance, sample
from kinema.io.weights import load_weights, save_weights
from kinema.model_index import read_model_index, write_model_index
from kinema.train.distributed import DistInfo

PAIR_LEVELS = ("detailed", "medium")  # prompts like the ones users (and prompt expansion) write


@torch.no_grad()
def make_pairs(teacher: nn.Module, objective, data: LatentDataset, out: Path, n: int, steps: int, guidance: float,
               chunk: int = 64, seed: int = 0, progress: bool = True) -> list[Path]:
    """Teacher samples for n seeded noises and prompts, in files of `chunk` pairs; existing files are kept."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for c in tqdm(range(0, n, chunk), desc="reflow pairs", disable=not progress):
        path = out / f"pairs-{c // chunk:05d}.safetensors"
        files.append(path)
        if path.exists():
            continue
        rng = random.Random(seed * 1_000_003 + c)
        idx = [rng.randrange(len(data)) for _ in range(min(chunk, n - c))]
        levels = [rng.choice([lv for lv in PAIR_LEVELS if lv in data.text]) for _ in idx]
        b = data.gather(idx, levels)
        text = b.text * b.mask[..., None]
        g = torch.Generator().manual_seed(seed * 7919 + c)
        z = torch.randn(b.latents.shape, generator=g)
        null = (torch.zeros_like(text[:, :1]), torch.zeros_like(b.mask[:, :1]))
        fn = classifier_free_guidance(teacher, {"text": text, "text_mask": b.mask},
                                      {"text": null[0], "text_mask": null[1]}, guidance)
        x = sample(objective, fn, z.clone(), steps, "euler")
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"z": z, "x": x.float(), "index": torch.tensor(idx)}, str(tmp),
                  metadata={"levels": json.dumps(levels), "teacher_steps": str(steps), "guidance": str(guidance)})
        tmp.replace(path)
    return files


def load_pairs(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
    from safetensors import safe_open

    zs, xs, idx, levels = [], [], [], []
    for f in files:
        t = load_file(str(f))
        zs.append(t["z"])
        xs.append(t["x"])
        idx += t["index"].tolist()
        with safe_open(str(f), framework="pt") as h:
            levels += json.loads(h.metadata()["levels"])
    return torch.cat(zs), torch.cat(xs), idx, levels


@dataclass
class ReflowTask:
    teacher_dir: Path
    data: LatentDataset
    z: torch.Tensor  # (N, C, F, H, W) noise
    x: torch.Tensor  # (N, C, F, H, W) the teacher's sample from it
    index: list[int]  # the clip whose caption prompted pair i
    levels: list[str]
    batch_size: int
    grad_accum: int = 1
    seed: int = 0
    name: str = "reflow"

    def build_model(self) -> nn.Module:
        from kinema.pipeline import load_backbone

        return load_backbone(self.teacher_dir).train()

    def model_config(self) -> dict:
        return {"dit": json.loads((self.teacher_dir / "dit.json").read_text()), "teacher": str(self.teacher_dir)}

    def tokens_per_sample(self) -> int:
        pt, ph, pw = json.loads((self.teacher_dir / "dit.json").read_text()).get("patch", (1, 1, 1))
        c, f, h, w = self.z.shape[1:]
        return (f // pt) * (h // ph) * (w // pw)

    def batch(self, step: int, micro: int, info: DistInfo) -> dict:
        from kinema.data.buckets import batch_indices

        rows = batch_indices(len(self.z), self.seed, step, micro, self.grad_accum, info.rank, info.world_size,
                             self.batch_size)
        b = self.data.gather([self.index[r] for r in rows], [self.levels[r] for r in rows])
        return {"z": self.z[rows].to(info.device), "x": self.x[rows].to(info.device),
                "text": (b.text * b.mask[..., None]).to(info.device), "text_mask": b.mask.to(info.device)}

    def loss(self, model: nn.Module, batch: dict, generator: torch.Generator):
        z, x = batch["z"], batch["x"]
        s = torch.rand(x.shape[0], generator=generator, device=x.device)
        xs = (1 - s.view(-1, 1, 1, 1, 1)) * x + s.view(-1, 1, 1, 1, 1) * z
        pred = model(xs, s, text=batch["text"], text_mask=batch["text_mask"])
        return (pred.float() - (z - x).float()).pow(2).mean(), {}

    def samples(self, model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        return []

    def start(self, out_dir: Path) -> None:
        """The teacher's model folder, few-step defaults, no DiT weights yet (`kinema dit export --run` adds a
        checkpoint's)."""
        folder = out_dir / "model"
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("vae.safetensors", "vae.json"):
            shutil.copyfile(self.teacher_dir / name, folder / name)
        distilled = {"method": "reflow", "teacher": str(self.teacher_dir), "pairs": len(self.z)}
        write_model_index(folder, read_model_index(self.teacher_dir).replace(steps=4, guidance=1.0,
                                                                            distilled=distilled))

    def export(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> Path:
        """The teacher's model folder with the student's weights and few-step defaults."""
        self.start(out_dir)
        _, cfg = load_weights(self.teacher_dir, "dit")
        return save_weights(out_dir / "model", "dit", state_dict, cfg)


def distill(teacher_dir: str | Path, latents: str | Path, out: str | Path, train_cfg, pairs: int = 1024,
            teacher_steps: int = 16, guidance: float | None = None, seed: int = 0) -> Path | None:
    from kinema.diffusion.objectives import objective_from_dict
    from kinema.pipeline import load_backbone
    from kinema.train.loop import train

    teacher_dir, out = Path(teacher_dir), Path(out)
    index = read_model_index(teacher_dir)
    objective = objective_from_dict(index.objective)
    if objective.kind != "flow":
        raise ValueError(f"{teacher_dir}: reflow needs a flow-matching teacher, this one is {objective.kind!r}")
    if objective.prediction != "velocity":
        raise ValueError(f"{teacher_dir}: reflow trains a velocity student; this teacher predicts "
                         f"{objective.prediction!r}")
    data = LatentDataset(latents)
    guidance = index.guidance if guidance is None else guidance
    files = make_pairs(load_backbone(teacher_dir), objective, data, out / "pairs", pairs, teacher_steps, guidance,
                       seed=seed)
    z, x, idx, levels = load_pairs(files)
    task = ReflowTask(teacher_dir, data, z, x, idx, levels, train_cfg.batch_size, train_cfg.grad_accum, seed)
    (out / "distill.json").write_text(json.dumps({"teacher": str(teacher_dir), "pairs": pairs, "teacher_steps":
                                                  teacher_steps, "guidance": guidance, "train": to_dict(train_cfg)}))
    return train(task, train_cfg, out).exported
