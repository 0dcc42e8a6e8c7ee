"""Prompt adherence on the shapes world: generate for a fixed, seeded prompt set, judge every clip with
the probe against the scene the prompt describes, and report accuracy per attribute and all-correct per
prompt, by category:

    single      one object, detailed caption
    two         two objects, detailed caption (both must be right)
    unseen      one object whose color-shape pair was held out of training (HOLDOUT)
    paraphrase  one object, phrased unlike any training template
    new         (with a concept color, e.g. `--concept pink`) one object of a color outside the default world:
                what a LoRA adapter taught (docs/experiments/lora.md); the probe then reads that color too
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kinema.data.captions import article, detailed_caption
from kinema.data.world import Scene, WorldConfig, render, sample_scene
from kinema.eval.frechet import frechet_distance
from kinema.eval.probe import WORLD_COLORS, ProbeResult, probe_clip, probe_features

HOLDOUT = ("yellow triangle", "cyan square", "purple diamond", "white circle")
CATEGORIES = ("single", "two", "unseen", "paraphrase")
ATTRIBUTES = ("count", "background", "color", "shape", "size", "motion", "speed")

Generator = Callable[[str, int], np.ndarray]  # (prompt, seed) -> (F, H, W, 3) uint8


@dataclass
class AdherencePrompt:
    category: str
    prompt: str
    scene: dict
    seed: int


def _paraphrase(scene: Scene, rng: random.Random) -> str:
    o = scene.objects[0]
    motion = "sits still" if o.motion == "still" else f"heads {o.motion} {o.speed}"
    return rng.choice([
        f"Watch {article(o.size)} {o.size} {o.color} {o.shape} as it {motion}, over a {scene.background} scene.",
        f"On a {scene.background} background there is one {o.color} {o.shape}, {o.size} in size; it {motion}.",
        f"The only thing in view: {article(o.color)} {o.color} {o.shape} ({o.size}) that {motion}, "
        f"{scene.background} backdrop.",
    ])


def prompt_set(per_category: int = 25, seed: int = 123) -> list[AdherencePrompt]:
    """The fixed evaluation prompts: scenes from seeds far from any training seed."""
    base = 7_000_000 + seed * 10_000
    out = []
    configs = {"single": WorldConfig(max_objects=1, holdout=HOLDOUT),
               "two": WorldConfig(min_objects=2, max_objects=2, holdout=HOLDOUT),
               "paraphrase": WorldConfig(max_objects=1, holdout=HOLDOUT)}
    for c, category in enumerate(CATEGORIES):
        k = 0
        while sum(p.category == category for p in out) < per_category:
            s = base + c * 100_000 + k
            k += 1
            rng = random.Random(s)
            if category == "unseen":
                color, shape = HOLDOUT[k % len(HOLDOUT)].split()
                scene = sample_scene(WorldConfig(max_objects=1, colors=(color,), shapes=(shape,)), s)
            else:
                scene = sample_scene(configs[category], s)
            text = _paraphrase(scene, rng) if category == "paraphrase" else detailed_caption(scene, rng)
            out.append(AdherencePrompt(category, text, scene.to_dict(), s))
    return out


def concept_prompts(color: str, n: int = 25, seed: int = 123) -> list[AdherencePrompt]:
    """n single-object prompts (detailed captions) whose object has the new `color`, from far-off seeds."""
    world = WorldConfig(max_objects=1, colors=(color,))
    base = 7_500_000 + seed * 10_000
    return [AdherencePrompt("new", detailed_caption(scene := sample_scene(world, base + k), random.Random(base + k)),
                            scene.to_dict(), base + k) for k in range(n)]


def score(result: ProbeResult, scene: dict) -> dict[str, list[bool]]:
    """Per attribute, one verdict per (object, attribute) the scene states."""
    hits: dict[str, list[bool]] = defaultdict(list)
    hits["count"].append(result.count == len(scene["objects"]))
    hits["background"].append(result.background == scene["background"])
    found = result.by_color()
    for obj in scene["objects"]:
        got = found.get(obj["color"])
        hits["color"].append(got is not None)
        for attr in ("shape", "size", "motion"):
            hits[attr].append(got is not None and getattr(got, attr) == obj[attr])
        if obj["motion"] != "still":
            hits["speed"].append(got is not None and got.speed == obj["speed"])
    return hits


COUNT_FAILURES = ("copies", "missing", "extra")


def count_failures(result: ProbeResult, scene: dict) -> dict[str, bool]:
    """Why a count can be wrong, each judged on its own: a prompted object drawn as two or more blobs of its color
    (copies, or one object split), a prompted object not drawn (missing), a color the prompt does not name (extra)."""
    wanted = {o["color"] for o in scene["objects"]}
    found = result.by_color()
    return {"copies": any(found[c].pieces > 1 for c in wanted if c in found),
            "missing": any(c not in found for c in wanted),
            "extra": any(c not in wanted for c in found)}


@dataclass
class AdherenceReport:
    by_category: dict[str, dict[str, float]]  # category -> attribute accuracy + all_correct + n + COUNT_FAILURES rates
    frechet: float  # generated vs real, in probe feature space
    frechet_real_vs_real: float  # the same distance between two real sets of the same size: the floor
    failures: list[dict]

    def lines(self) -> list[str]:
        def pct(v: float) -> str:
            return f"{v:>10.1%}" if v == v else f"{'-':>10}"  # an attribute no prompt of the category has

        out = [f"{'category':<11} {'n':>3} {'all':>6} " + " ".join(f"{a:>10}" for a in ATTRIBUTES) + "  temporal"]
        for cat, m in self.by_category.items():
            out.append(f"{cat:<11} {m['n']:>3.0f} {m['all_correct']:>6.1%} "
                       + " ".join(pct(m.get(a, float("nan"))) for a in ATTRIBUTES)
                       + f"  {m['temporal_consistency']:>8.3f}")
        out.append("prompts with " + "; ".join(
            f"{cat} " + ", ".join(f"{k} {m[k]:.0%}" for k in COUNT_FAILURES if k in m)
            for cat, m in self.by_category.items()))
        out.append(f"Fréchet distance (probe features): generated vs real {self.frechet:.3f}; "
                   f"real vs real {self.frechet_real_vs_real:.3f}")
        return out + self.warnings()

    def warnings(self) -> list[str]:
        """What small samples make unreliable: percentages of few prompts, and a Fréchet floor of tiny halves."""
        out = []
        small = {c: int(m["n"]) for c, m in self.by_category.items() if m["n"] < SMALL_N}
        if small:
            out.append(f"warning: few prompts in {small}: each percentage moves by {100 / min(small.values()):.0f} "
                       f"points per prompt (use --n {SMALL_N} or more to compare models)")
        total = sum(m["n"] for m in self.by_category.values())
        if total < 2 * FRECHET_MIN_HALF or self.frechet < self.frechet_real_vs_real:
            out.append(f"warning: the Fréchet distances rest on {int(total)} clips (the real-vs-real floor on two "
                       f"halves of {int(total) // 2}); below ~{2 * FRECHET_MIN_HALF} clips they are noise, and a "
                       f"generated-vs-real distance under the floor means nothing")
        return out


SMALL_N = 20  # prompts per category below which percentages are shown with a warning
FRECHET_MIN_HALF = 50  # clips per half for a real-vs-real Fréchet floor worth quoting


def run_adherence(generate: Generator, prompts: list[AdherencePrompt], out_dir: str | Path | None = None,
                  progress: bool = True, colors: tuple[str, ...] = WORLD_COLORS) -> AdherenceReport:
    """Generate one clip per prompt, judge it (the probe looking for `colors`), aggregate; writes report.json and
    failures.png to out_dir."""
    from tqdm import tqdm

    per_cat: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    failures, generated, real = [], [], []
    for p in tqdm(prompts, desc="adherence", disable=not progress):
        clip = generate(p.prompt, p.seed)
        probed = probe_clip(clip, colors)
        hits = score(probed, p.scene)
        per_cat[p.category]["temporal_consistency"].append(probed.temporal_consistency())
        for attr, verdicts in hits.items():
            per_cat[p.category][attr] += verdicts
        ok = all(all(v) for v in hits.values())
        per_cat[p.category]["all_correct"].append(ok)
        for kind, happened in count_failures(probed, p.scene).items():
            per_cat[p.category][kind].append(happened)
        generated.append(probe_features(clip))
        real.append(probe_features(render(Scene.from_dict(p.scene)).numpy()))
        if not ok:
            failures.append({"prompt": p.prompt, "category": p.category, "clip": clip,
                             "wrong": sorted(a for a, v in hits.items() if not all(v))})
    by_category = {c: {a: float(np.mean(v)) for a, v in m.items()} | {"n": float(len(m["all_correct"]))}
                   for c, m in per_cat.items()}
    half = len(real) // 2  # a Fréchet distance needs at least 2 clips per set
    fd = frechet_distance(np.stack(generated), np.stack(real)) if len(real) >= 2 else float("nan")
    floor = frechet_distance(np.stack(real[:half]), np.stack(real[half:2 * half])) if half >= 2 else float("nan")
    report = AdherenceReport(by_category, fd, floor, failures)
    if out_dir is not None:
        _write(report, Path(out_dir))
    return report


def _write(report: AdherenceReport, out_dir: Path) -> None:
    from kinema.io.video import atomic_write_bytes, contact_sheet, save_image

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in asdict(report).items() if k != "failures"}
    summary["failures"] = [{k: v for k, v in f.items() if k != "clip"} for f in report.failures]
    atomic_write_bytes(out_dir / "adherence.json", json.dumps(summary, indent=2).encode())
    if report.failures:
        shown = report.failures[:12]
        sheet = contact_sheet([f["clip"] for f in shown],
                              [f"[{f['category']}; wrong: {', '.join(f['wrong'])}] {f['prompt']}" for f in shown],
                              scale=2)
        save_image(out_dir / "failures.png", sheet)


def pipeline_generator(model_dir: str | Path, steps: int | None = None, guidance: float | None = None,
                       lora: str | Path | None = None, lora_scale: float = 1.0,
                       sampler: str | None = None, guidance_interval: tuple[float, float] | None = None,
                       attention_guidance: tuple[float, ...] | None = None,
                       candidates: int | None = None) -> Generator:
    from kinema.pipeline import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(model_dir, lora, lora_scale)
    return lambda prompt, seed: pipe(prompt, steps=steps, guidance=guidance, seed=seed, sampler=sampler,
                                     guidance_interval=guidance_interval, attention_guidance=attention_guidance,
                                     candidates=candidates)


def expanding(generate: Generator) -> Generator:
    """The generator behind prompt expansion, as `kinema generate` runs by default: each prompt is rewritten into
    a training-style caption (text/expand.py; every attribute it states is kept) before the model sees it."""
    from kinema.text.expand import expand_prompt

    return lambda prompt, seed: generate(expand_prompt(prompt, seed), seed)
