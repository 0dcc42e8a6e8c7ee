"""Reflow distillation: pairs are the teacher's own samples, resumable; the student starts as the teacher,
learns straight paths, and its model folder samples with few steps and no guidance."""

from __future__ import annotations

import json

import torch

from kinema.cli import main
from kinema.pipeline import TextToVideoPipeline


def test_distill_makes_pairs_trains_student_and_exports_few_step_folder(tiny_model_dir, tiny_latents, tmp_path):
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.pipeline import load_backbone
    from kinema.train.reflow import load_pairs, make_pairs

    out = tmp_path / "reflow"
    argv = ["dit", "distill", "--model", str(tiny_model_dir), "--latents", str(tiny_latents), "--out", str(out),
            "--pairs", "10", "--teacher-steps", "3", "--steps", "4", "--batch-size", "4"]
    assert main(argv) == 0
    files = sorted((out / "pairs").glob("pairs-*.safetensors"))
    z, x, idx, levels = load_pairs(files)
    assert z.shape == x.shape and z.shape[0] == 10 and len(idx) == len(levels) == 10
    # the pairs are the teacher's samples from exactly these noises and prompts
    data = LatentDataset(tiny_latents)
    again = make_pairs(load_backbone(tiny_model_dir), FlowObjective(), data, tmp_path / "again", 10, 3,
                       json.loads((tiny_model_dir / "model_index.json").read_text())["guidance"], progress=False)
    z2, x2, _, _ = load_pairs(again)
    assert torch.equal(z, z2) and torch.allclose(x, x2, atol=1e-5)
    student = TextToVideoPipeline.from_pretrained(out / "model")
    assert student.index.steps == 4 and student.index.guidance == 1.0
    teacher = load_backbone(tiny_model_dir)
    changed = any(not torch.equal(a, b) for a, b in zip(teacher.state_dict().values(),
                                                        student.dit.state_dict().values(), strict=True))
    assert changed
    assert student("a red circle", seed=0).shape[0] == 5
    mtime = files[0].stat().st_mtime_ns  # a re-run keeps the pairs already made
    assert main(argv) == 0 and files[0].stat().st_mtime_ns == mtime
