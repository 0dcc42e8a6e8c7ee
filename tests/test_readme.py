"""The README's commands stay true: every `kinema ...` line in its bash blocks parses with the CLI as it is,
and every committed file or folder a command reads (models/, docs/, src/, benchmarks/) exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from kinema.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ("models/", "docs/", "src/", "benchmarks/")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in joined.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("kinema "):
                commands.append(line)
    return commands


def test_the_readme_has_the_stages():
    stages = {shlex.split(c)[1] for c in readme_commands()}
    assert {"data", "vae", "dit", "generate", "eval", "caption", "experiment", "serve"} <= stages


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses_and_its_committed_inputs_exist(command):
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"README command does not parse: {command}") from e
    for arg in argv:
        if arg.startswith(COMMITTED):
            assert (ROOT / arg).exists(), f"{command}: {arg} is not in the repository"
