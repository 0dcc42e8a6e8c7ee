"""Which float type to compute in: bf16 autocast where the hardware runs it fast, float32 elsewhere.

bf16 matmuls and convs are fast on GPUs with bf16 tensor cores and on CPUs with AMX or AVX512-BF16. On
other CPUs (AVX2 only: AMD Zen 2/3, Intel before Cooper Lake, most laptops) PyTorch has no bf16 kernels to
call and runs them far slower than float32: on a 2-core AMD EPYC (Zen 3) a 1024x1024 matmul ran at 1 GFLOP/s
in bf16 against 88 in float32, and a VAE training step took 21.5 s against 1.7 s. So every component takes a
setting of True, False or "auto" (the default), and "auto" asks the hardware.

    with autocast(device, use_bf16("auto", device)):
        loss = model(x)
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager

import torch

BF16_SETTINGS = (True, False, "auto")


@functools.cache
def bf16_is_fast(device_type: str) -> bool:
    """Whether bf16 matmuls and convs beat float32 on this machine's device of that type."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def check_bf16_setting(setting: bool | str, where: str) -> None:
    if setting not in BF16_SETTINGS or isinstance(setting, int) and not isinstance(setting, bool):
        raise ValueError(f"{where} = {setting!r}; expected true, false or \"auto\" (bf16 where the hardware is fast)")


def use_bf16(setting: bool | str, device: torch.device | str) -> bool:
    """The setting resolved for a device: True/False as given, "auto" by the hardware."""
    check_bf16_setting(setting, "bf16")
    return bf16_is_fast(torch.device(device).type) if setting == "auto" else bool(setting)


def autocast(device: torch.device | str, enabled: bool) -> AbstractContextManager:
    """bf16 autocast on `device` when enabled, else a no-op context."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)
