"""Attention kernels side by side on the shapes a video DiT has: `kinema.layers.attention.attention` (explicit
matmul -> softmax -> matmul in bf16 on a CPU) vs torch's fused `scaled_dot_product_attention`, forward +
backward and forward only, in bf16 (in float32 `attention` is SDPA: the explicit form is no faster there).
Prints both times and the ratio; the DiT's choice follows these numbers.

    python benchmarks/attention.py [--batch 8] [--heads 6] [--head-dim 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median_seconds  # noqa: E402
from kinema.layers.attention import attention  # noqa: E402

SHAPES = [(320, 320, "self, 17x64x64 at patch 1x1x1"), (320, 33, "cross to a prompt"),
          (80, 80, "self, patch 1x2x2 (the bundled model)"), (80, 33, "cross, patch 1x2x2")]


def time_pair(fn_a, fn_b, q, k, v, mask, backward: bool, repeats: int) -> tuple[float, float]:
    def run(fn):
        def call():
            with torch.set_grad_enabled(backward):
                out = fn(q, k, v, mask)
                if backward:
                    out.float().sum().backward()
        return median_seconds(call, repeats)
    return run(fn_a), run(fn_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    sdpa = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # noqa: E731
    for dtype in (torch.bfloat16,):
        for L, Lk, what in SHAPES:
            shape = (args.batch, args.heads)
            q = torch.randn(*shape, L, args.head_dim, dtype=dtype, requires_grad=True)
            k, v = (torch.randn(*shape, Lk, args.head_dim, dtype=dtype, requires_grad=True) for _ in range(2))
            mask = torch.ones(args.batch, 1, 1, Lk, dtype=torch.bool) if Lk != L else None
            for backward in (True, False):
                ours, fused = time_pair(attention, sdpa, q, k, v, mask, backward, args.repeats)
                label = "fwd+bwd" if backward else "fwd    "
                print(f"[{str(dtype)[6:]:<8}] {L:>4} x {Lk:<4} {label} kinema.attention {ours * 1e3:7.2f} ms   "
                      f"SDPA {fused * 1e3:7.2f} ms   ratio {fused / ours:5.2f}x   ({what})")


if __name__ == "__main__":
    main()
