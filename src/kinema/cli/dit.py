"""`kinema dit`: train, distill and export the diffusion transformer."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from kinema.cli.common import (
    add_model_flag,
    add_sampling_flags,
    add_train_flags,
    bundled_model,
    parse_fhw,
    parse_size,
    train_config,
    trained_line,
)


def cmd_dit_train(args: argparse.Namespace) -> None:
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import make_objective
    from kinema.presets import DIT_TRAIN, FLOW_NOISE, dit_preset, lookup
    from kinema.train.dit_task import DiTTask
    from kinema.train.loop import train

    cfg = train_config(lookup(DIT_TRAIN, args.preset, "dit"), args)
    data = LatentDataset(args.latents)
    sizes = {k: v for k, v in (("dim", args.width), ("depth", args.depth), ("heads", args.heads),
                               ("rope_theta", args.rope_theta)) if v is not None}
    model_cfg = dataclasses.replace(dit_preset(args.preset, data.latent_shape[0], args.patch),
                                    text_refiner=args.text_refiner, pooled_text=not args.no_pooled_text,
                                    joint_attention=args.joint_attention, **sizes)
    objective = make_objective(args.objective)
    given = {k: v for k, v in (("logit_mean", args.logit_mean), ("shift", args.shift), ("prediction", args.prediction),
                               ("input_perturbation", args.input_perturbation)) if v is not None}
    if given and args.objective != "flow":
        raise ValueError("--logit-mean, --shift, --prediction and --input-perturbation set the flow objective; "
                         "use --objective flow")
    if args.objective == "flow":
        objective = dataclasses.replace(objective, **(FLOW_NOISE | given))
    task = DiTTask(data, model_cfg, objective, cfg.batch_size, cfg.grad_accum, seed=cfg.seed,
                   vae_dir=Path(data.meta["vae"]) if data.meta.get("vae") else None,
                   init_from=Path(args.init_from) if args.init_from else None, foreground_weight=args.foreground_weight,
                   foreground_of=args.foreground_of, foreground_from=args.foreground_from[0],
                   foreground_from_share=args.foreground_from[1], late_logit_mean=args.late_logit_mean,
                   grounding_weight=args.grounding_weight,
                   **({"caption_mix": _check_mix(args.caption_mix, data)} if args.caption_mix else {}))
    _plan_or_refuse(args, cfg, data, task.model_cfg)  # the model it trains: overrides and the text width
    result = train(task, cfg, args.out)
    print(trained_line(result, f"model folder: {Path(args.out) / 'model'}"))


def parse_caption_mix(text: str) -> dict[str, float]:
    """'detailed=0.4,free=0.3,medium=0.2,short=0.1' -> {level: weight}; weights >= 0, not all 0."""
    from kinema.data.captions import CAPTION_LEVELS

    mix = {}
    for part in text.split(","):
        level, eq, weight = part.partition("=")
        level = level.strip()
        if not eq or level not in CAPTION_LEVELS:
            raise argparse.ArgumentTypeError(f"{part!r}: expected LEVEL=WEIGHT with LEVEL one of {CAPTION_LEVELS}")
        try:
            mix[level] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: the weight {weight!r} is not a number") from None
        if mix[level] < 0:
            raise argparse.ArgumentTypeError(f"{part!r}: a weight must be >= 0")
    if not any(mix.values()):
        raise argparse.ArgumentTypeError(f"{text!r}: every weight is 0")
    return mix


def _step_or_share(text: str) -> tuple[int, float]:
    """'3000' -> (3000, 0.0), a step; '45%' -> (0, 0.45), a share of the run's steps."""
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 <= share < 1:
                raise argparse.ArgumentTypeError(f"{text!r}: a share must be from 0% to under 100%")
            return 0, share
        step = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a step (e.g. 3000) or a share of the run (e.g. "
                                         "45%)") from None
    if step < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a step must be >= 0")
    return step, 0.0


def _check_mix(mix: dict[str, float], data) -> dict[str, float]:
    """A mix whose levels the latent cache does not hold would be silently narrowed: refuse it instead."""
    missing = [lv for lv, w in mix.items() if w > 0 and lv not in data.text]
    if missing:
        raise ValueError(f"--caption-mix: {data.root} has no captions of level {missing} (it has {sorted(data.text)}; "
                         f"a dataset synthesised before the 'free' level existed can be synthesised again)")
    return mix


def cmd_dit_finetune(args: argparse.Namespace) -> None:
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import objective_from_dict
    from kinema.model_index import read_model_index
    from kinema.presets import LORA_TRAIN
    from kinema.train.loop import train
    from kinema.train.lora_task import LoRATask, adapter_numbers, base_model_config

    if not args.lora:
        raise ValueError("dit finetune needs --lora RANK (full fine-tuning: `dit train --init-from MODEL`)")
    model = Path(args.model or bundled_model())
    cfg = train_config(LORA_TRAIN, args)
    data = LatentDataset(args.latents)
    index = read_model_index(model)
    wanted, cached = index.text_encoder, data.meta.get("text_encoder")
    if cached != wanted:
        raise ValueError(f"{args.latents}: captions encoded with {cached!r}, but {model} reads prompts with "
                         f"{wanted!r}; encode the clips with `kinema vae encode --vae {model} ...` (its text "
                         f"encoder is the default there) or `--text-encoder {wanted}`")
    task = LoRATask(data, base_model_config(model), objective_from_dict(index.objective),
                    cfg.batch_size, cfg.grad_accum, seed=cfg.seed, cond_prob=args.cond_prob,
                    vae_dir=Path(data.meta["vae"]) if data.meta.get("vae") else None, base_model=model,
                    rank=args.lora, alpha=args.lora_alpha)
    result = train(task, cfg, args.out)
    n = adapter_numbers(args.out, model)
    print(f"trained to step {result.step}, loss {result.last_loss:.4f}; adapter {result.exported}: "
          f"{n['adapter_params']:,} parameters ({n['adapter_bytes'] / 1e6:.2f} MB) beside the model's "
          f"{n['model_params']:,} ({n['model_bytes'] / 1e6:.1f} MB); use it: kinema generate ... --lora {args.out}")


def cmd_lora_merge(args: argparse.Namespace) -> None:
    from kinema.train.lora_task import merge_into_folder

    out = merge_into_folder(args.model or bundled_model(), args.lora, args.out, args.lora_scale)
    print(f"wrote model folder {out} (the adapter folded into its DiT weights)")


def add_lora_command(sub: argparse._SubParsersAction) -> None:
    lora = sub.add_parser("lora", help="LoRA adapters: fold one into a model").add_subparsers(dest="lora_cmd",
                                                                                             required=True)
    p = lora.add_parser("merge", help="a new model folder with the adapter folded into its weights")
    add_model_flag(p, "base model folder")
    p.add_argument("--lora", required=True, help="a `dit finetune --lora` run folder (adapter.safetensors)")
    p.add_argument("--lora-scale", type=float, default=1.0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_lora_merge)


def cmd_plan(args: argparse.Namespace) -> None:
    from kinema.plan import make_plan

    plan = make_plan(args.preset, frames=args.frames, size=args.size, batch=args.batch, gpus=args.gpus,
                     dtype=args.dtype, activation_checkpointing=args.activation_checkpointing,
                     in_channels=args.latent_channels, vae_spatial=args.vae_spatial, vae_temporal=args.vae_temporal,
                     peak_tflops=args.peak_tflops, memory_gib=args.memory_gib, device=args.device)
    for line in plan.lines():
        print(line)
    print(plan.summary())


def add_plan_command(sub: argparse._SubParsersAction) -> None:
    from kinema.presets import DIT_PRESETS

    p = sub.add_parser("plan", help="memory and time of a DiT training run, before it starts")
    p.add_argument("--preset", choices=sorted(DIT_PRESETS), default="shapes")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=parse_size, default=(64, 64), help="H or HxW")
    p.add_argument("--batch", type=int, default=32, help="clips per device per step")
    p.add_argument("--gpus", type=int, default=1, help="devices (the plan shows DDP and FSDP2 when > 1)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--latent-channels", type=int, default=16)
    p.add_argument("--vae-spatial", type=int, default=8)
    p.add_argument("--vae-temporal", type=int, default=4)
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s: step time from it (40%% "
                   "utilisation) instead of a 3-step micro-run here")
    p.add_argument("--memory-gib", type=float, help="memory per device to fit (default: this machine's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where to measure")
    p.set_defaults(func=cmd_plan)


def _plan_or_refuse(args: argparse.Namespace, cfg, data, model_cfg) -> None:
    """The plan's one line before training (saved tensors counted: a lower bound, fast); a run that cannot fit
    even that is refused unless --force."""
    import torch

    from kinema.config import from_dict
    from kinema.plan import check_fits, make_plan
    from kinema.precision import use_bf16
    from kinema.vae.model import VAEConfig

    vae = from_dict(VAEConfig, data.meta["vae_config"], where=f"{args.latents}/meta.json vae_config")
    frames, height, width = vae.pixel_shape(*data.latent_shape[1:])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bf16" if use_bf16(cfg.bf16, device) else "fp32"
    plan = make_plan(args.preset, frames=frames, size=(height, width), batch=cfg.batch_size,
                     gpus=int(os.environ.get("WORLD_SIZE", "1")), dtype=dtype,
                     activation_checkpointing=cfg.activation_checkpointing, in_channels=data.latent_shape[0],
                     vae_spatial=vae.spatial_compression, vae_temporal=vae.temporal_compression, calibrate=False,
                     device=device, dit_cfg=model_cfg)  # its patch, width, ... are the model's
    print(plan.summary() + " (activations: saved tensors, a lower bound; `kinema plan` measures)")
    check_fits(plan, force=args.force)


def cmd_dit_export(args: argparse.Namespace) -> None:
    from kinema.train.export import export_model_folder

    out = export_model_folder(args.run, args.out, weights=args.weights, half=args.fp16, steps=args.steps,
                              guidance=args.guidance, sampler=args.sampler, guidance_interval=args.guidance_interval,
                              attention_guidance=args.attention_guidance, candidates=args.candidates)
    print(f"wrote model folder {out}")


def cmd_dit_distill(args: argparse.Namespace) -> None:
    from kinema.presets import REFLOW_TRAIN
    from kinema.train.reflow import distill

    cfg = train_config(REFLOW_TRAIN, args)
    exported = distill(args.model or bundled_model(), args.latents, args.out, cfg, args.pairs, args.teacher_steps,
                       args.guidance, args.seed or 0)
    print(f"few-step student: {exported.parent if exported else args.out} (sample with --steps 4 --guidance 1)")




def add_dit_commands(sub: argparse._SubParsersAction) -> None:
    from kinema.presets import DIT_PRESETS

    dit = sub.add_parser("dit", help="the diffusion transformer").add_subparsers(dest="dit_cmd", required=True)
    p = dit.add_parser("train", help="train a DiT on a latent cache (resumes from --out if it holds checkpoints)")
    p.add_argument("--latents", required=True, help="folder made by `kinema vae encode`")
    add_train_flags(p, sorted(DIT_PRESETS), "shapes")
    p.add_argument("--objective", choices=["flow", "epsilon", "v"], default="flow")
    p.add_argument("--patch", type=parse_fhw, metavar="TxHxW",
                   help="latent patch per token (default: the preset's 1x2x2; 1x1x1 gives 4x the tokens, a finer "
                        "grid: see docs/experiments/patch-size.md)")
    p.add_argument("--width", type=int, help="the DiT's width (default: the preset's; e.g. ref 192)")
    p.add_argument("--depth", type=int, help="the number of DiT blocks (default: the preset's)")
    p.add_argument("--heads", type=int, help="attention heads (default: the preset's; must divide the width)")
    p.add_argument("--rope-theta", type=float, help="base of the RoPE frequencies (default: the preset's, 10000; the "
                   "ladder's -full-13-theta100: 100 spreads a 4x4-token frame's rows and columns over more of "
                   "them, docs/experiments/learning-efficiency.md)")
    p.add_argument("--init-from", help="start from a model folder's DiT weights (a wider text input is zero-padded, "
                                       "so the start computes what that model computed). With a --patch finer than "
                                       "that model's (1x4x4 -> 1x2x2) the run continues that model on more tokens: "
                                       "its patch embedding and output layer are converted and positions keep the "
                                       "old units (dit.model.repatch_state). With a --depth larger than the "
                                       "model's, the added blocks are silent copies of their neighbours, so the "
                                       "start computes what that model computed (dit.model.deepen_state). The "
                                       "other size options must match the model's")
    p.add_argument("--force", action="store_true", help="train even when the plan says it cannot fit")
    p.add_argument("--logit-mean", type=float, help="flow: centre of the logit-normal training noise levels (default "
                   "0.8: more training at high noise, where layout and motion are decided; 0 is SD3's)")
    p.add_argument("--shift", type=float, help="flow: sampling shift of the noise schedule, saved with the model "
                   "(default 2: more sampling steps at high noise; 1 is none)")
    p.add_argument("--prediction", choices=["velocity", "x0"], help="flow: what the DiT outputs (default velocity; "
                   "x0 predicts the clean latent, turned into a velocity for the loss and the sampler: for large "
                   "patches, whose tokens have many values)")
    p.add_argument("--input-perturbation", type=float, metavar="GAMMA", help="flow: train on inputs with GAMMA x "
                   "sigma more noise than their level, the target unchanged (DDPM-IP, against exposure bias; 0.1 "
                   "is typical; default 0)")
    p.add_argument("--joint-attention", action="store_true", help="MM-DiT blocks: the prompt is a second stream and "
                   "one attention runs over prompt and video (instead of cross-attention)")
    p.add_argument("--text-refiner", type=int, default=0, metavar="N", help="N trainable layers over the prompt "
                   "tokens before the blocks read them")
    p.add_argument("--foreground-weight", type=float, default=0.0, help="extra loss weight on latent positions far "
                   "from the clip's median latent (objects on a flat background; 9 counts them 10x)")
    p.add_argument("--foreground-of", choices=["clip", "either"], default="clip", help="whose objects "
                   "--foreground-weight weights: the clip's, or also those the model drew where the clip has none "
                   "(either: an extra copy then costs what a missing object does)")
    p.add_argument("--foreground-from", type=_step_or_share, default=(0, 0.0), metavar="STEP|N%",
                   help="--foreground-weight counts from this step on, or from N%% of the run's steps (a --minutes "
                   "run's too; default 0: every step), e.g. once layout and motion are learned")
    p.add_argument("--late-logit-mean", type=float, metavar="M", help="the flow noise centre (--logit-mean) from "
                   "--foreground-from on: e.g. high noise first for layout and motion, then lower for shapes")
    p.add_argument("--grounding-weight", type=float, default=0.0, metavar="W", help="add W x a cross-attention "
                   "grounding loss (TokenCompose): each object's clause token should be read by the video tokens "
                   "where that object is (needs a cache of clause tokens, text encoder '...+clauses', made from a "
                   "shapes-world dataset, whose scenes give the objects' places)")
    p.add_argument("--no-pooled-text", action="store_true", help="no mean prompt vector in adaLN (the prompt enters "
                   "through attention only)")
    p.add_argument("--caption-mix", type=parse_caption_mix, metavar="LEVEL=W,...", help="how often each caption level "
                   "is trained on (default detailed=0.5,medium=0.4,short=0.1; 'free' is the freely phrased level)")
    p.set_defaults(func=cmd_dit_train)
    p = dit.add_parser("distill", help="a few-step student by rectified-flow reflow on the teacher's own samples")
    add_model_flag(p, "teacher model folder")
    p.add_argument("--latents", required=True, help="latent cache whose captions prompt the teacher")
    p.add_argument("--pairs", type=int, default=1024, help="(noise, teacher sample) pairs to make")
    p.add_argument("--teacher-steps", type=int, default=16)
    p.add_argument("--guidance", type=float, help="teacher guidance (default: the model's)")
    add_train_flags(p, ["reflow"], "reflow")
    p.set_defaults(func=cmd_dit_distill)
    p = dit.add_parser("finetune", help="LoRA fine-tuning of a trained model on new clips: a small adapter file")
    p.add_argument("--lora", type=int, metavar="RANK", help="adapter rank (e.g. 8)")
    p.add_argument("--lora-alpha", type=float, help="adapter alpha (default: the rank, so the scale is 1)")
    add_model_flag(p, "base model folder")
    p.add_argument("--latents", required=True, help="latent cache of the new clips (`kinema vae encode` with the "
                   "base model's VAE)")
    p.add_argument("--cond-prob", type=float, default=0.3, help="share of samples with frames given (keeps I2V)")
    add_train_flags(p, ["lora"], "lora")
    p.set_defaults(func=cmd_dit_finetune)
    p = dit.add_parser("export", help="a model folder from a run's latest checkpoint (raw or EMA weights)")
    p.add_argument("--run", required=True, help="a `dit train` --out folder")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", choices=["model", "ema"], default="ema")
    p.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size)")
    p.add_argument("--steps", type=int, help="the folder's default sampling steps (default: the run's, 30)")
    p.add_argument("--guidance", type=float, help="its default guidance scale (default: the run's)")
    add_sampling_flags(p)
    p.set_defaults(func=cmd_dit_export)
