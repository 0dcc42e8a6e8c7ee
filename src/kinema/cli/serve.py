"""`kinema serve` and `kinema demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from kinema.cli.common import add_model_flag


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from kinema.serve.app import create_app

    if args.host not in ("127.0.0.1", "localhost"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can use the model")
    app = create_app(model_dir=args.model, max_queued=args.max_queued, state_dir=args.state_dir,
                     keep_finished=args.keep_finished)
    uvicorn.run(app, host=args.host, port=args.port)


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP API + web page over a model")
    add_model_flag(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queued", type=int, default=8, help="jobs waiting at most (then 429 with Retry-After)")
    p.add_argument("--state-dir", default="out/serve", help="the job database and result videos (kept across "
                   "restarts: queued jobs run after one)")
    p.add_argument("--keep-finished", type=int, default=200, help="finished jobs kept (older ones are removed "
                   "with their videos)")
    p.set_defaults(func=cmd_serve)


def cmd_demo(args: argparse.Namespace) -> None:
    from kinema.demo import run_demo

    for path in run_demo(Path(args.out)):
        print(f"wrote {path}")


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: make a video and a contact sheet")
    p.add_argument("--out", default="out/demo")
    p.set_defaults(func=cmd_demo)
