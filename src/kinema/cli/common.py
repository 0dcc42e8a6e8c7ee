"""What several stages' commands share: argument types, the training flags and their TrainConfig, the help format."""

from __future__ import annotations

import argparse
import math


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (an option without help text gets one that states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if "%(default)" not in help and "(default" not in help and action.option_strings and _shown(action.default):
            help += " (default: %(default)s)"
        return help


def _shown(default) -> bool:
    return default is not None and default is not False and default is not argparse.SUPPRESS


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Use HelpFormatter in `parser` and every subcommand under it."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if action.help is None and action.option_strings and _shown(action.default):
            action.help = "(default: %(default)s)"
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                show_defaults(sub)


def parse_size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '64x96' -> (64, 96) as (H, W)."""
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be H or HxW, like 64 or 64x96; got {text!r}") from None


def parse_x_ints(text: str, n: int, form: str, example: str) -> tuple[int, ...]:
    """'17x64x96' -> (17, 64, 96): n integers joined by 'x', or an argparse error naming the form."""
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        values = ()
    if len(values) != n:
        raise argparse.ArgumentTypeError(f"expected {form}, like {example}; got {text!r}")
    return values


def parse_fhw(text: str) -> tuple[int, int, int]:
    """'17x64x96' -> (17, 64, 96) as (frames, H, W)."""
    f, h, w = parse_x_ints(text, 3, "FRAMESxHxW", "17x64x96")
    return f, h, w


def parse_tx_s(text: str) -> tuple[int, int]:
    """'4x16' -> (4, 16) as (frames, pixels per side)."""
    t, side = parse_x_ints(text, 2, "FRAMESxPIXELS", "4x16")
    return t, side


def parse_range(text: str) -> tuple[int, int]:
    """'2' -> (2, 2); '1-3' -> (1, 3)."""
    lo, _, hi = text.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI, like 2 or 1-3; got {text!r}") from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """'123' or '123,7,2026' -> distinct integer seeds, in order."""
    try:
        seeds = tuple(int(v) for v in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected one seed or distinct comma-separated seeds (123,7,2026), got "
                                         f"{text!r}")
    return seeds


def parse_range_float(text: str) -> tuple[float, float]:
    """'0.2,0.8' -> (0.2, 0.8): a noise-level interval, 0 <= LO <= HI <= 1."""
    from kinema.diffusion.samplers import check_guidance_interval

    try:
        return check_guidance_interval(text.split(","), "LO,HI")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI with 0 <= LO <= HI <= 1 (noise levels), like 0.2,0.8; "
                                         f"got {text!r}") from None


def parse_attention_guidance(text: str) -> tuple[float, float, float]:
    """'0.05' -> (0.05, the default until, no motion term); '0.05,0.9' -> (0.05, 0.9, 0); '0.05,0.75,1' -> (0.05,
    0.75, 1): attention guidance's strength, the lowest noise level it acts at, the motion term's weight."""
    from kinema.dit.attention_guidance import check_attention_guidance

    try:
        values = [float(v) for v in text.split(",")]
        return check_attention_guidance(values, "--attention-guidance")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STRENGTH[,UNTIL[,MOTION]] with STRENGTH >= 0, 0 <= UNTIL <= 1 "
                                         f"and MOTION >= 0, like 0.05 or 0.05,0.75 or 0.05,0.75,1; got {text!r}"
                                         ) from None


UNCAPPED_STEPS = 10**9  # --minutes without --steps


def train_config(preset, args: argparse.Namespace):
    """The preset's TrainConfig with the flags the user gave on top."""
    import dataclasses

    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "warmup_steps", "seed", "grad_accum",
                                                "ckpt_every", "sample_every", "parallel", "grad_clip")
                 if getattr(args, k, None) is not None}
    if getattr(args, "minutes", None) is not None:
        overrides["minutes"] = args.minutes  # 0: no budget
        if args.minutes > 0:
            overrides.setdefault("steps", UNCAPPED_STEPS)  # the budget sizes the run; --steps given stays a cap
    if getattr(args, "bf16", None) is not None:
        overrides["bf16"] = args.bf16
    if getattr(args, "compile", False):
        overrides["compile"] = True
    if getattr(args, "activation_checkpointing", False):
        overrides["activation_checkpointing"] = True
    return dataclasses.replace(preset, **overrides)


def trained_line(result, made: str) -> str:
    """A train command's last line: the step, the loss and what it made (e.g. "weights: PATH"); a run that was
    already at its last step trained nothing, and says so instead of a NaN loss."""
    if result.exported is None and math.isnan(result.last_loss):  # the loss of no step
        return f"{result.out_dir}: already trained to step {result.step}; nothing to do"
    return f"trained to step {result.step}, loss {result.last_loss:.4f}; {made}"


def add_train_flags(p: argparse.ArgumentParser, presets: list[str], default: str) -> None:
    p.add_argument("--preset", choices=presets, default=default)
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, samples, weights")
    p.add_argument("--steps", type=int)
    p.add_argument("--minutes", type=float, help="train for this many wall-clock minutes: the run's length is sized "
                   "when LR warmup ends, from the rate measured there, so the cosine ends with the budget (a resumed "
                   "run keeps that length; with --steps, at most that many)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int, help="linear LR warmup steps (then cosine to lr * min_lr_ratio)")
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (default: the preset's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--sample-every", type=int)
    p.add_argument("--parallel", choices=["auto", "ddp", "fsdp", "none"])
    p.add_argument("--bf16", dest="bf16", action="store_const", const=True,
                   help="force bf16 autocast (default: auto, bf16 only where the hardware is fast at it)")
    p.add_argument("--no-bf16", dest="bf16", action="store_const", const=False, help="train in fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU: worth it; CPU: slow start)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations in "
                   "backward (less memory, ~30%% more compute)")


def add_text_encoder_flag(p: argparse.ArgumentParser, model_default: bool = False) -> None:
    """--text-encoder; with `model_default` it defaults to the --vae model folder's own (None here)."""
    from kinema.text.encoder import DEFAULT_TEXT_ENCODER

    default = (f"the model folder's when --vae is one, e.g. models/shapes-64, else {DEFAULT_TEXT_ENCODER}"
               if model_default else DEFAULT_TEXT_ENCODER)
    p.add_argument("--text-encoder", default=None if model_default else DEFAULT_TEXT_ENCODER,
                   help=f"'minilm' (last layer), 'minilm:0,6' (input embeddings + last layer), either with "
                        f"'+clauses' (one more token per clause), or a local Hugging Face model folder (default: "
                        f"{default})")


def bundled_model() -> str:
    from kinema.generate import BUNDLED_MODEL

    return str(BUNDLED_MODEL)


def add_model_flag(p: argparse.ArgumentParser, what: str = "model folder") -> None:
    p.add_argument("--model", help=f"{what} (default: the bundled model, models/shapes-64)")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """--sampler, --guidance-interval and --attention-guidance (each defaults to the model folder's, in its
    model_index.json)."""
    from kinema.diffusion.samplers import SAMPLERS, sampler_help

    p.add_argument("--sampler", choices=sorted(SAMPLERS), help=f"(default: the model's) {sampler_help()}")
    p.add_argument("--guidance-interval", type=parse_range_float, metavar="LO,HI",
                   help="guide only at noise levels t in [LO, HI] (1 = pure noise; default: the model's, else all)")
    p.add_argument("--attention-guidance", type=parse_attention_guidance, metavar="S[,UNTIL[,MOTION]]",
                   help="steer each step at noise level >= UNTIL (default 0.75) by S x the gradient of the "
                   "cross-attention to each object's clause token (read strongly, in one place): fewer objects drawn "
                   "twice or dropped, on models trained with --grounding-weight (on others it draws more copies); "
                   "0.05 is the measured setting; MOTION > 0 also moves each object's attention the way the prompt "
                   "says it moves (motion right more often, objects drawn twice more often too); needs a '+clauses' "
                   "text encoder (default: the model's, else off)")
    add_candidates_flag(p)


def add_candidates_flag(p: argparse.ArgumentParser) -> None:
    """--candidates K (default: the model folder's, in its model_index.json)."""
    p.add_argument("--candidates", type=int, metavar="K",
                   help="sample K starting noises side by side and keep the clip the model itself judges closest to "
                   "the prompt (its conditional denoising error, diffusion/fit.py): on the bundled model's two-object "
                   "prompts K = 3 (its default) is right in 87.4%% over eighteen prompt sets, K = 2 in 82.7%%, at "
                   "~1.9x and ~1.6x the time of one on a CPU; candidates with a prompted object drawn nowhere or "
                   "moving the wrong way rank last (default: the model's, else 1)")


def eval_pipeline(args: argparse.Namespace):
    """The pipeline of --model (or the bundled model), for the eval commands."""
    from kinema.generate import default_model
    from kinema.pipeline import TextToVideoPipeline

    return TextToVideoPipeline.from_pretrained(args.model or default_model())
