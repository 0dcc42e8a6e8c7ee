"""`kinema generate`: text (+ frames) to video."""

from __future__ import annotations

import argparse

from kinema.cli.common import add_model_flag, add_sampling_flags, parse_size


def cmd_generate(args: argparse.Namespace) -> None:
    from kinema.generate import generate_to_files

    for path in generate_to_files(args):
        print(f"wrote {path}")


def add_generate_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text (+ frames) to video with a trained model")
    p.add_argument("prompt")
    p.add_argument("-o", "--out", default="out/video.mp4", help="output .mp4 (or .gif)")
    add_model_flag(p)
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (default: the empty caption)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's, in its model_index.json)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, help="frames, 1 + 4k for x4-time VAEs (default: the model's)")
    p.add_argument("--size", type=parse_size, help="H or HxW (default: the model's)")
    add_sampling_flags(p)
    p.add_argument("--gif", action="store_true", help="also write a .gif beside the mp4")
    p.add_argument("--show-steps", action="store_true", help="also write the denoising trajectory as a PNG sheet")
    p.add_argument("--image", help="image-to-video: an image file used as the first frame")
    p.add_argument("--extend", help="continue this video forward (its frames start the clip)")
    p.add_argument("--extend-backward", help="lead into this video (its frames end the clip)")
    p.add_argument("--connect", nargs=2, metavar=("A", "B"), help="a clip from the last frame of A to the first of B")
    p.add_argument("--edit", help="video-to-video: edit this video toward the prompt (SDEdit)")
    p.add_argument("--strength", type=float, default=0.6, help="--edit strength: 0 keeps the input, 1 ignores it")
    p.add_argument("--lora", help="a LoRA adapter folder (`kinema dit finetune --lora`) added to the model at load")
    p.add_argument("--lora-scale", type=float, default=1.0, help="how strongly the adapter acts (0: off)")
    p.add_argument("--only-new", action="store_true", help="--extend/--extend-backward: write only the new frames "
                   "(default: the source with the new frames)")
    p.add_argument("--no-expand", action="store_true", help="use the prompt as given (no prompt expansion)")
    p.add_argument("--fp32", action="store_true", help="run the DiT and VAE in float32 (default: bf16 autocast "
                   "where the hardware is fast at it: GPUs, CPUs with AMX)")
    p.set_defaults(func=cmd_generate)
