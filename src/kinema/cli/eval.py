"""`kinema eval`: prompt adherence, the probe, reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from kinema.cli.common import add_candidates_flag, add_model_flag, add_sampling_flags, eval_pipeline, parse_seeds


def cmd_eval_adherence(args: argparse.Namespace) -> None:
    from kinema.data.world import check_new_color
    from kinema.eval.adherence import concept_prompts, expanding, pipeline_generator, prompt_set, run_adherence
    from kinema.eval.probe import WORLD_COLORS
    from kinema.generate import default_model

    model = args.model or default_model()
    # one prompt set per seed, pooled: two-object adherence moves by 20 points between sets of 50 (session 38)
    prompts, colors = [p for seed in args.seed for p in prompt_set(args.n, seed)], WORLD_COLORS
    if args.concept:
        check_new_color(args.concept, "--concept")
        prompts += [p for seed in args.seed for p in concept_prompts(args.concept, args.n, seed)]
        colors = (*WORLD_COLORS, args.concept)
    generator = pipeline_generator(model, args.steps, args.guidance, args.lora, args.lora_scale, args.sampler,
                                   args.guidance_interval, args.attention_guidance, args.candidates)
    if args.expand:
        generator = expanding(generator)
    report = run_adherence(generator, prompts, args.out, colors=colors)
    for line in report.lines():
        print(line)
    print(f"wrote {Path(args.out) / 'adherence.json'}")


def cmd_eval_probe(args: argparse.Namespace) -> None:
    from kinema.eval.train_probe import validate_probe

    for kind, acc in validate_probe(args.n).items():
        print(f"{kind:<11} " + "  ".join(f"{a} {v:.1%}" for a, v in acc.items()))


def cmd_eval_train_probe(args: argparse.Namespace) -> None:
    from kinema.eval.train_probe import train_shape_classifier

    acc = train_shape_classifier(args.clips, args.epochs)
    print(f"shape classifier held-out accuracy per crop: {acc:.1%}")


def cmd_eval_conditioning(args: argparse.Namespace) -> None:
    from kinema.eval.conditioning import conditioning_fidelity, fidelity_lines

    pipe = eval_pipeline(args)
    for line in fidelity_lines(conditioning_fidelity(pipe, n=args.n, steps=args.steps)):
        print(line)


def cmd_eval_world(args: argparse.Namespace) -> None:
    import json

    from kinema.eval.world import report_lines, world_report

    pipe = eval_pipeline(args)
    report = world_report(pipe, n=args.n, steps=args.steps, seed=args.seed, candidates=args.candidates)
    for line in report_lines(report):
        print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


def cmd_eval_report(args: argparse.Namespace) -> None:
    from kinema.eval.report import write_report

    print(f"wrote {write_report(args.out, runs=args.runs, adherence=args.adherence)}")


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="prompt adherence, Fréchet distance, reports").add_subparsers(
        dest="eval_cmd", required=True)
    def model_eval(name: str, help: str, n: int, n_help: str, func, steps: int | None = None):
        """A subcommand that generates with a model and judges what it made."""
        p = ev.add_parser(name, help=help)
        add_model_flag(p)
        p.add_argument("--n", type=int, default=n, help=n_help)
        p.add_argument("--steps", type=int, default=steps, help="sampling steps (default: the model's)"
                       if steps is None else None)
        p.set_defaults(func=func)
        return p

    p = model_eval("adherence", "generate a fixed prompt set and judge it with the probe", 25, "prompts per category",
                   cmd_eval_adherence)
    p.add_argument("--seed", type=parse_seeds, default=(123,), metavar="SEED[,SEED...]",
                   help="the prompt set's seed; several, comma-separated, pool their sets (--n per category each): "
                   "one set of 50 is a noisy estimate (default: 123)")
    p.add_argument("--guidance", type=float)
    add_sampling_flags(p)
    p.add_argument("--lora", help="a LoRA adapter folder (`kinema dit finetune`) added to the model")
    p.add_argument("--lora-scale", type=float, default=1.0)
    p.add_argument("--concept", help="also judge prompts with this new color (a category 'new'; the probe reads it "
                   "too), e.g. pink")
    p.add_argument("--expand", action="store_true", help="expand each prompt first, as `kinema generate` does by "
                   "default (the default judges the model on the prompts as written)")
    p.add_argument("--out", default="out/adherence")
    model_eval("conditioning", "frame-conditioning fidelity per mode (image, extend, extend backward, connect): "
               "given frames kept, seams against real motion", 8, "rendered clips per mode", cmd_eval_conditioning, 20)
    p = model_eval("world", "world-simulator metrics: straight-line motion, speed, object count, size and shape "
                   "kept, permanence through occlusion, extension consistency (real clips: the floor)", 16,
                   "scenes per test", cmd_eval_world)
    p.add_argument("--seed", type=int, default=0)
    add_candidates_flag(p)
    p.add_argument("--out", help="write the report as JSON here")
    p = ev.add_parser("probe", help="the probe's accuracy per attribute on held-out clean and degraded clips")
    p.add_argument("--n", type=int, default=300)
    p.set_defaults(func=cmd_eval_probe)
    p = ev.add_parser("train-probe", help="retrain the probe's shape classifier (writes the packaged weights)")
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=15)
    p.set_defaults(func=cmd_eval_train_probe)
    p = ev.add_parser("report", help="a self-contained HTML report: loss curves, adherence, sample grids")
    p.add_argument("--runs", nargs="*", default=[], help="training run folders (metrics.jsonl, samples/)")
    p.add_argument("--adherence", nargs="*", default=[], help="folders with adherence.json")
    p.add_argument("--out", default="out/report.html")
    p.set_defaults(func=cmd_eval_report)
