"""Seconds per generated 17x64x64 clip on this machine, the bundled model at its default steps and at 4
steps, side by side with a diffusers WanPipeline assembled from parts of the same size (a
WanTransformer3DModel of the same width/depth/heads, an AutoencoderKLWan of similar size, the same
number of Euler flow steps and guidance; random weights: speed only). Both run in the same precision: bf16
autocast where the hardware is fast at it (ours decides, "auto"; the peer is wrapped in the same autocast),
float32 elsewhere, so the comparison is like for like.
With --few-step MODEL (a `kinema dit distill` student: 4 steps, guidance 1 = one model call per step) the
student is timed too, against the peer at 4 steps without guidance. With --attention-guidance S[,UNTIL[,MOTION]]
the model is also timed with that attention guidance (dit/attention_guidance.py), side by side with itself without
any. The rows against the peer sample one candidate (the peer has no judge); the model folder's own default
(`candidates` in model_index.json, diffusion/fit.py) is timed in a row of its own, against one candidate, and
--candidates K times K instead.

    python benchmarks/generate.py [--model models/shapes-64] [--few-step runs/reflow/model] [--repeats 5]
                                  [--attention-guidance 0.05] [--candidates 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median_seconds, params  # noqa: E402
from dit import wan_like  # noqa: E402
from kinema.cli.common import parse_attention_guidance  # noqa: E402
from kinema.generate import default_model  # noqa: E402
from kinema.pipeline import TextToVideoPipeline  # noqa: E402
from kinema.precision import autocast, use_bf16  # noqa: E402
from vae import wan_vae_like  # noqa: E402

PROMPT = "A large red circle starts near the right side and moves quickly to the left, on a black background."


def wan_pipeline(pipe: TextToVideoPipeline):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    transformer = wan_like(pipe.dit.cfg).eval()
    cfg = pipe.vae.cfg
    vae = wan_vae_like(params(pipe.vae), cfg.latent_channels, cfg.spatial_compression, cfg.temporal_compression)
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--few-step", help="a distilled few-step model folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attention-guidance", type=parse_attention_guidance, metavar="S[,UNTIL[,MOTION]]")
    parser.add_argument("--candidates", type=int, help="starting noises judged per clip (default: the model's)")
    args = parser.parse_args()
    pipe = TextToVideoPipeline.from_pretrained(args.model or default_model())
    steps, guidance = pipe.index.steps, pipe.index.guidance
    sampler = pipe.sampler_for()
    peer = wan_pipeline(pipe)
    text, _ = pipe.encode_prompt([PROMPT])
    bf16 = use_bf16(pipe.bf16, pipe.device)
    print(f"machine: {machine()}; 17x64x64, guidance {guidance}, sampler {sampler} (the peer: "
          f"Euler; the same model calls per step), {'bf16 autocast' if bf16 else 'float32'}")

    def peer_call(n: int, g: float):
        with autocast(pipe.device, bf16):
            return peer(prompt_embeds=text, negative_prompt_embeds=torch.zeros_like(text), height=64, width=64,
                        num_frames=17, num_inference_steps=n, guidance_scale=g, output_type="np")

    rows = [("bundled", pipe, steps, guidance), ("bundled", pipe, 4, guidance)]
    if args.few_step:
        rows.append(("few-step student", TextToVideoPipeline.from_pretrained(args.few_step), 4, 1.0))
    for name, p, n, g in rows:
        ours = median_seconds(lambda p=p, n=n, g=g: p(PROMPT, steps=n, guidance=g, candidates=1), args.repeats)
        theirs = median_seconds(lambda n=n, g=g: peer_call(n, g), args.repeats)
        print(f"{name:<17} {n:>2} steps, guidance {g}: kinema {ours:6.3f} s/clip   WanPipeline (same-size parts) "
              f"{theirs:6.3f} s/clip   ratio {theirs / ours:.2f}x")
    if args.attention_guidance:
        plain = median_seconds(lambda: pipe(PROMPT, attention_guidance=0.0, candidates=1), args.repeats)
        guided = median_seconds(lambda: pipe(PROMPT, attention_guidance=args.attention_guidance, candidates=1),
                               args.repeats)
        strength, until, motion = args.attention_guidance
        print(f"attention guidance {strength} until {until}{f' motion {motion}' if motion else ''}: {guided:6.3f} "
              f"s/clip against {plain:6.3f} without ({guided / plain:.2f}x)")
    k = args.candidates or pipe.index.candidates
    if k > 1:
        one = median_seconds(lambda: pipe(PROMPT, candidates=1), args.repeats)
        judged = median_seconds(lambda: pipe(PROMPT, candidates=k), args.repeats)
        print(f"{k} candidates at the model's defaults ({steps} steps): {judged:6.3f} s/clip against {one:6.3f} with "
              f"one ({judged / one:.2f}x)")

if __name__ == "__main__":
    main()
