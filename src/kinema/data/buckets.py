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


# ---------------------------------------------------------------------------------------------------
# Size buckets: clips of different durations / sizes, each batch from one bucket
# ---------------------------------------------------------------------------------------------------


def _epoch_batches(buckets: tuple[tuple[int, ...], ...], seed: int, epoch: int, batch_size: int) -> list[list[int]]:
    """One epoch's batches: each bucket shuffled and cut into batches (a short last batch is filled from the
    bucket's start, so every batch has batch_size clips), then the batches of all buckets shuffled together."""
    batches = []
    for b, members in enumerate(buckets):
        g = torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_009 + b)
        perm = [members[i] for i in torch.randperm(len(members), generator=g)]
        for start in range(0, len(perm), batch_size):
            chunk = perm[start:start + batch_size]
            while len(chunk) < batch_size:
                chunk += perm[: batch_size - len(chunk)]
            batches.append(chunk)
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return [batches[i] for i in order]


_plans: dict[tuple, list[list[int]]] = {}


def bucket_batch_indices(buckets: list[list[int]], seed: int, number: int, batch_size: int) -> list[int]:
    """Dataset indices of global micro-batch `number` (all from one bucket); a pure function of its arguments,
    so a resumed run or another rank recomputes the same batch."""
    frozen = tuple(tuple(b) for b in buckets)
    per_epoch = sum(-(-len(b) // batch_size) for b in frozen)
    epoch, position = divmod(number, per_epoch)
    key = (hash(frozen), seed, epoch, batch_size)
    if key not in _plans:
        if len(_plans) > 4:
            _plans.clear()
        _plans[key] = _epoch_batches(frozen, seed, epoch, batch_size)
    return _plans[key][position]
