"""The import direction of docs/architecture.md, checked: every `kinema.*` import (module level or inside a
function) goes to a lower layer. A new package must be placed in LAYERS before it can be imported."""

from __future__ import annotations

import ast
from pathlib import Path

import kinema

# lowest first; a unit may import its own modules and any unit of a lower layer (docs/architecture.md)
LAYERS = [
    ["precision", "layers"],  # hardware policy; shared neural-net blocks
    ["config"],  # typed configs and their (de)serialisation
    ["io"],  # video files, weights files
    ["data", "diffusion"],  # the shapes world, shards, captions, latent cache (read side); objectives, samplers
    ["text"],  # text encoders, prompt expansion (reads the world's vocabulary)
    ["vae", "dit", "unet"],  # the models
    ["captioning", "model_index"],  # the captioner and recaptioning; a model folder's index
    ["encode", "pipeline", "presets"],  # latent-cache writer; prompt -> video; named configs
    ["train", "eval"],  # trainers and tasks; evaluation (the probe reads the shapes world)
    ["generate", "plan"],  # one generate call for every front end; the memory/time planner (uses eval's FLOPs)
    ["experiments", "serve", "demo", "interop"],  # studies; HTTP API; the demo job; diffusers interop
    ["cli"],  # the command line over all of it
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
ROOT = Path(kinema.__file__).parent


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kinema"


def kinema_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kinema":
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "kinema")


def test_every_unit_is_placed_in_a_layer():
    units = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert units - set(LAYER) == set(), "place new packages in LAYERS and docs/architecture.md"


def test_imports_only_go_down():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts == ("__init__.py",):
            continue
        src = rel.parts[0].removesuffix(".py")
        for module, line in kinema_imports(path):
            dst = unit_of(module)
            if dst != src and LAYER.get(dst, -1) >= LAYER[src]:
                upward.append(f"kinema/{rel}:{line}: {src} (layer {LAYER[src]}) imports {module} "
                              f"(layer {LAYER.get(dst)})")
    assert not upward, "imports against the layering of docs/architecture.md:\n" + "\n".join(upward)


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from kinema.pipeline import TextToVideoPipeline\n")
    found = [unit_of(m) for m, _ in kinema_imports(bad)]
    assert found == ["pipeline"] and LAYER["pipeline"] > LAYER["data"]  # data importing it would be flagged
