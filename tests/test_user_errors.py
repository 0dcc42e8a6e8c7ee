"""User errors: one line naming what is wrong and exit 2, never a traceback (issue: integrity and bad input).
Every case here fails before a model runs, or on a tiny model folder, so they are fast."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from kinema.cli import main
from kinema.data.shards import make_clip
from kinema.data.world import WorldConfig
from kinema.generate import MAX_STEPS, GenerateOptions
from kinema.io.video import read_video, write_mp4


def run_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kinema: error: "), err
    return lines[0]


@pytest.fixture
def model(tiny_model_dir, tmp_path):
    """A private copy of the tiny model folder (tests tamper with it)."""
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def gen(model, *flags: str, out: str | None = None) -> list[str]:
    return ["generate", "a red circle", "--model", str(model), "--steps", "1", "-o", out or "/tmp/kinema-x.mp4",
            *flags]


@pytest.mark.parametrize("flags,needle", [
    (["--guidance", "nan"], "guidance"),
    (["--guidance", "inf"], "guidance"),
    (["--steps", str(MAX_STEPS + 1)], "steps"),
    (["--frames", "0"], "frames"),
    (["--size", "0"], "size"),
    (["--seed", "-1"], "seed"),
    (["--strength", "1.5", "--edit", "x.mp4"], "strength"),
    (["--image", "a.png", "--extend", "b.mp4"], "use one of"),
])
def test_bad_generate_flags_are_one_line_errors(model, capsys, flags, needle):
    assert needle in run_error(gen(model, *flags), capsys)


def test_frames_the_vae_cannot_take_are_an_error_not_the_default(model, capsys, tmp_path):
    assert "1 + 4*k" in run_error(gen(model, "--frames", "6", "--no-expand", out=str(tmp_path / "v.mp4")), capsys)


def test_a_non_image_file_as_image(model, capsys, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    assert "not an image" in run_error(gen(model, "--image", str(fake), out=str(tmp_path / "v.mp4")), capsys)


def test_unwritable_or_unknown_output(model, capsys, tmp_path):
    assert ".webm" in run_error(gen(model, out=str(tmp_path / "x.webm")), capsys)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions
            pytest.skip("running as a user who can write anywhere")
        assert "cannot write" in run_error(gen(model, out=str(locked / "x.mp4")), capsys)
    finally:
        locked.chmod(0o700)


def test_an_output_inside_a_file_is_refused(model, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot write" in run_error(gen(model, out=str(blocker / "x.mp4")), capsys)


def test_prompts_that_are_not_text_or_too_long(model, capsys):
    bad_utf8 = b"a red \xff circle".decode("utf-8", "surrogateescape")  # what argv holds for non-UTF-8 bytes
    assert "UTF-8" in run_error(["generate", bad_utf8, "--model", str(model)], capsys)
    assert "characters" in run_error(["generate", "x" * 5000, "--model", str(model)], capsys)
    with pytest.raises(ValueError, match="characters"):  # before expansion: the API sees the same limit
        GenerateOptions("x" * 5000)


def test_invalid_model_index_names_the_file_and_field(model, capsys, tmp_path):
    index = json.loads((model / "model_index.json").read_text())
    del index["objective"]
    (model / "model_index.json").write_text(json.dumps(index))
    line = run_error(gen(model, out=str(tmp_path / "v.mp4")), capsys)
    assert "model_index.json" in line and "objective" in line
    index["objective"] = {"kind": "flow"}
    index["steps"] = True  # a bool is not an int
    (model / "model_index.json").write_text(json.dumps(index))
    line = run_error(gen(model, out=str(tmp_path / "v.mp4")), capsys)
    assert "model_index.json" in line and "'steps'" in line


def test_tampered_weights_are_caught(model, capsys, tmp_path):
    path = model / "dit.safetensors"
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(255 - b for b in data[-16:])  # flip bits in the last tensor's data
    path.write_bytes(bytes(data))
    assert "content hash mismatch" in run_error(gen(model, out=str(tmp_path / "v.mp4")), capsys)
    header_len = int.from_bytes(data[:8], "little")
    data[8:8 + header_len] = b"{" + b"x" * (header_len - 1)  # a header that is not JSON
    path.write_bytes(bytes(data))
    assert "dit.safetensors" in run_error(gen(model, out=str(tmp_path / "v.mp4")), capsys)


def test_pickle_only_text_encoder_folder_is_refused(model, capsys, tmp_path):
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (enc / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    index = json.loads((model / "model_index.json").read_text())
    index["text_encoder"] = str(enc)
    (model / "model_index.json").write_text(json.dumps(index))
    line = run_error(gen(model, out=str(tmp_path / "v.mp4")), capsys)
    assert "safetensors" in line and "pytorch_model.bin" in line


def test_a_missing_input_file_is_one_line(model, capsys, tmp_path):
    assert "nope.mp4" in run_error(gen(model, "--extend", str(tmp_path / "nope.mp4"),
                                       out=str(tmp_path / "v.mp4")), capsys)


def test_debug_shows_the_traceback(model, tmp_path):
    with pytest.raises(ValueError, match="guidance"):
        main(["--debug", *gen(model, "--guidance", "nan", out=str(tmp_path / "v.mp4"))])


def test_extend_writes_the_source_and_its_continuation(model, tmp_path):
    source, _ = make_clip(WorldConfig(frames=9, height=32, width=32), 4)
    write_mp4(tmp_path / "src.mp4", source.numpy(), lossless=True)
    src = read_video(tmp_path / "src.mp4")
    common = ["--model", str(model), "--steps", "1", "--frames", "9", "--size", "32", "--no-expand"]
    assert main(["generate", "it goes on", *common, "--extend", str(tmp_path / "src.mp4"),
                 "-o", str(tmp_path / "ext.mp4")]) == 0
    ext = read_video(tmp_path / "ext.mp4")
    assert len(ext) == 9 + 9 - 5  # the source, then the frames after the 5 it shares with the new clip
    assert np.abs(ext[:9].astype(int) - src.astype(int)).mean() < 6  # (mp4 is lossy)
    assert main(["generate", "it goes on", *common, "--extend", str(tmp_path / "src.mp4"), "--only-new",
                 "-o", str(tmp_path / "new.mp4")]) == 0
    assert len(read_video(tmp_path / "new.mp4")) == 9
    assert main(["generate", "it led here", *common, "--extend-backward", str(tmp_path / "src.mp4"),
                 "-o", str(tmp_path / "back.mp4")]) == 0
    back = read_video(tmp_path / "back.mp4")
    assert len(back) == 9 - 5 + 9 and np.abs(back[-9:].astype(int) - src.astype(int)).mean() < 6


def test_image_to_video_reads_a_real_image(model, tmp_path):
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "a.png")
    assert main(["generate", "a red circle", "--model", str(model), "--steps", "1", "--frames", "5", "--size", "32",
                 "--image", str(tmp_path / "a.png"), "-o", str(tmp_path / "v.mp4")]) == 0
