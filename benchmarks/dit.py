"""DiT training-step throughput, side by side in one run with diffusers' WanTransformer3DModel built at the
same width / depth / heads / MLP width / tokens, in fp32 and bf16 autocast. Achieved GFLOP/s (analytic
model FLOPs of a training step / time) is compared with a matmul ceiling measured in the same run.
bf16 is skipped where the hardware has no fast bf16 (CPUs without AMX/AVX512-BF16, where it is emulated and
~90x slower than fp32); --bf16 runs it anyway.

    python benchmarks/dit.py [--dim 384] [--depth 8] [--heads 6] [--batch 8] [--latent 5x16x16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median_seconds, paired_seconds, params  # noqa: E402
from kinema.dit.model import DiT, DiTConfig  # noqa: E402
from kinema.precision import autocast, bf16_is_fast  # noqa: E402


def matmul_ceiling(dtype_autocast: bool, n: int = 2048) -> float:
    """GFLOP/s of an n x n x n matmul (the ceiling the model's linear layers can approach)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    amp = autocast(device, dtype_autocast)

    def run():
        with amp:
            return a @ b

    return 2 * n**3 / median_seconds(run, 5) / 1e9


def step_flops(cfg: DiTConfig, batch: int, tokens: int, text_tokens: int) -> float:
    """Analytic FLOPs of one training step (forward + backward = 3x forward) of the transformer blocks:
    2 FLOPs per multiply-add in every linear on every token, plus attention's two matmuls."""
    d, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
    per_token_linear = 4 * d * d + 2 * d * d + 2 * d * hidden  # self qkv+proj, cross q+proj, MLP
    per_text_token = 2 * d * d  # cross k, v
    attn = 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * text_tokens * d
    forward = cfg.depth * (2 * tokens * per_token_linear + 2 * text_tokens * per_text_token + attn)
    return 3.0 * batch * forward


def wan_like(cfg: DiTConfig):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=cfg.patch, num_attention_heads=cfg.heads,
                                 attention_head_dim=cfg.dim // cfg.heads, in_channels=cfg.in_channels,
                                 out_channels=cfg.in_channels, text_dim=cfg.text_dim,
                                 ffn_dim=int(cfg.dim * cfg.mlp_ratio), num_layers=cfg.depth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--latent", default="5x16x16", help="latent F x H x W (16 channels)")
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 where the hardware is not fast at it")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    F, H, W = (int(v) for v in args.latent.split("x"))
    cfg = DiTConfig(in_channels=16, dim=args.dim, depth=args.depth, heads=args.heads, text_dim=384,
                    frame_conditioning=False)
    tokens = F * (H // 2) * (W // 2)
    x = torch.randn(args.batch, 16, F, H, W, device=device)
    text = torch.randn(args.batch, args.text_tokens, 384, device=device)
    mask = torch.ones(args.batch, args.text_tokens, dtype=torch.bool, device=device)
    t = torch.rand(args.batch, device=device)
    ours, peer = DiT(cfg).to(device), wan_like(cfg).to(device)
    flops = step_flops(cfg, args.batch, tokens, args.text_tokens)
    print(f"machine: {machine()}")
    print(f"width {args.dim}, depth {args.depth}, heads {args.heads}, batch {args.batch}, {tokens} tokens/clip, "
          f"{args.text_tokens} text tokens; params ours {params(ours) / 1e6:.1f} M, Wan {params(peer) / 1e6:.1f} M; "
          f"{flops / 1e9:.1f} GFLOP per training step")
    precisions = [False, True] if args.bf16 or bf16_is_fast(device) else [False]
    if len(precisions) == 1:
        print("[bf16] skipped: no fast bf16 on this hardware (emulated); --bf16 to time it anyway")
    for bf16 in precisions:
        amp = autocast(device, bf16)
        steps = {}
        for name, model, call in (
            ("kinema DiT", ours, lambda m: m(x, t, text, mask)),
            ("WanTransformer3DModel", peer, lambda m: m(x, t * 1000, text, return_dict=False)[0]),
        ):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # what `kinema dit train` uses

            def step(model=model, call=call, opt=opt, amp=amp):
                with amp:
                    loss = call(model).float().pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            steps[name] = step
        times = paired_seconds(steps, args.repeats)
        results = {name: statistics.median(ts) for name, ts in times.items()}
        ratio = statistics.median(w / o for o, w in zip(times["kinema DiT"], times["WanTransformer3DModel"],
                                                        strict=True))
        ceiling = matmul_ceiling(bf16)
        label = "bf16" if bf16 else "fp32"
        for name, sec in results.items():
            print(f"[{label}] {name:<22} {args.batch / sec:7.2f} samples/s  {args.batch * tokens / sec:9.0f} tokens/s  "
                  f"{flops / sec / 1e9:7.1f} GFLOP/s = {flops / sec / 1e9 / ceiling:5.1%} of matmul ceiling "
                  f"({ceiling:.0f} GFLOP/s)")
        print(f"[{label}] ratio ours / Wan: {ratio:.2f}x (median over {args.repeats} rounds, the two taking turns)")


if __name__ == "__main__":
    main()
