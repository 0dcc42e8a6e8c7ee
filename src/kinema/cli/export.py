"""`kinema export`: a model folder in another library's format (diffusers)."""

from __future__ import annotations

import argparse


def cmd_export_diffusers(args: argparse.Namespace) -> None:
    try:
        from kinema.interop.diffusers import export_diffusers
    except ImportError as e:
        raise ValueError(f"export diffusers needs diffusers installed (pip install 'kinema[hf]'): {e}") from e
    from kinema.generate import default_model

    model = args.model or default_model()
    for path in export_diffusers(model):
        print(f"wrote {path}")
    print(f"load it with diffusers: from kinema.interop.diffusers import KinemaPipeline; "
          f"KinemaPipeline.from_pretrained({str(model)!r})")


def add_export_command(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="a model folder in another library's format").add_subparsers(
        dest="export_cmd", required=True)
    p = ex.add_parser("diffusers", help="add the files diffusers' from_pretrained reads (JSON only; the weights stay "
                                        "where they are): KinemaPipeline.from_pretrained(MODEL) then runs it")
    p.add_argument("model", nargs="?", help="model folder (default: the bundled model)")
    p.set_defaults(func=cmd_export_diffusers)
