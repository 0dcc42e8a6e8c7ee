"""`kinema` command line. Thin: each subcommand parses arguments and calls one library function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STAGES = """pipeline stages:
  data        make, ingest and look at datasets (shapes world; real video folders)
  caption     the video captioner: train it, recaption a dataset
  vae         train / evaluate the video compression network; encode latents
  dit         train the diffusion transformer on spacetime patches of latents
  generate    text (+ frames) to video with a trained model
  eval        prompt adherence, Fréchet distance, reports
  experiment  recaptioning ablation; scaling study (DiT sizes, power-law fit, DiT vs 3D U-Net)
  serve       HTTP API and web page
  demo        the main job of `make demo`
"""


def _size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '64x96' -> (64, 96) as (H, W)."""
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be H or HxW, like 64 or 64x96; got {text!r}") from None


def _x_ints(text: str, n: int, form: str, example: str) -> tuple[int, ...]:
    """'17x64x96' -> (17, 64, 96): n integers joined by 'x', or an argparse error naming the form."""
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        values = ()
    if len(values) != n:
        raise argparse.ArgumentTypeError(f"expected {form}, like {example}; got {text!r}")
    return values


def _fhw(text: str) -> tuple[int, int, int]:
    """'17x64x96' -> (17, 64, 96) as (frames, H, W)."""
    f, h, w = _x_ints(text, 3, "FRAMESxHxW", "17x64x96")
    return f, h, w


def _tx_s(text: str) -> tuple[int, int]:
    """'4x16' -> (4, 16) as (frames, pixels per side)."""
    t, side = _x_ints(text, 2, "FRAMESxPIXELS", "4x16")
    return t, side


def _range(text: str) -> tuple[int, int]:
    """'2' -> (2, 2); '1-3' -> (1, 3)."""
    lo, _, hi = text.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI, like 2 or 1-3; got {text!r}") from None


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------


def cmd_data_synth(args: argparse.Namespace) -> None:
    from kinema.data.shards import synth_dataset
    from kinema.data.world import WorldConfig

    (h, w), (lo, hi) = args.size, args.objects
    cfg = WorldConfig(frames=args.frames, height=h, width=w, min_objects=lo, max_objects=hi,
                      holdout=tuple(args.holdout or ()))
    out = synth_dataset(args.out, args.n, cfg, seed=args.seed, shard_size=args.shard_size,
                        overwrite=args.overwrite, sizes=args.sizes)
    print(f"wrote {args.n} clips to {out}")


def cmd_data_ingest(args: argparse.Namespace) -> None:
    from kinema.data.folder import IngestConfig, ingest_folder

    cfg = IngestConfig(frames=args.frames, fps=args.fps, sizes=tuple(args.sizes), min_motion=args.min_motion,
                       scene_threshold=None if args.no_scene_cuts else args.scene_threshold,
                       max_clips_per_video=args.max_clips, shard_size=args.shard_size)
    report = ingest_folder(args.dir, args.captions, args.out, cfg)
    for bad in report.unreadable:
        print(f"unreadable: {bad['error']}")
    for name in report.too_short:
        print(f"too short: {name}")
    print(f"{report.summary()} -> {args.out} (details: {Path(args.out) / 'ingest_report.json'})")


def cmd_data_retext(args: argparse.Namespace) -> None:
    from kinema.data.latents import reencode_text

    out = reencode_text(args.latents, args.out, args.text_encoder)
    print(f"wrote {out} (latents from {args.latents}, captions encoded by {args.text_encoder})")


def cmd_data_show(args: argparse.Namespace) -> None:
    from kinema.data.shards import ShardDataset
    from kinema.io.video import contact_sheet, save_image, to_frames

    ds = ShardDataset(args.dir)
    items = [ds[i] for i in range(min(args.n, len(ds)))]
    sheet = contact_sheet([to_frames(it["video"]) for it in items],
                          [it["captions"].get(args.level, it["caption"]) for it in items], scale=args.scale)
    out = save_image(args.out or Path(args.dir) / "contact_sheet.png", sheet)
    print(f"wrote {out}")


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="make and look at datasets").add_subparsers(dest="data_cmd", required=True)
    p = data.add_parser("synth", help="write a shapes-world dataset as tar shards + captions.jsonl")
    p.add_argument("--n", type=int, required=True, help="number of clips")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=_size, default=(64, 64), help="H or HxW (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objects", type=_range, default=(1, 3), help="objects per clip: N or LO-HI (default 1-3)")
    p.add_argument("--holdout", nargs="*", help="'color shape' pairs never generated, e.g. 'yellow triangle'")
    p.add_argument("--sizes", nargs="+", type=_fhw, metavar="FxHxW",
                   help="mixed durations/sizes: each clip gets one of these, e.g. 17x64x64 17x64x96 33x64x64")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true", help="replace a dataset made with other settings")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("ingest", help="a folder of real videos + a captions file -> a dataset (probe, filter, "
                                       "scene cuts, size buckets)")
    p.add_argument("dir", help="folder the captions file's paths are relative to")
    p.add_argument("--captions", required=True, help="CSV (path,caption|text columns) or JSONL ({path, caption})")
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=17, help="frames per clip (1 + 4k)")
    p.add_argument("--fps", type=float, default=8.0, help="sample clips at this frame rate")
    p.add_argument("--sizes", nargs="+", type=_size, default=[(64, 64)], metavar="HxW",
                   help="size buckets; each video goes to the one nearest its aspect ratio (default 64x64)")
    p.add_argument("--min-motion", type=float, default=1.0, help="drop clips with a lower motion score (0-255)")
    p.add_argument("--scene-threshold", type=float, default=40.0, help="frame difference that marks a cut")
    p.add_argument("--no-scene-cuts", action="store_true")
    p.add_argument("--max-clips", type=int, default=8, help="clips per video at most")
    p.add_argument("--shard-size", type=int, default=256)
    p.set_defaults(func=cmd_data_ingest)

    p = data.add_parser("retext", help="a latent cache's captions encoded by another text encoder (latents reused)")
    p.add_argument("--latents", required=True, help="a latent cache made by `kinema vae encode`")
    p.add_argument("--out", required=True, help="new cache folder")
    _add_text_encoder_flag(p)
    p.set_defaults(func=cmd_data_retext)

    p = data.add_parser("show", help="write a PNG contact sheet of a few clips")
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--level", choices=["short", "medium", "detailed", "original", "recaption"], default="detailed",
                   help="caption level to print (a clip without it shows the caption it has)")
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--out", help="PNG path (default DIR/contact_sheet.png)")
    p.set_defaults(func=cmd_data_show)


# ---------------------------------------------------------------------------------------------------
# vae
# ---------------------------------------------------------------------------------------------------


def _train_config(preset, args: argparse.Namespace):
    """The preset's TrainConfig with the flags the user gave on top."""
    import dataclasses

    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "warmup_steps", "seed", "grad_accum",
                                                "ckpt_every", "sample_every", "parallel", "grad_clip")
                 if getattr(args, k, None) is not None}
    if getattr(args, "bf16", None) is not None:
        overrides["bf16"] = args.bf16
    if getattr(args, "compile", False):
        overrides["compile"] = True
    if getattr(args, "activation_checkpointing", False):
        overrides["activation_checkpointing"] = True
    return dataclasses.replace(preset, **overrides)


def cmd_vae_train(args: argparse.Namespace) -> None:
    from kinema.data.shards import ShardDataset
    from kinema.presets import VAE_PRESETS, VAE_TRAIN, lookup
    from kinema.train.loop import train
    from kinema.train.vae_task import VAETask
    from kinema.vae.loss import VAELossConfig

    cfg = _train_config(lookup(VAE_TRAIN, args.preset, "vae"), args)
    task = VAETask(ShardDataset(args.data), lookup(VAE_PRESETS, args.preset, "vae"),
                   VAELossConfig(temporal_weight=args.temporal_weight), cfg.batch_size, cfg.grad_accum,
                   crop_frames=args.crop_frames, crop_size=args.crop_size, seed=cfg.seed, preload=args.preload)
    result = train(task, cfg, args.out)
    print(f"trained to step {result.step}, loss {result.last_loss:.4f}; weights: {result.exported}")


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
    from kinema.data.latents import encode_dataset

    out = encode_dataset(args.vae, args.data, args.out, batch_size=args.batch_size, text=not args.no_text,
                         text_encoder_name=args.text_encoder)
    print(f"wrote latents to {out}")


def _add_text_encoder_flag(p: argparse.ArgumentParser) -> None:
    from kinema.text.encoder import DEFAULT_TEXT_ENCODER

    p.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER,
                   help="'minilm' (last layer), 'minilm:0,6' (input embeddings + last layer, the default) or a "
                        "local Hugging Face model folder")


def _add_train_flags(p: argparse.ArgumentParser, presets: list[str], default: str) -> None:
    p.add_argument("--preset", choices=presets, default=default)
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, samples, weights")
    p.add_argument("--steps", type=int)
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


def add_vae_commands(sub: argparse._SubParsersAction) -> None:
    from kinema.presets import VAE_PRESETS

    vae = sub.add_parser("vae", help="the video compression network").add_subparsers(dest="vae_cmd", required=True)
    p = vae.add_parser("train", help="train a VAE on a dataset (resumes from --out if it holds checkpoints)")
    p.add_argument("--data", required=True)
    _add_train_flags(p, sorted(VAE_PRESETS), "shapes")
    p.add_argument("--crop-frames", type=int, default=9)
    p.add_argument("--crop-size", type=int, default=32)
    p.add_argument("--temporal-weight", type=float, default=0.0)
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
    _add_text_encoder_flag(p)
    p.set_defaults(func=cmd_vae_encode)


# ---------------------------------------------------------------------------------------------------
# dit
# ---------------------------------------------------------------------------------------------------


def cmd_dit_train(args: argparse.Namespace) -> None:
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import make_objective
    from kinema.presets import DIT_TRAIN, dit_preset, lookup
    from kinema.train.dit_task import DiTTask
    from kinema.train.loop import train

    cfg = _train_config(lookup(DIT_TRAIN, args.preset, "dit"), args)
    data = LatentDataset(args.latents)
    model_cfg = dit_preset(args.preset, data.latent_shape[0], args.patch)
    task = DiTTask(data, model_cfg, make_objective(args.objective), cfg.batch_size, cfg.grad_accum, seed=cfg.seed,
                   vae_dir=Path(data.meta["vae"]) if data.meta.get("vae") else None,
                   init_from=Path(args.init_from) if args.init_from else None)
    result = train(task, cfg, args.out)
    print(f"trained to step {result.step}, loss {result.last_loss:.4f}; model folder: {Path(args.out) / 'model'}")


def cmd_dit_export(args: argparse.Namespace) -> None:
    from kinema.train.export import export_model_folder

    out = export_model_folder(args.run, args.out, weights=args.weights, half=args.fp16)
    print(f"wrote model folder {out}")


def cmd_dit_distill(args: argparse.Namespace) -> None:
    from kinema.config import TrainConfig
    from kinema.train.reflow import distill

    preset = TrainConfig(steps=600, batch_size=32, lr=1e-4, warmup_steps=50, ema_decay=0.0, log_every=25,
                         ckpt_every=100)
    exported = distill(args.model or _bundled(), args.latents, args.out, _train_config(preset, args), args.pairs,
                       args.teacher_steps, args.guidance, args.seed or 0)
    print(f"few-step student: {exported.parent if exported else args.out} (sample with --steps 4 --guidance 1)")


def _bundled() -> str:
    from kinema.generate import BUNDLED_MODEL

    return str(BUNDLED_MODEL)


def add_dit_commands(sub: argparse._SubParsersAction) -> None:
    from kinema.presets import DIT_PRESETS

    dit = sub.add_parser("dit", help="the diffusion transformer").add_subparsers(dest="dit_cmd", required=True)
    p = dit.add_parser("train", help="train a DiT on a latent cache (resumes from --out if it holds checkpoints)")
    p.add_argument("--latents", required=True, help="folder made by `kinema vae encode`")
    _add_train_flags(p, sorted(DIT_PRESETS), "shapes")
    p.add_argument("--objective", choices=["flow", "epsilon", "v"], default="flow")
    p.add_argument("--patch", type=_fhw, metavar="TxHxW",
                   help="latent patch per token (default: the preset's 1x2x2; 1x1x1 gives 4x the tokens, a finer "
                        "grid: see docs/experiments/patch-size.md)")
    p.add_argument("--init-from", help="start from a model folder's DiT weights (a wider text input is zero-padded, "
                                       "so the start computes what that model computed)")
    p.set_defaults(func=cmd_dit_train)
    p = dit.add_parser("distill", help="a few-step student by rectified-flow reflow on the teacher's own samples")
    p.add_argument("--model", help="teacher model folder (default: the bundled model)")
    p.add_argument("--latents", required=True, help="latent cache whose captions prompt the teacher")
    p.add_argument("--pairs", type=int, default=1024, help="(noise, teacher sample) pairs to make")
    p.add_argument("--teacher-steps", type=int, default=16)
    p.add_argument("--guidance", type=float, help="teacher guidance (default: the model's)")
    _add_train_flags(p, ["reflow"], "reflow")
    p.set_defaults(func=cmd_dit_distill)
    p = dit.add_parser("export", help="a model folder from a run's latest checkpoint (raw or EMA weights)")
    p.add_argument("--run", required=True, help="a `dit train` --out folder")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", choices=["model", "ema"], default="ema")
    p.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size)")
    p.set_defaults(func=cmd_dit_export)


# ---------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> None:
    from kinema.generate import generate_to_files

    for path in generate_to_files(args):
        print(f"wrote {path}")


def add_generate_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text (+ frames) to video with a trained model")
    p.add_argument("prompt")
    p.add_argument("-o", "--out", default="out/video.mp4", help="output .mp4 (or .gif)")
    p.add_argument("--model", default=None, help="model folder (default: the bundled models/shapes-64)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int)
    p.add_argument("--size", type=_size, help="H or HxW")
    p.add_argument("--sampler", help="euler (flow models); ddim or ddpm (epsilon models)")
    p.add_argument("--gif", action="store_true", help="also write a .gif beside the mp4")
    p.add_argument("--show-steps", action="store_true", help="also write the denoising trajectory as a PNG sheet")
    p.add_argument("--image", help="image-to-video: an image file used as the first frame")
    p.add_argument("--extend", help="continue this video forward (its frames start the clip)")
    p.add_argument("--extend-backward", help="lead into this video (its frames end the clip)")
    p.add_argument("--connect", nargs=2, metavar=("A", "B"), help="a clip from the last frame of A to the first of B")
    p.add_argument("--edit", help="video-to-video: edit this video toward the prompt (SDEdit)")
    p.add_argument("--strength", type=float, default=0.6, help="--edit strength: 0 keeps the input, 1 ignores it")
    p.add_argument("--no-expand", action="store_true", help="use the prompt as given (no prompt expansion)")
    p.add_argument("--fp32", action="store_true", help="run the DiT and VAE in float32 (default: bf16 autocast "
                   "where the hardware is fast at it: GPUs, CPUs with AMX)")
    p.set_defaults(func=cmd_generate)


# ---------------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------------


def cmd_eval_adherence(args: argparse.Namespace) -> None:
    from kinema.eval.adherence import pipeline_generator, prompt_set, run_adherence
    from kinema.generate import default_model

    model = args.model or default_model()
    report = run_adherence(pipeline_generator(model, args.steps, args.guidance), prompt_set(args.n, args.seed),
                           args.out)
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


def cmd_eval_report(args: argparse.Namespace) -> None:
    from kinema.eval.report import write_report

    print(f"wrote {write_report(args.out, runs=args.runs, adherence=args.adherence)}")


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="prompt adherence, Fréchet distance, reports").add_subparsers(
        dest="eval_cmd", required=True)
    p = ev.add_parser("adherence", help="generate a fixed prompt set and judge it with the probe")
    p.add_argument("--model", help="model folder (default: the bundled model)")
    p.add_argument("--n", type=int, default=25, help="prompts per category")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--out", default="out/adherence")
    p.set_defaults(func=cmd_eval_adherence)
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


# ---------------------------------------------------------------------------------------------------
# caption
# ---------------------------------------------------------------------------------------------------


def _captioner_data(args: argparse.Namespace):
    """What a captioner reads: a latent cache (--latents) or a shard folder's pixels (--data)."""
    from kinema.data.latents import LatentDataset
    from kinema.data.shards import ShardDataset

    return ShardDataset(args.data) if args.data else LatentDataset(args.latents)


def cmd_caption_train(args: argparse.Namespace) -> None:
    from kinema.captioning.captioner import CaptionerConfig, Vocab
    from kinema.captioning.recaption import CaptionerTask
    from kinema.config import TrainConfig
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
    cfg = _train_config(TrainConfig(steps=1500, batch_size=32, lr=5e-4, warmup_steps=100, log_every=25,
                                    ckpt_every=250), args)
    task = CaptionerTask(data, model_cfg, vocab, cfg.batch_size, subset, cfg.grad_accum, cfg.seed)
    result = train(task, cfg, args.out)
    print(f"trained to step {result.step}, loss {result.last_loss:.4f}; weights: {result.exported}")


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
    from kinema.captioning.recaption import export_captioner

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
    p.add_argument("--patch", type=_fhw, default=(1, 1, 1), metavar="TxHxW",
                   help="latent patch per video token, with --latents (default 1x1x1: shape needs every latent "
                        "pixel; 1x2x2 is ~2.5x faster and reads shape far worse)")
    p.add_argument("--pixel-patch", type=_tx_s, default=(4, 8), metavar="TxS",
                   help="with --data: frames (after the first) and pixels per side of one video token (default "
                        "4x8: 320 tokens for 17x64x64; 4x16 gives 80 tokens, ~3x faster)")
    _add_train_flags(p, ["default"], "default")
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


# ---------------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from kinema.serve.app import create_app

    if args.host not in ("127.0.0.1", "localhost"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can use the model")
    uvicorn.run(create_app(model_dir=args.model, max_queued=args.max_queued), host=args.host, port=args.port)


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP API + web page over a model")
    p.add_argument("--model", help="model folder (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queued", type=int, default=8)
    p.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> None:
    from kinema.demo import run_demo

    for path in run_demo(Path(args.out)):
        print(f"wrote {path}")


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: make a video and a contact sheet")
    p.add_argument("--out", default="out/demo")
    p.set_defaults(func=cmd_demo)


# ---------------------------------------------------------------------------------------------------
# experiment
# ---------------------------------------------------------------------------------------------------


def cmd_experiment_recaption(args: argparse.Namespace) -> None:
    from kinema.experiments.recaption import RecaptionExperiment, run_recaption_experiment

    exp = RecaptionExperiment(Path(args.latents), Path(args.captioner), Path(args.out), args.share, args.preset,
                              args.steps, args.batch_size, args.eval_n, args.eval_steps, seed=args.seed,
                              patch=args.patch)
    results = run_recaption_experiment(exp, Path(args.doc) if args.doc else None)
    for arm, r in results["arms"].items():
        m = r["adherence"][exp.categories[0]]
        attrs = ("shape", "size", "motion", "speed", "background")
        print(f"({arm}) {r['name']:<18} all-correct {m['all_correct']:.1%}  "
              + "  ".join(f"{k} {m.get(k, float('nan')):.0%}" for k in attrs))
    print(f"results: {exp.out / 'results.json'}" + (f"; report: {args.doc}" if args.doc else ""))


def cmd_experiment_scaling(args: argparse.Namespace) -> None:
    from kinema.experiments.scaling import ScalingExperiment, run_scaling_experiment

    exp = ScalingExperiment(Path(args.latents), Path(args.out), tuple(args.sizes), args.steps, args.batch_size,
                            args.lr, args.val_clips, args.evals, None if args.no_unet else args.unet_match,
                            args.eval_n, args.eval_steps, args.seed)
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
                           guidance=args.guidance)
    for r in run_ladder(exp, Path(args.doc) if args.doc else None):
        print(f"{r['rung']['name']:<14} all-correct {r['all_correct']:.0%}  color {r['color']:.0%}  shape "
              f"{r['shape']:.0%}  motion {r['motion']:.0%}  temporal {r['temporal']:.3f}  word swap "
              f"{r['word_swap']:+.1%}  ({r['train_minutes']:.1f} min)")


def add_experiment_commands(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("experiment", help="the recipe's claims, measured: recaptioning ablation, scaling study")
    ex = ex.add_subparsers(dest="experiment_cmd", required=True)
    p = ex.add_parser("recaption", help="DiT on original vs captioner-written captions (5%% detailed)")
    p.add_argument("--latents", required=True, help="latent cache of the dataset (shapes world: ground truth known)")
    p.add_argument("--captioner", required=True, help="a `kinema caption train` output folder")
    p.add_argument("--out", required=True)
    p.add_argument("--share", type=float, default=0.05, help="share of clips that keep detailed captions")
    p.add_argument("--preset", default="shapes", help="DiT preset for both arms")
    p.add_argument("--patch", type=_fhw, metavar="TxHxW", help="DiT latent patch for both arms (default: the preset's)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-n", type=int, default=50, help="detailed prompts for the adherence eval")
    p.add_argument("--eval-steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--doc", help="write the table of every rung run so far here (markdown)")
    p.set_defaults(func=cmd_experiment_ladder)


# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kinema", description="Text-to-video, the Sora recipe, end to end.",
                                     epilog=STAGES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_data_commands, add_vae_commands, add_dit_commands, add_generate_command, add_eval_commands,
                add_caption_commands, add_experiment_commands, add_serve_command, add_demo_command):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"kinema: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
