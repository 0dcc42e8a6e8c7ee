"""Slow: 2-process torchrun (gloo on CPU) DDP and FSDP2 against a 1-process run with the same global batch
(gradient accumulation 2 x batch 2 = 2 ranks x batch 2): same samples, same noise, so the losses match."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from kinema.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def _kinema(args: list[str], nproc: int = 1) -> None:
    """`kinema ARGS` in one process, or in `nproc` under torchrun."""
    args = ["-m", "kinema.cli", *args]
    if nproc > 1:
        torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), *args]
    else:
        cmd = [sys.executable, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _run(latents, out, extra, nproc=1):
    _kinema(["dit", "train", "--latents", str(latents), "--preset", "tiny", "--out", str(out), "--steps", "12",
             "--batch-size", "2", "--no-bf16", "--ckpt-every", "12", *extra], nproc)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return losses, load_checkpoint(out / "checkpoints" / "step-0000012.safetensors")["model"]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_run_matches_one_process(tiny_latents, tmp_path, mode):
    ref_losses, ref_model = _run(tiny_latents, tmp_path / "one", ["--grad-accum", "2"])
    losses, model = _run(tiny_latents, tmp_path / mode, ["--parallel", mode], nproc=2)
    assert losses == pytest.approx(ref_losses, rel=1e-4)
    for k in ref_model:
        assert torch.allclose(model[k], ref_model[k], atol=1e-5, rtol=1e-4), k


def test_lora_finetune_under_two_process_ddp_matches_one_process(tiny_model_dir, tiny_latents, tmp_path):
    def run(out, extra, nproc=1):
        from safetensors.torch import load_file

        _kinema(["dit", "finetune", "--lora", "4", "--model", str(tiny_model_dir), "--latents", str(tiny_latents),
                 "--out", str(out), "--steps", "6", "--batch-size", "2", "--no-bf16", "--ckpt-every", "6", *extra],
                nproc)
        return load_file(str(out / "adapter.safetensors"))

    one = run(tmp_path / "one", ["--grad-accum", "2"])
    two = run(tmp_path / "ddp", ["--parallel", "ddp"], nproc=2)
    assert one.keys() == two.keys() and any(v.abs().sum() > 0 for k, v in one.items() if k.endswith("lora_B"))
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k
