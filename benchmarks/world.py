"""Shapes-world throughput: clips/s at 17x64x64 for sampling+rendering, and with lossless mp4 encoding.

    python benchmarks/world.py [--n 300] [--repeats 5]

Prints the median of several repeats (the machine is shared and noisy)."""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from kinema.data.shards import make_clip
from kinema.data.world import WorldConfig
from kinema.io.video import encode_mp4


def clips_per_second(fn, n: int, repeats: int) -> float:
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cfg = WorldConfig(frames=17, height=64, width=64)
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    render = clips_per_second(lambda s: make_clip(cfg, s), args.n, args.repeats)
    print(f"sample + render + captions : {render:8.1f} clips/s  (17x64x64)")
    full = clips_per_second(lambda s: encode_mp4(make_clip(cfg, s)[0].numpy(), lossless=True),
                            args.n // 3, args.repeats)
    print(f"... + lossless mp4 encode  : {full:8.1f} clips/s")


if __name__ == "__main__":
    main()
