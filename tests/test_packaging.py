"""Slow: the wheel carries what a user needs. Build it, install it (without dependencies) into a fresh venv that
borrows this environment's installed packages, and run `kinema generate` with the bundled model and the
probe's weights from outside the repository."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_install_generates_with_the_bundled_model_and_reads_with_the_probe(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True)
    wheel = next((tmp_path / "dist").glob("kinema-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the dependencies (torch etc.) come from this environment; kinema itself only from the wheel
    deps = [p for p in site.getsitepackages() if Path(p).exists()]
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "borrowed.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run([str(py), "-c", "import kinema, kinema.generate as g; print(kinema.__file__); "
                            "print(g.default_model())"], capture_output=True, text=True, check=True, cwd=tmp_path,
                           env=env).stdout.split()
    assert str(ROOT) not in where[0] and Path(where[1]).is_relative_to(Path(where[0]).parent)
    out = tmp_path / "clip.mp4"
    run = subprocess.run([str(venv / "bin" / "kinema"), "generate", "a large red circle moving left", "--steps", "2",
                          "-o", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    probe = subprocess.run([str(py), "-c", "import sys; from kinema.io.video import read_video; "
                            "from kinema.eval.probe import probe_clip; r = probe_clip(read_video(sys.argv[1])); "
                            "print(r.background)", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr[-2000:]
    # diffusers' loader finds the bundled model's component files in the installed package
    bundled = Path(where[1])
    for name in ("scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json",
                 "text_model/config.json"):
        assert (bundled / name).exists(), name
