"""Process-group set-up for one code path: a plain process, or one of N under torchrun.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them we are a single process and every helper
here is a no-op. gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> DistInfo:
    """Join the process group when launched by torchrun; pick the device."""
    if "RANK" not in os.environ:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(device=device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(rank, world, local, device)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def mean_across(info: DistInfo, value: float) -> float:
    """Average a scalar over all processes (for logging)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.item() / info.world_size


def teardown(info: DistInfo) -> None:
    """Leave the process group. Under torchrun, exit at once afterwards: gloo ranks can abort during
    interpreter shutdown after a correct run, which would turn success into a failure code."""
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        os._exit(0)
