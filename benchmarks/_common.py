"""Shared helpers for the benchmarks: timing with repeats (the machine is shared and noisy) and machine info."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine() -> str:
    from kinema.precision import bf16_is_fast

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return (f"{platform.machine()} {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{gpu}, fast bf16: {'yes' if bf16_is_fast(device) else 'no'}")


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown CPU"


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_seconds(fns: dict[str, Callable[[], object]], repeats: int = 5,
                   warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each fn over `repeats` rounds, the fns taking turns within a round, so a slow spell on a
    shared machine hits both sides of a comparison alike: name -> list of seconds (round i of every fn
    ran back to back; compare round by round, then take the median of the ratios)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(median_seconds(fn, 1, warmup=0))
    return times


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
