"""`kinema data`: make, ingest, re-encode and look at datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from kinema.cli.common import add_text_encoder_flag, parse_fhw, parse_range, parse_size
from kinema.data.captions import CAPTION_LEVELS


def cmd_data_synth(args: argparse.Namespace) -> None:
    from kinema.data.shards import synth_dataset
    from kinema.data.world import WorldConfig

    (h, w), (lo, hi) = args.size, args.objects
    colors = tuple(args.colors or WorldConfig.colors)
    featured = tuple(args.featured or ())
    # a smaller world (e.g. the learning-efficiency ladder's simple one): only the factors given are narrowed
    # (WorldConfig field <- flag; --sizes already names the clip sizes, so object sizes are --object-sizes)
    narrowed = {field: tuple(v) for field, flag in (("shapes", "shapes"), ("sizes", "object_sizes"),
                                                    ("motions", "motions"), ("speeds", "speeds"),
                                                    ("backgrounds", "backgrounds")) if (v := getattr(args, flag))}
    cfg = WorldConfig(frames=args.frames, height=h, width=w, min_objects=lo, max_objects=hi,
                      holdout=tuple(args.holdout or ()), colors=tuple(dict.fromkeys(colors + featured)),
                      featured=featured, featured_share=args.featured_share if featured else 0.0,
                      state_count=args.state_count, **narrowed)
    out = synth_dataset(args.out, args.n, cfg, seed=args.seed, shard_size=args.shard_size,
                        overwrite=args.overwrite, sizes=args.sizes)
    print(f"wrote {args.n} clips to {out}")


def cmd_data_ingest(args: argparse.Namespace) -> None:
    from kinema.data.folder import IngestConfig, ingest_folder

    cfg = IngestConfig(frames=args.frames, fps=args.fps, sizes=tuple(args.sizes), min_motion=args.min_motion,
                       scene_threshold=None if args.no_scene_cuts else args.scene_threshold,
                       max_clips_per_video=args.max_clips, shard_size=args.shard_size, allow_outside=args.allow_outside)
    report = ingest_folder(args.dir, args.captions, args.out, cfg)
    for bad in report.unreadable:
        print(f"unreadable: {bad['error']}")
    for name in report.too_short:
        print(f"too short: {name}")
    for name in report.outside:
        print(f"outside {args.dir}, refused: {name}")
    print(f"{report.summary()} -> {args.out} (details: {Path(args.out) / 'ingest_report.json'})")


def cmd_data_retext(args: argparse.Namespace) -> None:
    from kinema.encode import reencode_text

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
    p.add_argument("--size", type=parse_size, default=(64, 64), help="H or HxW (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objects", type=parse_range, default=(1, 3), help="objects per clip: N or LO-HI (default 1-3)")
    p.add_argument("--holdout", nargs="*", help="'color shape' pairs never generated, e.g. 'yellow triangle'")
    p.add_argument("--colors", nargs="+", metavar="COLOR", help="object colors (default: the world's 8; `pink` is "
                   "a color outside it, for teaching a new concept)")
    p.add_argument("--shapes", nargs="+", metavar="SHAPE", help="object shapes (default: all 4)")
    p.add_argument("--object-sizes", nargs="+", metavar="SIZE", help="object sizes: small, large (default both)")
    p.add_argument("--motions", nargs="+", metavar="MOTION", help="left right up down still (default all)")
    p.add_argument("--speeds", nargs="+", metavar="SPEED", help="slowly quickly (default both)")
    p.add_argument("--backgrounds", nargs="+", metavar="BG", help="black, 'dark gray', navy (default all)")
    p.add_argument("--featured", nargs="+", metavar="COLOR", help="a new concept with replay: --featured-share of "
                   "the clips has one of these colors, the others none (e.g. --featured pink)")
    p.add_argument("--featured-share", type=float, default=0.5, help="share of clips with a featured color")
    p.add_argument("--sizes", nargs="+", type=parse_fhw, metavar="FxHxW",
                   help="mixed durations/sizes: each clip gets one of these, e.g. 17x64x64 17x64x96 33x64x64")
    p.add_argument("--state-count", action="store_true", help="captions (all levels but short) open with the "
                   "number of objects: 'two objects: a large red circle ...'")
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
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(64, 64)], metavar="HxW",
                   help="size buckets; each video goes to the one nearest its aspect ratio (default 64x64)")
    p.add_argument("--min-motion", type=float, default=1.0, help="drop clips with a lower motion score (0-255)")
    p.add_argument("--scene-threshold", type=float, default=27.0, help="PySceneDetect ContentDetector threshold "
                   "for a shot change (lower: more cuts)")
    p.add_argument("--no-scene-cuts", action="store_true")
    p.add_argument("--max-clips", type=int, default=8, help="clips per video at most")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--allow-outside", action="store_true", help="take caption paths that resolve outside DIR "
                   "(../, absolute paths); refused and counted by default")
    p.set_defaults(func=cmd_data_ingest)

    p = data.add_parser("retext", help="a latent cache's captions encoded by another text encoder (latents reused)")
    p.add_argument("--latents", required=True, help="a latent cache made by `kinema vae encode`")
    p.add_argument("--out", required=True, help="new cache folder")
    add_text_encoder_flag(p)
    p.set_defaults(func=cmd_data_retext)

    p = data.add_parser("show", help="write a PNG contact sheet of a few clips")
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--level", choices=CAPTION_LEVELS, default="detailed",
                   help="caption level to print (a clip without it shows the caption it has)")
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--out", help="PNG path (default DIR/contact_sheet.png)")
    p.set_defaults(func=cmd_data_show)
