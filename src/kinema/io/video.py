"""Video in and out: any ffmpeg-readable file via PyAV, mp4 / gif writing, PNG contact sheets.

Frames cross this module as uint8 arrays `(F, H, W, 3)`; `to_tensor` / `to_frames` convert to and from the
model's `(C, F, H, W)` float tensors in [-1, 1].
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageDraw, ImageFont


class VideoReadError(ValueError):
    """A video could not be read; the message names the file and what was expected."""


# ---------------------------------------------------------------------------------------------------
# Tensors <-> frames
# ---------------------------------------------------------------------------------------------------


def to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (C, F, H, W) float32 in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames)).permute(3, 0, 1, 2).float()
    return x / 127.5 - 1.0


def to_frames(x: torch.Tensor) -> np.ndarray:
    """(C, F, H, W) float in [-1, 1] -> (F, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see either the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


@dataclass
class VideoInfo:
    path: str
    frames: int  # container's count, or counted by decoding when the container does not say
    fps: float
    height: int
    width: int
    codec: str

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


def _open(source: str | Path | bytes, name: str) -> av.container.InputContainer:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise VideoReadError(f"{name}: file not found")
        if path.stat().st_size == 0:
            raise VideoReadError(f"{name}: file is empty (0 bytes); expected a video file")
        source = str(path)
    else:
        source = io.BytesIO(source)
    try:
        container = av.open(source)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoReadError(f"{name}: not a readable video ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{name}: contains no video stream")
    return container


def probe_video(source: str | Path | bytes, name: str | None = None) -> VideoInfo:
    """Duration, fps, size and codec, from the container; frames are counted by decoding if unknown."""
    name = name or str(source if not isinstance(source, bytes) else "<bytes>")
    with _open(source, name) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = stream.frames
        if not frames:
            try:
                frames = sum(1 for _ in container.decode(video=0))
            except av.error.FFmpegError as e:
                raise VideoReadError(f"{name}: corrupt video data ({e})") from e
        return VideoInfo(name, frames, fps, stream.height, stream.width, stream.codec_context.name)


def _resize(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or frame.shape[:2] == tuple(size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BICUBIC))


def read_video(
    source: str | Path | bytes,
    *,
    indices: Sequence[int] | None = None,
    start: int = 0,
    stride: int = 1,
    num_frames: int | None = None,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    name: str | None = None,
    limit: int | None = None,
) -> np.ndarray:
    """Decode frames as (F, H, W, 3) uint8.

    Pick frames by explicit `indices`, or by `start`/`stride`/`num_frames`, or resample to `fps` (which
    sets the stride from the file's own rate). `size=(H, W)` resizes; `limit` stops after that many frames
    (without requiring them: a bound on memory for long files). Asking for more frames than the
    file holds raises VideoReadError, as does a missing, empty, corrupt or truncated file."""
    name = name or str(source if not isinstance(source, bytes) else "<bytes>")
    with _open(source, name) as container:
        if fps is not None:
            native = float(container.streams.video[0].average_rate or fps)
            stride = max(1, round(native / fps))
        wanted = set(indices) if indices is not None else None
        last = max(wanted) if wanted else (start + stride * (num_frames - 1) if num_frames else None)
        frames = []
        # one pixel-format conversion context for the clip: `frame.to_ndarray(format=...)` builds one per frame,
        # which made small clips ~5x slower to read. (Not shared across calls: freeing one that a forked
        # DataLoader worker inherited hangs that worker.)
        rgb = VideoReformatter()
        try:
            for i, frame in enumerate(container.decode(video=0)):
                take = i in wanted if wanted is not None else (i >= start and (i - start) % stride == 0)
                if take:
                    frames.append(_resize(rgb.reformat(frame, format="rgb24").to_ndarray(), size))
                if (last is not None and i >= last) or (limit is not None and len(frames) >= limit):
                    break
        except av.error.FFmpegError as e:
            raise VideoReadError(f"{name}: corrupt video data after {len(frames)} frames ({e})") from e
    expected = len(wanted) if wanted is not None else num_frames
    if not frames or (expected is not None and len(frames) < expected):
        raise VideoReadError(f"{name}: decoded {len(frames)} frames, expected {expected or 'at least 1'} "
                             f"(file truncated, or shorter than requested)")
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


def encode_mp4(frames: np.ndarray, fps: float = 8, lossless: bool = False) -> bytes:
    """h264 mp4 bytes, the same bytes for the same frames. lossless=True: libx264rgb, rgb24, crf 0 (exact, for
    datasets); otherwise yuv420p (plays in every browser; odd sizes are padded by one pixel), crf 18 without x264's
    macroblock-tree rate control: with it the bytes (and decoded pixels, by up to 25/255) changed with what the
    process had allocated before (same frames, `make demo` run twice), and on clips this short it buys little."""
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    if not lossless and (frames.shape[1] % 2 or frames.shape[2] % 2):
        pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
        frames = np.pad(frames, pad, mode="edge")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.options = ({"crf": "0", "preset": "ultrafast"} if lossless
                          else {"crf": "18", "x264-params": "mbtree=0"})
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 8, lossless: bool = False) -> Path:
    atomic_write_bytes(path, encode_mp4(frames, fps, lossless))
    return Path(path)


def write_gif(path: str | Path, frames: np.ndarray, fps: float = 8) -> Path:
    images = [Image.fromarray(f) for f in np.asarray(frames, dtype=np.uint8)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8) -> Path:
    """mp4 or gif, by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return write_gif(path, frames, fps)
    if suffix in (".mp4", ".m4v"):
        return write_mp4(path, frames, fps)
    raise ValueError(f"{path}: unsupported output format {suffix!r}; expected .mp4 or .gif")


# ---------------------------------------------------------------------------------------------------
# Contact sheets: rows = clips, columns = frames, caption above each row
# ---------------------------------------------------------------------------------------------------


def _wrap(text: str, width_px: int, char_px: int = 6) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > max(8, width_px // char_px):
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def contact_sheet(
    clips: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    max_columns: int = 17,
    scale: int = 1,
) -> Image.Image:
    """A PIL image: one row per clip (frames left to right), with its caption wrapped above it."""
    font = ImageFont.load_default()
    H, W = clips[0].shape[1] * scale, clips[0].shape[2] * scale
    columns = min(max_columns, max(c.shape[0] for c in clips))
    sheet_w = columns * (W + 2) + 2
    rows = []
    for i, clip in enumerate(clips):
        lines = _wrap(captions[i], sheet_w) if captions else []
        row = Image.new("RGB", (sheet_w, H + 4 + 12 * len(lines)), (255, 255, 255))
        draw = ImageDraw.Draw(row)
        for k, line in enumerate(lines):
            draw.text((2, 1 + 12 * k), line, fill=(0, 0, 0), font=font)
        step = max(1, clip.shape[0] / columns)
        for j in range(min(columns, clip.shape[0])):
            frame = Image.fromarray(clip[int(j * step)]).resize((W, H), Image.NEAREST)
            row.paste(frame, (2 + j * (W + 2), 2 + 12 * len(lines)))
        rows.append(row)
    sheet = Image.new("RGB", (sheet_w, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    return sheet


def save_image(path: str | Path, image: Image.Image) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
