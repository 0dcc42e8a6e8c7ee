import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kinema.config import TrainConfig
from kinema.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from kinema.train.loop import lr_at


def _train_cmd(latents, out, steps):
    return [sys.executable, "-m", "kinema.cli", "dit", "train", "--latents", str(latents), "--preset", "tiny",
            "--out", str(out), "--steps", str(steps), "--ckpt-every", "50", "--batch-size", "4"]


def test_kill_9_after_a_checkpoint_then_resume_is_bit_identical(tiny_latents, tmp_path):
    steps = 300
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tiny_latents, tmp_path / "straight", steps), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_train_cmd(tiny_latents, tmp_path / "killed", steps), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while latest_checkpoint(ckpt_dir) is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(latest_checkpoint(ckpt_dir))["step"]
    assert killed_at < steps, "the run finished before it could be killed"
    subprocess.run(_train_cmd(tiny_latents, tmp_path / "killed", steps), check=True, env=env, capture_output=True)

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / f"step-{steps:07d}.safetensors")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / f"step-{steps:07d}.safetensors")
    for name in ("model", "ema"):
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
    log = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == steps


def test_checkpoint_round_trips_nested_states(tmp_path):
    opt_state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2)}},
                 "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}]}
    states = {"model": {"w": torch.randn(3, 3)}, "optimizer": opt_state, "step": 7, "config": {"a": [1, 2]}}
    back = load_checkpoint(save_checkpoint(tmp_path / "c.safetensors", states))
    assert back["step"] == 7 and back["config"] == {"a": [1, 2]}
    assert torch.equal(back["model"]["w"], states["model"]["w"])
    assert 0 in back["optimizer"]["state"] and back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_resuming_with_another_model_config_is_refused(tiny_latents, tmp_path):
    out = tmp_path / "run"
    subprocess.run(_train_cmd(tiny_latents, out, 50), check=True, capture_output=True)
    bad = subprocess.run([*_train_cmd(tiny_latents, out, 60), "--objective", "epsilon"], capture_output=True, text=True)
    assert bad.returncode == 2 and "different model" in bad.stderr


def test_metrics_log_has_loss_and_throughput(tiny_latents, tmp_path):
    subprocess.run(_train_cmd(tiny_latents, tmp_path, 20), check=True, capture_output=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["loss"] > 0 for r in records)
    assert (tmp_path / "model" / "dit.safetensors").exists()


def test_ema_warms_up_then_tracks_slowly():
    from kinema.train.ema import EMA

    model = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(200):
        ema.update(model)
    assert ema.shadow["weight"].mean() > 0.8  # the init no longer dominates after 200 updates
    assert ema.current_decay() == pytest.approx(201 / 210)
    for _ in range(20000):
        ema.updates += 1
    assert ema.current_decay() == 0.999


def test_per_sample_draws_are_distinct_for_every_step_and_clip():
    from kinema.train.dit_task import sample_rng

    # 2000 clips x 30 steps: the old seed * 1_000_003 + step * 997 + clip mix repeated (step 1, clip 0) as
    # (step 0, clip 997)
    draws = {sample_rng(0, step, clip).random() for step in range(30) for clip in range(2000)}
    assert len(draws) == 30 * 2000
    assert sample_rng(0, 1, 0).random() != sample_rng(0, 0, 997).random()
    assert sample_rng(0, 3, 5).random() == sample_rng(0, 3, 5).random()  # reproducible for resume
    assert sample_rng(0, 3, 5).random() != sample_rng(0, 4, 5).random()  # every micro-batch (of any rank) differs
    assert sample_rng(0, 3, 5).random() != sample_rng(1, 3, 5).random()  # and every seed


def test_a_non_finite_loss_stops_the_run_and_keeps_the_good_checkpoint(tiny_latents, tmp_path):
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.io.weights import WeightsError, save_weights
    from kinema.presets import DIT_PRESETS
    from kinema.train.dit_task import DiTTask
    from kinema.train.loop import NonFiniteError, train

    class Diverging(DiTTask):
        calls = 0

        def loss(self, model, batch, generator):
            Diverging.calls += 1
            loss, metrics = super().loss(model, batch, generator)
            return (loss * float("nan") if Diverging.calls >= 5 else loss), metrics

    task = Diverging(LatentDataset(tiny_latents), DIT_PRESETS["tiny"](), FlowObjective(), batch_size=4)
    cfg = TrainConfig(steps=8, batch_size=4, warmup_steps=1, log_every=1, ckpt_every=2)
    with pytest.raises(NonFiniteError, match="step 5: non-finite loss"):
        train(task, cfg, tmp_path, progress=False)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-0000004.safetensors"
    kept = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["model"]
    assert all(torch.isfinite(v).all() for v in kept.values())
    assert not (tmp_path / "model" / "dit.safetensors").exists()  # no weights exported
    with pytest.raises(WeightsError, match="non-finite"):
        save_weights(tmp_path / "w", "dit", {"a": torch.tensor([1.0, float("inf")])}, {})


def _flip_tensor_bytes(path, n=64):
    """Flip n bytes in the tensor data of a safetensors file (past its JSON header)."""
    import struct

    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    for i in range(n):
        data[start + 16 + i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_flipped_bytes_is_refused_by_its_content_hash(tmp_path):
    from kinema.train.checkpoint import CheckpointError

    path = save_checkpoint(tmp_path / "step-0000001.safetensors", {"model": {"w": torch.randn(64, 64)}, "step": 1})
    _flip_tensor_bytes(path)
    with pytest.raises(CheckpointError, match="step-0000001.safetensors: content hash mismatch"):
        load_checkpoint(path)


def test_resume_falls_back_past_a_corrupt_newest_checkpoint_and_logs_each_step_once(tiny_latents, tmp_path):
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_PRESETS
    from kinema.train.dit_task import DiTTask
    from kinema.train.loop import train

    def task():
        return DiTTask(LatentDataset(tiny_latents), DIT_PRESETS["tiny"](), FlowObjective(), batch_size=4)

    cfg = TrainConfig(steps=6, batch_size=4, warmup_steps=1, log_every=1, ckpt_every=2, keep_checkpoints=3)
    train(task(), cfg, tmp_path, progress=False)
    ckpts = tmp_path / "checkpoints"
    _flip_tensor_bytes(ckpts / "step-0000006.safetensors")
    (ckpts / ".step-0000008.safetensors.123.tmp").write_bytes(b"half a file")  # a write that was killed
    more = TrainConfig(steps=8, batch_size=4, warmup_steps=1, log_every=1, ckpt_every=2, keep_checkpoints=3)
    train(task(), more, tmp_path, progress=False)  # resumes from step 4, not from the corrupt step 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # steps 5 and 6 were rerun and logged once
    assert not list(ckpts.glob("*.tmp"))
    assert load_checkpoint(latest_checkpoint(ckpts))["step"] == 8
    assert load_checkpoint(ckpts / "step-0000006.safetensors")["step"] == 6  # rewritten when rerun


def test_pruning_keeps_the_last_good_checkpoint_when_the_newest_is_corrupt(tmp_path):
    from kinema.train.checkpoint import prune_checkpoints

    for step in (1, 2, 3):
        save_checkpoint(tmp_path / f"step-{step:07d}.safetensors", {"model": {"w": torch.randn(32, 32)}, "step": step})
    _flip_tensor_bytes(tmp_path / "step-0000003.safetensors")
    prune_checkpoints(tmp_path, keep=1)
    assert len(list(tmp_path.glob("step-*.safetensors"))) == 3  # nothing removed while the newest does not verify
    save_checkpoint(tmp_path / "step-0000004.safetensors", {"model": {"w": torch.randn(32, 32)}, "step": 4})
    prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in tmp_path.glob("step-*.safetensors")] == ["step-0000004.safetensors"]


def test_a_stopped_run_exports_its_latest_checkpoint_as_a_model_folder(tiny_latents, tmp_path):
    """`kinema dit export --run` on a run that never reached its end: the model folder's other files are
    written when the run starts, the weights come from the latest checkpoint."""
    from safetensors.torch import load_file

    from kinema.cli import main
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.pipeline import TextToVideoPipeline
    from kinema.presets import DIT_PRESETS
    from kinema.train.dit_task import DiTTask
    from kinema.train.loop import train

    class Stopped(Exception):
        pass

    class StopsAtStep5(DiTTask):
        calls = 0

        def loss(self, model, batch, generator):
            StopsAtStep5.calls += 1
            if StopsAtStep5.calls == 5:
                raise Stopped  # as a killed or interrupted run: no final export
            return super().loss(model, batch, generator)

    data = LatentDataset(tiny_latents)
    task = StopsAtStep5(data, DIT_PRESETS["tiny"](), FlowObjective(), batch_size=4, vae_dir=data.meta["vae"])
    with pytest.raises(Stopped):
        train(task, TrainConfig(steps=8, batch_size=4, warmup_steps=1, ckpt_every=2, ema_decay=0.9), tmp_path / "run",
              progress=False)
    assert not (tmp_path / "run" / "model" / "dit.safetensors").exists()
    assert main(["dit", "export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "mid")]) == 0
    index = json.loads((tmp_path / "mid" / "model_index.json").read_text())
    assert (index["trained_steps"], index["weights"]) == (4, "ema")
    ema = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))["ema"]
    exported = load_file(str(tmp_path / "mid" / "dit.safetensors"))
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)
    video = TextToVideoPipeline.from_pretrained(tmp_path / "mid")("a red circle moving left", steps=2, seed=0)
    assert video.ndim == 4 and video.shape[-1] == 3
    assert main(["dit", "export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) != 0

    # sampling defaults chosen at export are what the folder samples with when a caller names none
    assert main(["dit", "export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "tuned"), "--steps", "3",
                 "--guidance", "4", "--sampler", "euler-a", "--guidance-interval", "0,0.8"]) == 0
    index = json.loads((tmp_path / "tuned" / "model_index.json").read_text())
    assert (index["steps"], index["guidance"], index["sampler"], index["guidance_interval"]) == (3, 4.0, "euler-a",
                                                                                                [0.0, 0.8])
    tuned = TextToVideoPipeline.from_pretrained(tmp_path / "tuned")("a red circle moving left", seed=0)
    mid = TextToVideoPipeline.from_pretrained(tmp_path / "mid")
    assert np.array_equal(tuned, mid("a red circle moving left", steps=3, guidance=4.0, sampler="euler-a",
                                     guidance_interval=(0.0, 0.8), seed=0))
    assert not np.array_equal(tuned, mid("a red circle moving left", steps=3, guidance=4.0, seed=0))


class _ClockedTask:
    """A linear model whose every loss call advances a fake clock by `seconds_per_step` (loop._clock reads it);
    optionally stops the process-like run by raising at a step."""

    name = "toy"

    def __init__(self, clock: list[float], seconds_per_step: float, stop_at: int | None = None):
        self.clock, self.seconds_per_step, self.stop_at, self.calls = clock, seconds_per_step, stop_at, 0

    def build_model(self):
        return torch.nn.Linear(4, 4)

    def model_config(self):
        return {"toy": 4}

    def batch(self, step, micro, info):
        if step == self.stop_at:
            raise KeyboardInterrupt
        return torch.randn(8, 4, generator=torch.Generator().manual_seed(step))

    def loss(self, model, batch, generator):
        self.clock[0] += self.seconds_per_step
        return (model(batch) - batch).pow(2).mean(), {}

    def samples(self, model, step, out_dir):
        return []

    def start(self, out_dir):
        pass

    def export(self, state_dict, out_dir):
        return out_dir

    def tokens_per_sample(self):
        return 1


def test_a_time_budget_sizes_the_run_when_warmup_ends_and_a_resume_keeps_that_length(tmp_path, monkeypatch):
    from kinema.train import loop

    clock = [0.0]
    monkeypatch.setattr(loop, "_clock", lambda: clock[0])
    cfg = TrainConfig(steps=10**9, minutes=1.0, warmup_steps=10, batch_size=8, log_every=5, ckpt_every=20, lr=1e-2)
    # 1 s a step: 10 s of warmup leave 50 s, so 60 steps, and the cosine reaches its floor at the last one
    result = loop.train(_ClockedTask(clock, 1.0), cfg, tmp_path / "straight", progress=False)
    assert result.step == 60
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["train"]["steps"] == 60
    assert lr_at(59, TrainConfig(steps=60, lr=1e-2, warmup_steps=10)) == pytest.approx(1e-3, rel=0.02)

    # stopped after its checkpoint at step 20, resumed on a machine twice as slow: still 60 steps, the same weights
    clock[0] = 0.0
    with pytest.raises(KeyboardInterrupt):
        loop.train(_ClockedTask(clock, 1.0, stop_at=25), cfg, tmp_path / "stopped", progress=False)
    assert loop.train(_ClockedTask(clock, 2.0), cfg, tmp_path / "stopped", progress=False).step == 60
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step-0000060.safetensors")
    b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "step-0000060.safetensors")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

    # stopped during warmup (checkpoint at step 4, 4 s spent): the time already spent still counts
    clock[0] = 0.0
    early = dataclasses.replace(cfg, ckpt_every=4)
    with pytest.raises(KeyboardInterrupt):
        loop.train(_ClockedTask(clock, 1.0, stop_at=6), early, tmp_path / "early", progress=False)
    assert loop.train(_ClockedTask(clock, 1.0), early, tmp_path / "early", progress=False).step == 60

    # a slower machine fits fewer steps; --steps stays a cap; a spent budget ends the run when warmup does
    clock[0] = 0.0
    assert loop.train(_ClockedTask(clock, 2.0), cfg, tmp_path / "slow", progress=False).step == 30
    capped = dataclasses.replace(cfg, steps=40)
    assert loop.train(_ClockedTask(clock, 1.0), capped, tmp_path / "capped", progress=False).step == 40
    assert loop.train(_ClockedTask(clock, 7.0), cfg, tmp_path / "spent", progress=False).step == 10

    # a run trained past its warmup without a budget cannot be given one
    loop.train(_ClockedTask(clock, 1.0), dataclasses.replace(cfg, minutes=0.0, steps=20), tmp_path / "plain",
               progress=False)
    with pytest.raises(ValueError, match="give --steps instead"):
        loop.train(_ClockedTask(clock, 1.0), cfg, tmp_path / "plain", progress=False)


class _ListeningTask(_ClockedTask):
    """Records what the loop tells it of the run's length, and at which step it heard it."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.heard: list[tuple[int, int]] = []
        self.step = 0

    def batch(self, step, micro, info):
        self.step = step
        return super().batch(step, micro, info)

    def set_run_steps(self, steps):
        self.heard.append((self.step, steps))


def test_the_loop_tells_a_listening_task_the_run_length_also_when_a_budget_sizes_it(tmp_path, monkeypatch):
    from kinema.train import loop

    clock = [0.0]
    monkeypatch.setattr(loop, "_clock", lambda: clock[0])
    plain = _ListeningTask(clock, 1.0)
    loop.train(plain, TrainConfig(steps=20, warmup_steps=10, batch_size=8, lr=1e-2), tmp_path / "plain",
               progress=False)
    assert plain.heard == [(0, 20)]  # before the first step
    cfg = TrainConfig(steps=10**9, minutes=1.0, warmup_steps=10, batch_size=8, log_every=5, ckpt_every=20, lr=1e-2)
    budget = _ListeningTask(clock, 1.0, stop_at=25)
    with pytest.raises(KeyboardInterrupt):
        loop.train(budget, cfg, tmp_path / "budget", progress=False)
    assert budget.heard == [(9, 60)]  # nothing until warmup's last step sized the run
    resumed = _ListeningTask(clock, 2.0)
    assert loop.train(resumed, cfg, tmp_path / "budget", progress=False).step == 60
    assert resumed.heard == [(0, 60)]  # a resumed run keeps its sized length and says so before its first step


def test_a_time_budget_needs_a_warmup_to_measure_the_rate():
    with pytest.raises(ValueError, match="warmup_steps >= 2"):
        TrainConfig(minutes=5, warmup_steps=0)
    with pytest.raises(ValueError, match="budget must be > 0"):
        TrainConfig(minutes=-1)


def test_dit_train_minutes_sizes_the_run_from_the_command_line(tiny_latents, tmp_path):
    cmd = [*_train_cmd(tiny_latents, tmp_path, 40), "--minutes", "0.5"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    train = json.loads((tmp_path / "config.json").read_text())["train"]
    assert train["minutes"] == 0.5 and train["steps"] <= 40  # sized, and --steps is the cap
    assert f"trained to step {train['steps']}," in done.stdout and "minutes fit" in done.stdout


def test_minutes_on_the_command_line_uncaps_the_steps_only_when_a_budget_is_given():
    import argparse

    from kinema.cli.common import UNCAPPED_STEPS, train_config

    preset = TrainConfig(steps=1500, warmup_steps=100)
    budget = train_config(preset, argparse.Namespace(minutes=20.0, steps=None))
    assert (budget.minutes, budget.steps) == (20.0, UNCAPPED_STEPS)
    assert train_config(preset, argparse.Namespace(minutes=20.0, steps=3000)).steps == 3000  # a cap
    off = train_config(preset, argparse.Namespace(minutes=0.0, steps=None))
    assert (off.minutes, off.steps) == (0.0, 1500)
