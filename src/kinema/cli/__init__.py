"""`kinema` command line. Thin: each subcommand parses arguments and calls one library function. One module
per stage (data, vae, dit, generate, eval, caption, experiment, serve), as flux splits its CLI per task."""

from __future__ import annotations

import argparse
import sys

STAGES = """pipeline stages:
  data        make, ingest and look at datasets (shapes world; real video folders)
  caption     the video captioner: train it, recaption a dataset
  vae         train / evaluate the video compression network; encode latents
  dit         train the diffusion transformer on spacetime patches of latents; LoRA fine-tuning
  lora        fold a LoRA adapter into a model folder
  plan        memory and time of a training run before it starts
  generate    text (+ frames) to video with a trained model
  eval        prompt adherence, Fréchet distance, reports
  experiment  recaptioning ablation; scaling study (DiT sizes, power-law fit, DiT vs 3D U-Net)
  serve       HTTP API and web page
  demo        the main job of `make demo`
"""


def build_parser() -> argparse.ArgumentParser:
    from kinema.cli.caption import add_caption_commands
    from kinema.cli.common import show_defaults
    from kinema.cli.data import add_data_commands
    from kinema.cli.dit import add_dit_commands, add_lora_command, add_plan_command
    from kinema.cli.eval import add_eval_commands
    from kinema.cli.experiment import add_experiment_commands
    from kinema.cli.export import add_export_command
    from kinema.cli.generate import add_generate_command
    from kinema.cli.serve import add_demo_command, add_serve_command
    from kinema.cli.vae import add_vae_commands

    parser = argparse.ArgumentParser(prog="kinema", description="Text-to-video, the Sora recipe, end to end.",
                                     epilog=STAGES)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_data_commands, add_vae_commands, add_dit_commands, add_generate_command, add_eval_commands,
                add_caption_commands, add_experiment_commands, add_lora_command, add_plan_command, add_serve_command,
                add_demo_command, add_export_command):
        add(sub)
    show_defaults(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Errors the user can fix (bad input: ValueError and its kin; files: OSError) print one line naming what is
    wrong and exit 2; `kinema --debug ...` shows the traceback instead. Anything else is a bug and raises."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"kinema: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kinema: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
