"""`kinema experiment`: the recipe's claims, measured."""

from __future__ import annotations

import argparse
from pathlib import Path

from kinema.cli.common import parse_fhw
from kinema.data.captions import SHAPES_LEVELS
from kinema.diffusion.samplers import samplers_for


def cmd_experiment_recaption(args: argparse.Namespace) -> None:
    from kinema.experiments.recaption import RecaptionExperiment, run_recaption_experiment

    exp = RecaptionExperiment(Path(args.latents), Path(args.captioner), Path(args.out), args.share, args.preset,
                              args.steps, args.batch_size, args.eval_n, args.eval_steps, seed=args.seed,
                              patch=args.patch, guidance=args.guidance)
    results = run_recaption_experiment(exp, Path(args.doc) if args.doc else None)
    for arm, r in results["arms"].items():
        m = r["adherence"][exp.categories[0]]
        attrs = [k for k in ("color", "shape", "size", "motion", "speed", "background") if k in m]  # what it varies
        print(f"({arm}) {r['name']:<18} all-correct {m['all_correct']:.1%}  "
              + "  ".join(f"{k} {m[k]:.0%}" for k in attrs))
    print(f"results: {exp.out / 'results.json'}" + (f"; report: {args.doc}" if args.doc else ""))


def cmd_experiment_scaling(args: argparse.Namespace) -> None:
    from kinema.experiments.scaling import ScalingExperiment, run_scaling_experiment

    exp = ScalingExperiment(Path(args.latents), Path(args.out), tuple(args.sizes), args.steps, args.batch_size,
                            args.lr, args.val_clips, args.evals, None if args.no_unet else args.unet_match,
                            args.eval_n, args.eval_steps, args.seed, args.ema_decay, args.grad_clip, args.eval_level,
                            args.guidance, args.world_n)
    results = run_scaling_experiment(exp, Path(args.doc) if args.doc else None)
    for name, r in results["runs"].items():
        last = r["points"][-1]
        print(f"{name:<12} {r['params'] / 1e6:6.2f} M params  {last['compute']:.3g} FLOPs  val loss "
              f"{last['val_loss']:.4f}  all-correct {r['adherence']['all_correct']:.0%}")
    fit = results["fit_frontier"] or results["fit_final"]
    print(f"power law: loss = {fit['a']:.3g} * C^{fit['exponent']:.4f} (R² {fit['r2']:.3f}); "
          f"results: {exp.out / 'results.json'}" + (f"; report: {args.doc}" if args.doc else ""))


def cmd_experiment_ladder(args: argparse.Namespace) -> None:
    import torch

    from kinema.experiments.ladder import LadderExperiment, run_ladder

    if args.threads:
        torch.set_num_threads(args.threads)
    exp = LadderExperiment(Path(args.out), tuple(args.rungs), args.steps, args.batch_size, eval_n=args.eval_n,
                           guidance=args.guidance, sampler=args.sampler)
    for r in run_ladder(exp, Path(args.doc) if args.doc else None):
        print(f"{r['rung']['name']:<14} all-correct {r['all_correct']:.0%}  color {r['color']:.0%}  shape "
              f"{r['shape']:.0%}  motion {r['motion']:.0%}  temporal {r['temporal']:.3f}  word swap "
              f"{r['word_swap']:+.1%}  ({r['train_minutes']:.1f} min)")


def cmd_experiment_lora(args: argparse.Namespace) -> None:
    import torch

    from kinema.experiments.lora import LoRAConceptExperiment, run_lora_experiment, summary_lines

    if args.threads:
        torch.set_num_threads(args.threads)
    exp = LoRAConceptExperiment(Path(args.out), Path(args.model) if args.model else None, args.color, args.clips,
                                args.share, args.rank, args.steps, args.batch_size, args.lr, args.eval_n, args.seed)
    for line in summary_lines(run_lora_experiment(exp, Path(args.doc) if args.doc else None)):
        print(line)
    print(f"results: {exp.out / 'results.json'}" + (f"; report: {args.doc}" if args.doc else ""))


def add_experiment_commands(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("experiment", help="the recipe's claims, measured: recaptioning ablation, scaling study")
    ex = ex.add_subparsers(dest="experiment_cmd", required=True)
    p = ex.add_parser("recaption", help="DiT on original vs captioner-written vs true detailed captions (5%% of "
                                        "clips keep theirs)")
    p.add_argument("--latents", required=True, help="latent cache of the dataset (shapes world: ground truth known)")
    p.add_argument("--captioner", required=True, help="a `kinema caption train` output folder")
    p.add_argument("--out", required=True)
    p.add_argument("--share", type=float, default=0.05, help="share of clips that keep detailed captions")
    p.add_argument("--preset", default="shapes", help="DiT preset for both arms")
    p.add_argument("--patch", type=parse_fhw, metavar="TxHxW",
                   help="DiT latent patch for both arms (default: the preset's)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-n", type=int, default=50, help="detailed prompts for the adherence eval")
    p.add_argument("--eval-steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--doc", help="write the markdown report (and a .png plot beside it) here")
    p.set_defaults(func=cmd_experiment_recaption)
    p = ex.add_parser("scaling", help="DiT sizes at fixed data: loss vs compute power law, adherence, vs a 3D U-Net")
    p.add_argument("--latents", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", nargs="+", default=["64x2", "96x3", "128x4", "192x6"], help="DiT WIDTHxDEPTH each")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--val-clips", type=int, default=256, help="held out from training for the validation loss")
    p.add_argument("--evals", type=int, default=4, help="validation points per run (checkpoints kept)")
    p.add_argument("--ema-decay", type=float, help="EMA decay (default: the training loop's)")
    p.add_argument("--grad-clip", type=float, help="gradient-norm clip (default: the training loop's)")
    p.add_argument("--eval-level", default="medium", choices=SHAPES_LEVELS,
                   help="caption level of the adherence prompts (when the data's world is known)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--world-n", type=int, default=0, help="scenes per world-simulator test per size (0: skip)")
    p.add_argument("--unet-match", default="128x4", help="DiT size whose FLOPs the U-Net baseline matches")
    p.add_argument("--no-unet", action="store_true")
    p.add_argument("--eval-n", type=int, default=16)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--doc", help="write the markdown report (and a .png plot beside it) here")
    p.set_defaults(func=cmd_experiment_scaling)
    p = ex.add_parser("ladder", help="learning efficiency: one factor per rung from a working small recipe "
                                     "toward the full world (docs/experiments/learning-efficiency.md)")
    p.add_argument("--out", required=True, help="runs folder (rungs resume; data cached in OUT/cache)")
    p.add_argument("--rungs", nargs="+", default=["base"], help="rung names (kinema.experiments.ladder)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-n", type=int, default=64, help="fresh prompts per rung")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--threads", type=int, help="torch threads (1 to run two rungs side by side)")
    p.add_argument("--sampler", choices=samplers_for("flow"), help="score with this sampler into each rung's "
                   "result-SAMPLER.json, a trained rung's model reused (default: Euler, into result.json)")
    p.add_argument("--doc", help="write the table of every rung run so far here (markdown)")
    p.set_defaults(func=cmd_experiment_ladder)
    p = ex.add_parser("lora", help="teach the bundled model a new color with a LoRA adapter; adherence on the new "
                                   "concept and on the old prompts, base vs adapter (docs/experiments/lora.md)")
    p.add_argument("--out", required=True, help="runs folder (every stage resumes)")
    p.add_argument("--model", help="base model folder (default: the bundled model)")
    p.add_argument("--color", default="pink", help="the new color (kinema.data.world.NEW_COLORS)")
    p.add_argument("--clips", type=int, default=256)
    p.add_argument("--share", type=float, default=0.5, help="share of clips with the new color (the rest: replay)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-n", type=int, default=50, help="prompts per category (new color; old single-object)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--doc", help="write the markdown report (and its contact sheet) here")
    p.set_defaults(func=cmd_experiment_lora)
