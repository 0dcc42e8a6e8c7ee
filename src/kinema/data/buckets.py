"""Which samples go into which batch: deterministic from (seed, position), so any step's batch can be
recomputed after a resume, on any rank, without saving a sampler."""

from __future__ import annotations

import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def global_indices(n: int, seed: int, first: int, count: int) -> list[int]:
    """Dataset indices of global sample numbers first .. first+count-1 (each epoch a new permutation)."""
    out, cache = [], {}
    for g in range(first, first + count):
        epoch = g // n
        if epoch not in cache:
            cache[epoch] = epoch_permutation(n, seed, epoch)
        out.append(int(cache[epoch][g % n]))
    return out


def batch_indices(n: int, seed: int, step: int, micro: int, grad_accum: int, rank: int, world: int,
                  batch_size: int) -> list[int]:
    """The dataset indices of one micro-batch on one rank."""
    first = ((step * grad_accum + micro) * world + rank) * batch_size
    return global_indices(n, seed, first, batch_size)
