"""`kinema caption`: the video captioner: train, evaluate, export, recaption a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from kinema.cli.common import add_train_flags, parse_fhw, parse_tx_s, train_config, trained_line


def _captioner_data(args: argparse.Namespace):
    """What a captioner reads: a latent cache (--latents) or a shard folder's pixels (--data)."""
    from kinema.data.latents import LatentDataset
    from kinema.data.shards import ShardDataset

    return ShardDataset(args.data) if args.data else LatentDataset(args.latents)


def cmd_caption_train(args: argparse.Namespace) -> None:
    from kinema.captioning.captioner import CaptionerConfig, Vocab
    from kinema.presets import CAPTIONER_TRAIN
    from kinema.train.captioner_task import CaptionerTask
    from kinema.train.loop import train

    data = _captioner_data(args)
    subset = None
    if args.subset:
        keys = set(Path(args.subset).read_text().split())
        subset = [i for i, r in enumerate(data.rows) if r["key"] in keys]
        if not subset:
            raise ValueError(f"{args.subset}: none of its keys are in {args.latents or args.data}")
    pool = subset if subset is not None else range(len(data))
    vocab = Vocab.build([data.rows[i]["captions"]["detailed"] for i in pool])
    if args.data:
        shape = {"input": "pixels", "pixel_temporal": args.pixel_patch[0], "pixel_spatial": args.pixel_patch[1]}
    else:
        shape = {"latent_channels": data.latent_shape[0], "patch": args.patch, "input": "latents"}
    model_cfg = CaptionerConfig(**shape, vocab_size=len(vocab), dim=args.dim, encoder_layers=args.layers,
                                decoder_layers=args.layers)
    cfg = train_config(CAPTIONER_TRAIN, args)
    task = CaptionerTask(data, model_cfg, vocab, cfg.batch_size, subset, cfg.grad_accum, cfg.seed)
    result = train(task, cfg, args.out)
    print(trained_line(result, f"weights: {result.exported}"))


def cmd_caption_run(args: argparse.Namespace) -> None:
    from kinema.captioning.recaption import recaption_dataset

    r = recaption_dataset(args.captioner, args.data, args.vae, args.batch_size, args.beams)
    print(f"{r.written} captions written, {r.skipped_existing} already there, {r.failed} unreadable clips "
          f"skipped -> {r.path}")


def cmd_caption_eval(args: argparse.Namespace) -> None:
    from kinema.captioning.recaption import caption_agreement, caption_clips, load_captioner

    model, vocab, _ = load_captioner(args.captioner)
    if (model.cfg.input == "pixels") != bool(args.data):
        wanted = "--data (a shard folder)" if model.cfg.input == "pixels" else "--latents (a latent cache)"
        raise ValueError(f"{args.captioner} reads {model.cfg.input}: pass {wanted}")
    data = _captioner_data(args)
    idx = list(range(min(args.n, len(data))))
    generated = caption_clips(model, vocab, data, idx, beams=args.beams)
    for attr, acc in caption_agreement(generated, [data.rows[i]["captions"]["detailed"] for i in idx]).items():
        print(f"{attr:<10} {acc:.1%}")


def cmd_caption_export(args: argparse.Namespace) -> None:
    from kinema.train.captioner_task import export_captioner

    path = export_captioner(args.run, args.out, weights=args.weights, vae=args.vae)
    print(f"captioner folder: {path.parent}")


def _add_captioner_source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--latents", help="a latent cache: the captioner reads VAE latents")
    source.add_argument("--data", help="a shard folder: the captioner reads pixels (sharper: shape of small objects)")


def add_caption_commands(sub: argparse._SubParsersAction) -> None:
    cap = sub.add_parser("caption", help="the video captioner: train, evaluate, recaption a dataset")
    cap = cap.add_subparsers(dest="caption_cmd", required=True)
    p = cap.add_parser("train", help="train a captioner on the detailed captions of a latent cache or clips")
    _add_captioner_source(p)
    p.add_argument("--subset", help="a file of clip keys that have detailed captions (default: all)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--patch", type=parse_fhw, default=(1, 1, 1), metavar="TxHxW",
                   help="latent patch per video token, with --latents (default 1x1x1: shape needs every latent "
                        "pixel; 1x2x2 is ~2.5x faster and reads shape far worse)")
    p.add_argument("--pixel-patch", type=parse_tx_s, default=(4, 8), metavar="TxS",
                   help="with --data: frames (after the first) and pixels per side of one video token (default "
                        "4x8: 320 tokens for 17x64x64; 4x16 gives 80 tokens, ~3x faster)")
    add_train_flags(p, ["default"], "default")
    p.set_defaults(func=cmd_caption_train)
    p = cap.add_parser("run", help="caption every clip of a dataset into DIR/recaptions.jsonl (resumable)")
    p.add_argument("--captioner", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--vae", help="VAE folder (default: the one the captioner was trained with)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--beams", type=int, default=1)
    p.set_defaults(func=cmd_caption_run)
    p = cap.add_parser("eval", help="attribute agreement of generated captions with the detailed ones")
    p.add_argument("--captioner", required=True)
    _add_captioner_source(p)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--beams", type=int, default=1)
    p.set_defaults(func=cmd_caption_eval)
    p = cap.add_parser("export", help="a captioner folder from a run's latest checkpoint (measure a run as it trains)")
    p.add_argument("--run", required=True, help="a `caption train` --out folder")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", choices=["model", "ema"], default="ema", help="EMA where the run keeps one")
    p.add_argument("--vae", help="the VAE folder of the run's latents (default: the one its export recorded)")
    p.set_defaults(func=cmd_caption_export)
