"""`kinema plan`: memory and time of a DiT training run before it starts.

    plan = make_plan("shapes", frames=17, size=(64, 64), batch=32)
    print("\\n".join(plan.lines()))

Per device:
- parameters, gradients, AdamW's two moments and the EMA copy: counted exactly from the model (fp32); under
  FSDP2 each is sharded over the GPUs, under DDP each GPU holds all of it;
- activations and working memory: on a CPU, measured: the peak resident memory of three real training steps
  at two small batches (fresh processes), whose line gives a per-clip and a fixed part, scaled to the batch;
  otherwise (GPU plans, activation checkpointing) counted: what autograd saves for backward (a forward with a
  saved-tensors hook, unique storages, parameters excluded; with checkpointing the blocks' inputs plus one
  block's internals), a lower bound without the transient working memory;
- FLOPs per step (torch's FLOP counter: 3x the forward), and the step time: from a 3-step micro-run here, or
  from a given peak TFLOP/s at 40% utilisation;
- the largest batch that fits a given memory.

`kinema dit train` prints the one-line summary at start and refuses a run the plan says cannot fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kinema.dit.model import DiTConfig

GIB = 1024**3
MFU = 0.4  # utilisation assumed when the step time comes from a peak TFLOP/s


@dataclass
class Plan:
    preset: str
    tokens: int
    batch: int
    gpus: int
    dtype: str
    activation_checkpointing: bool
    params: int
    state_bytes: dict[str, dict[str, float]]  # mode -> {params, grads, optimizer, ema} bytes per device
    act_fixed: float  # activation bytes independent of the batch
    act_per_sample: float
    flops_per_step: float
    step_seconds: float | None = None
    step_source: str = ""
    memory_bytes: float | None = None  # the memory to fit (given or detected)
    memory_source: str = ""

    def activations(self, batch: int | None = None) -> float:
        return self.act_fixed + self.act_per_sample * (batch or self.batch)

    def total(self, mode: str, batch: int | None = None) -> float:
        return sum(self.state_bytes[mode].values()) + self.activations(batch)

    def largest_batch(self, mode: str, memory: float) -> int:
        room = memory - sum(self.state_bytes[mode].values()) - self.act_fixed
        return max(0, int(room // self.act_per_sample)) if self.act_per_sample > 0 else 0

    def mode(self) -> str:
        return "fsdp" if self.gpus > 1 else "single"

    def summary(self) -> str:
        mode = self.mode()
        fits = "" if self.memory_bytes is None else \
            f", fits {self.memory_bytes / GIB:.1f} GiB: {'yes' if self.total(mode) <= self.memory_bytes else 'NO'}"
        step = f", ~{self.step_seconds:.2f} s/step ({self.step_source})" if self.step_seconds else ""
        return (f"plan: {self.preset}, {self.params / 1e6:.1f} M params, {self.tokens} tokens x batch {self.batch}: "
                f"{self.total(mode) / GIB:.2f} GiB per device ({mode}), {self.flops_per_step / 1e12:.2f} TFLOP/step"
                f"{step}{fits}")

    def lines(self) -> list[str]:
        out = [f"preset {self.preset}: {self.params:,} parameters, {self.tokens} tokens per clip, batch {self.batch} "
               f"per device, {self.gpus} device(s), {self.dtype}"
               + (", activation checkpointing" if self.activation_checkpointing else "")]
        out.append(f"{'per device (GiB)':<26}" + "".join(f"{m:>10}" for m in self.state_bytes))
        for part in ("params", "grads", "optimizer", "ema"):
            out.append(f"{part:<26}" + "".join(f"{self.state_bytes[m][part] / GIB:>10.3f}" for m in self.state_bytes))
        out.append(f"{'activations':<26}" + "".join(f"{self.activations() / GIB:>10.3f}" for _ in self.state_bytes))
        out.append(f"{'total':<26}" + "".join(f"{self.total(m) / GIB:>10.3f}" for m in self.state_bytes))
        out.append(f"activations: {self.act_per_sample / 2**20:.1f} MiB per clip + {self.act_fixed / 2**20:.1f} MiB "
                   f"fixed ({self.memory_source})")
        out.append(f"FLOPs per step: {self.flops_per_step:.3g} ({self.flops_per_step / self.batch:.3g} per clip)")
        if self.step_seconds:
            out.append(f"step time: ~{self.step_seconds:.3f} s ({self.step_source})")
        if self.memory_bytes:
            for m in self.state_bytes:
                out.append(f"largest batch in {self.memory_bytes / GIB:.1f} GiB ({m}): "
                           f"{self.largest_batch(m, self.memory_bytes)}")
        return out


# ---------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------


def _inputs(model, batch: int, latent: tuple[int, ...], text_tokens: int, device):
    x = torch.randn(batch, *latent, device=device)
    text = torch.randn(batch, text_tokens, model.cfg.text_dim, device=device)
    return x, torch.rand(batch, device=device), text, torch.ones(batch, text_tokens, dtype=torch.bool, device=device)


def saved_activation_bytes(model, batch: int, latent: tuple[int, ...], text_tokens: int = 24,
                           bf16: bool = False, device: str = "cpu") -> int:
    """Bytes autograd keeps for backward in one training forward: unique storages, parameters excluded."""
    from kinema.precision import autocast

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    inputs = _inputs(model, batch, latent, text_tokens, device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(torch.device(device), bf16):
        out = model(*inputs)
    del out
    return sum(seen.values())


def _checkpointed_bytes(model, batch, latent, text_tokens, bf16, device) -> int:
    """With activation checkpointing: each block keeps its input; one block's internals live during its backward."""
    full = saved_activation_bytes(model, batch, latent, text_tokens, bf16, device)
    depth = len(model.blocks)
    block_inputs = depth * batch * model_tokens(model, latent) * model.cfg.dim * 4  # the residual stream is fp32
    return block_inputs + full // max(depth, 1)


def model_tokens(model, latent: tuple[int, ...]) -> int:
    _, f, h, w = latent
    pt, ph, pw = model.cfg.patch
    return (f // pt) * (h // ph) * (w // pw)


def _calibrated_step(model, batch: int, latent, text_tokens: int, bf16: bool, device: str) -> float:
    """Median seconds of 3 training steps (forward, backward, AdamW) at this batch on this device."""
    from kinema.precision import autocast

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(4):  # the first is warm-up
        inputs = _inputs(model, batch, latent, text_tokens, device)
        t0 = time.perf_counter()
        with autocast(torch.device(device), bf16):
            loss = model(*inputs).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[1]


# ---------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------


def make_plan(preset: str, frames: int = 17, size: tuple[int, int] = (64, 64), batch: int = 32, gpus: int = 1,
              dtype: str = "bf16", activation_checkpointing: bool = False, in_channels: int = 16,
              vae_spatial: int = 8, vae_temporal: int = 4, text_tokens: int = 24, ema: bool = True,
              calibrate: bool = True, peak_tflops: float | None = None, memory_gib: float | None = None,
              device: str = "cpu", patch: tuple[int, int, int] | None = None, step_time: bool = True,
              dit_cfg: DiTConfig | None = None) -> Plan:
    """The plan for training `preset`'s DiT, or `dit_cfg` exactly where given (a preset with --width / --depth /
    --heads overrides: the one `kinema dit train` builds)."""
    from kinema.dit.model import DiT
    from kinema.eval.scaling import training_flops_per_sample
    from kinema.presets import dit_preset
    from kinema.vae.model import VAEConfig

    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype must be bf16 or fp32, got {dtype!r}")
    vae = VAEConfig(latent_channels=in_channels, spatial_compression=vae_spatial, temporal_compression=vae_temporal)
    latent = vae.latent_shape(frames, *size)  # its errors for frames and sizes this VAE cannot take
    cfg = dit_cfg if dit_cfg is not None else dit_preset(preset, in_channels, patch)
    torch.manual_seed(0)
    model = DiT(cfg).to(device)
    bf16 = dtype == "bf16"
    n = sum(p.numel() for p in model.parameters())
    state = {"params": 4.0 * n, "grads": 4.0 * n, "optimizer": 8.0 * n, "ema": 4.0 * n if ema else 0.0}
    modes = {"single": state} if gpus == 1 else {"ddp": state, "fsdp": {k: v / gpus for k, v in state.items()}}
    if calibrate and not activation_checkpointing and device == "cpu" and patch is None and dit_cfg is None:
        # measured: peak memory of real training steps at two small batches, in fresh processes; the line through
        # them gives the memory per clip and the fixed part (the framework's working memory included)
        b1 = max(1, min(batch, 8) // 2)
        m1, m2 = (measured_peak_bytes(preset, b, latent, bf16) for b in (b1, 2 * b1))
        per_sample = max(0.0, (m2 - m1) / b1)
        fixed = max(0.0, m1 - per_sample * b1 - sum(state.values()))
        memory_source = f"measured at batch {b1} and {2 * b1} here"
    else:  # analytic: what autograd saves (a lower bound: no transient working memory)
        measure = _checkpointed_bytes if activation_checkpointing else saved_activation_bytes
        a1, a2 = (measure(model, b, latent, text_tokens, bf16, device) for b in (1, 2))
        per_sample, fixed = float(a2 - a1), float(max(0, 2 * a1 - a2))
        memory_source = "saved tensors counted (a lower bound)"
    flops = training_flops_per_sample(model, latent, text_tokens) * batch
    plan = Plan(preset, model_tokens(model, latent), batch, gpus, dtype, activation_checkpointing, n, modes,
                fixed, per_sample, flops, memory_source=memory_source)
    if peak_tflops:
        plan.step_seconds, plan.step_source = flops / (peak_tflops * 1e12 * MFU), f"{peak_tflops:g} TFLOP/s peak at " \
                                                                                  f"{MFU:.0%} utilisation"
    elif calibrate and step_time:
        probe_batch = min(batch, 8)
        seconds = _calibrated_step(model, probe_batch, latent, text_tokens, bf16, device)
        plan.step_seconds = seconds * batch / probe_batch
        plan.step_source = f"3-step micro-run at batch {probe_batch} on this {device}, scaled"
    if memory_gib is not None:
        plan.memory_bytes = memory_gib * GIB
    elif device != "cpu" and torch.cuda.is_available():
        plan.memory_bytes = float(torch.cuda.get_device_properties(0).total_memory)
    else:
        plan.memory_bytes = available_memory()
    return plan


def available_memory() -> float | None:
    """This machine's available RAM (MemAvailable), for CPU plans."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        return None
    return None


def check_fits(plan: Plan, force: bool = False) -> None:
    """Refuse a run the plan says cannot fit (--force to try anyway)."""
    mode = plan.mode()
    if plan.memory_bytes is not None and plan.total(mode) > plan.memory_bytes and not force:
        raise ValueError(f"{plan.summary()}: needs {plan.total(mode) / GIB:.2f} GiB per device but "
                         f"{plan.memory_bytes / GIB:.2f} GiB is there; the largest batch that fits is "
                         f"{plan.largest_batch(mode, plan.memory_bytes)} (or --activation-checkpointing, more GPUs "
                         f"with --parallel fsdp); --force runs it anyway")



# ---------------------------------------------------------------------------------------------------
# Checking the plan: measured peak memory of real training steps
# ---------------------------------------------------------------------------------------------------

_MEASURE = """
import gc, sys, threading, time, torch
from kinema.dit.model import DiT
from kinema.plan import _inputs
from kinema.precision import autocast
from kinema.presets import dit_preset
from kinema.train.ema import EMA

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

preset, batch, bf16, c, f, h, w = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", *map(int, sys.argv[4:8])
torch.set_num_threads(1)
torch.zeros(1) @ torch.zeros(1, 1)
gc.collect()
base, peak, done = rss(), [0], []

def sample():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)

thread = threading.Thread(target=sample, daemon=True)
thread.start()
torch.manual_seed(0)
model = DiT(dit_preset(preset, c))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
ema = EMA(model, 0.999)
for _ in range(3):
    inputs = _inputs(model, batch, (c, f, h, w), 24, "cpu")
    with autocast(torch.device("cpu"), bf16):
        loss = model(*inputs).float().pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.update(model)
done.append(1)
thread.join()
print(max(peak[0], rss()) - base)
"""


def measured_peak_bytes(preset: str, batch: int, latent: tuple[int, int, int, int], bf16: bool = True) -> float:
    """Peak resident memory added by 3 real training steps (model, AdamW, EMA, forward, backward) in a fresh
    process on this CPU: what the plan's total should predict."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MEASURE, preset, str(batch), "1" if bf16 else "0",
                          *map(str, latent)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])
