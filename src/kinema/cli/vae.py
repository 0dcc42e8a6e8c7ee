"""`kinema vae`: train, evaluate and round-trip the video compression network; encode latents."""

from __future__ import annotations

import argparse
from pathlib import Path

from kinema.cli.common import add_text_encoder_flag, add_train_flags, train_config, trained_line


def cmd_vae_train(args: argparse.Namespace) -> None:
    from kinema.config import from_dict
    from kinema.data.shards import ShardDataset
    from kinema.io.weights import load_config
    from kinema.presets import VAE_PRESETS, VAE_TRAIN, lookup
    from kinema.train.loop import train
    from kinema.train.vae_task import VAETask
    from kinema.vae.loss import VAELossConfig
    from kinema.vae.model import VAEConfig

    cfg = train_config(lookup(VAE_TRAIN, args.preset, "vae"), args)
    if args.decoder_only and not args.init_from:
        raise SystemExit("kinema vae train: --decoder-only needs --init-from (the VAE whose encoder it keeps)")
    # a run started from a trained VAE takes that VAE's architecture; --preset then only sets the training schedule
    if args.init_from:
        model_cfg = from_dict(VAEConfig, load_config(args.init_from, "vae"), where=f"{args.init_from}/vae.json")
    else:
        model_cfg = lookup(VAE_PRESETS, args.preset, "vae")
    loss_cfg = VAELossConfig(temporal_weight=args.temporal_weight, edge_weight=args.edge_weight,
                             foreground_weight=args.foreground_weight)
    task = VAETask(ShardDataset(args.data), model_cfg, loss_cfg, cfg.batch_size, cfg.grad_accum,
                   crop_frames=args.crop_frames, crop_size=args.crop_size, seed=cfg.seed, preload=args.preload,
                   init_from=Path(args.init_from) if args.init_from else None, decoder_only=args.decoder_only)
    result = train(task, cfg, args.out)
    print(trained_line(result, f"weights: {result.exported}"))


def cmd_vae_eval(args: argparse.Namespace) -> None:
    from kinema.eval.vae import evaluate_vae

    report = evaluate_vae(args.vae, args.data, n=args.n, batch_size=args.batch_size, ceiling_n=args.ceiling_n)
    for line in report.lines():
        print(line)


def cmd_vae_reconstruct(args: argparse.Namespace) -> None:
    from kinema.eval.vae import reconstruct

    r = reconstruct(args.vae, args.input, args.out, lossless=args.lossless)
    print(f"wrote {r['out']}: {r['frames']} frames of {r['height']}x{r['width']} (dropped {r['dropped_frames']} "
          f"trailing frames to fit 1 + t*k), round-trip PSNR {r['psnr']:.2f} dB")


def cmd_vae_encode(args: argparse.Namespace) -> None:
    from kinema.encode import encode_dataset

    out = encode_dataset(args.vae, args.data, args.out, batch_size=args.batch_size, text=not args.no_text,
                         text_encoder_name=args.text_encoder)
    print(f"wrote latents to {out}")






def add_vae_commands(sub: argparse._SubParsersAction) -> None:
    from kinema.presets import VAE_PRESETS

    vae = sub.add_parser("vae", help="the video compression network").add_subparsers(dest="vae_cmd", required=True)
    p = vae.add_parser("train", help="train a VAE on a dataset (resumes from --out if it holds checkpoints)")
    p.add_argument("--data", required=True)
    add_train_flags(p, sorted(VAE_PRESETS), "shapes")
    p.add_argument("--crop-frames", type=int, default=9)
    p.add_argument("--crop-size", type=int, default=32)
    p.add_argument("--temporal-weight", type=float, default=0.0, help="L1 on frame differences")
    p.add_argument("--edge-weight", type=float, default=0.0, help="L1 on horizontal/vertical pixel differences "
                   "(keeps small shapes' edges and corners)")
    p.add_argument("--foreground-weight", type=float, default=0.0, help="extra L1/MSE weight on pixels that differ "
                   "from their frame's median color (small objects on a flat background; the reference used 9: 10x)")
    p.add_argument("--init-from", help="start from this VAE folder's weights (its vae.json sets the architecture)")
    p.add_argument("--decoder-only", action="store_true", help="train only the decoder (with --init-from): the "
                   "latent space stays the same, so latents already encoded and DiTs trained on them stay valid")
    p.add_argument("--preload", action="store_true", help="decode the whole dataset into memory once (fast)")
    p.set_defaults(func=cmd_vae_train)
    p = vae.add_parser("eval", help="PSNR / SSIM, compression ratio and encode/decode throughput")
    p.add_argument("--vae", required=True, help="folder with vae.safetensors + vae.json")
    p.add_argument("--data", nargs="*", default=[], help="dataset folders or video files (PSNR / SSIM)")
    p.add_argument("--n", type=int, default=64, help="clips per dataset")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ceiling-n", type=int, default=128, help="rendered clips per object count for the probe "
                   "ceiling (what the probe reads on reconstructions; 0 skips it)")
    p.set_defaults(func=cmd_vae_eval)
    p = vae.add_parser("reconstruct", help="round-trip a video through the VAE (what the latent keeps)")
    p.add_argument("--vae", required=True, help="folder with vae.safetensors + vae.json")
    p.add_argument("input", help="any video file ffmpeg reads")
    p.add_argument("-o", "--out", required=True, help="output .mp4 or .gif")
    p.add_argument("--lossless", action="store_true", help="write lossless mp4 (libx264rgb), so the file is exactly "
                   "what the decoder drew")
    p.set_defaults(func=cmd_vae_reconstruct)
    p = vae.add_parser("encode", help="cache latents (and text embeddings) of a dataset for DiT training")
    p.add_argument("--vae", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-text", action="store_true", help="skip caching text embeddings")
    add_text_encoder_flag(p, model_default=True)
    p.set_defaults(func=cmd_vae_encode)
