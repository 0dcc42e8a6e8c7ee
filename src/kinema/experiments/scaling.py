"""The scaling study: the same code, larger models, more compute; does the model get better?

    kinema experiment scaling --latents LATENTS --out RUNS [--sizes 64x2 96x3 128x4 192x6] [--doc ...]

1. fixed data: one latent cache; its last `val_clips` clips are held out for a validation loss
2. DiTs of several widths x depths (heads = width / 32), the same steps, batch, learning rate, seed and data
   order; training FLOPs per clip counted with torch's FlopCounterMode (forward x 3)
3. every run keeps `evals` checkpoints; each is scored on the same held-out clips at the same fixed noise
   draws -> (compute, loss) points; power law loss = a * C^b fitted on the compute-efficient frontier and on
   the final points
4. adherence per size, probe-judged: on fresh scenes of the data's own world (read from the shapes-world dataset
   the latents were encoded from), captioned at `eval_level`, with the direction-word swap sensitivity; for
   other data, the detailed single-object prompts of `kinema eval adherence`
5. a 3D U-Net baseline whose FLOPs per clip match one of the DiT sizes, trained identically: DiT vs U-Net
   at equal compute
6. results.json, plots and a markdown report

Every run resumes from its checkpoints; finished evaluations are read back from results files.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kinema.eval.scaling import VALIDATION_DRAWS, fit_power_law, pareto_front


@dataclass
class ScalingExperiment:
    latents: Path
    out: Path
    sizes: tuple[str, ...] = ("64x2", "96x3", "128x4", "192x6")  # width x depth
    steps: int = 600
    batch_size: int = 32
    lr: float = 6e-4
    val_clips: int = 256
    evals: int = 4  # validation points per run
    unet_match: str | None = "128x4"  # the DiT size the U-Net's FLOPs per clip are matched to (None: no U-Net)
    eval_n: int = 16
    eval_steps: int = 20
    seed: int = 0
    ema_decay: float | None = None  # the training recipe beyond lr (default: TrainConfig's)
    grad_clip: float | None = None
    eval_level: str = "medium"  # caption level of the prompts, when the data's world is known
    guidance: float = 4.0
    world_n: int = 0  # scenes per world-simulator test (kinema eval world) per size; 0: skip

    def __post_init__(self) -> None:
        self.latents, self.out = Path(self.latents), Path(self.out)
        self.sizes = tuple(self.sizes)
        for s in self.sizes:
            parse_size(s)
        if self.unet_match is not None and self.unet_match not in self.sizes:
            raise ValueError(f"unet_match {self.unet_match!r} must be one of the sizes {self.sizes}")
        if self.evals < 1 or self.steps % self.evals:
            raise ValueError(f"steps ({self.steps}) must be a multiple of evals ({self.evals})")


def parse_size(text: str) -> tuple[int, int]:
    try:
        dim, depth = (int(n) for n in text.split("x"))
    except ValueError:
        raise ValueError(f"DiT size {text!r}: expected WIDTHxDEPTH like 128x4") from None
    if dim % 32 or depth < 1:
        raise ValueError(f"DiT size {text!r}: width must be a multiple of 32 and depth >= 1")
    return dim, depth


def dit_config(size: str, in_channels: int):
    from kinema.presets import dit

    dim, depth = parse_size(size)
    return dit(dim, depth, dim // 32, in_channels=in_channels)


def data_world(data):
    """The WorldConfig of the shapes-world dataset a latent cache was encoded from, or None (other data)."""
    from kinema.data.world import WorldConfig

    meta = Path(data.meta.get("source", "")) / "meta.json"
    if not data.meta.get("source") or not meta.exists():
        return None
    world = json.loads(meta.read_text()).get("world")
    return WorldConfig.from_dict(world) if world else None


def matched_unet(target_flops: float, latent_shape: tuple[int, ...]):
    """The U-Net config (two levels, widths a multiple of 8) whose training FLOPs per clip are nearest."""
    import math

    from kinema.eval.scaling import training_flops_per_sample
    from kinema.unet.model import UNet3D, UNetConfig

    best = None
    for channels in range(8, 257, 8):
        cfg = UNetConfig(in_channels=latent_shape[0], channels=channels, mults=(1, 2), heads=4)
        flops = training_flops_per_sample(UNet3D(cfg), latent_shape)
        gap = abs(math.log(flops / target_flops))
        if best is None or gap < best[0]:
            best = (gap, cfg, flops)
        if flops > target_flops:
            break
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------------
# One run: train, score every kept checkpoint, adherence
# ---------------------------------------------------------------------------------------------------


def _run(exp: ScalingExperiment, data, name: str, model_cfg, train_idx: list[int], val_idx: list[int]) -> dict:
    from kinema.config import TrainConfig
    from kinema.diffusion.objectives import FlowObjective
    from kinema.eval.adherence import pipeline_generator, prompt_set, run_adherence
    from kinema.eval.scaling import training_flops_per_sample, validation_loss
    from kinema.train.checkpoint import load_checkpoint
    from kinema.train.dit_task import DiTTask
    from kinema.train.loop import train

    run = exp.out / name
    done = run / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    objective = FlowObjective()
    recipe = {k: v for k, v in (("ema_decay", exp.ema_decay), ("grad_clip", exp.grad_clip)) if v is not None}
    cfg = TrainConfig(steps=exp.steps, batch_size=exp.batch_size, lr=exp.lr, warmup_steps=min(100, exp.steps // 10),
                      seed=exp.seed, log_every=25, ckpt_every=exp.steps // exp.evals, keep_checkpoints=exp.evals,
                      sample_every=0, **recipe)
    task = DiTTask(data, model_cfg, objective, cfg.batch_size, seed=exp.seed, train_indices=train_idx,
                   vae_dir=Path(data.meta["vae"]), sample_steps=exp.eval_steps)
    model = task.build_model()
    flops = training_flops_per_sample(model, data.latent_shape)
    train(task, cfg, run)
    points = []
    for ckpt in sorted((run / "checkpoints").glob("step-*.safetensors")):
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        step = int(state["step"])
        points.append({"step": step, "compute": step * cfg.batch_size * flops,
                       "val_loss": validation_loss(model, objective, data, val_idx)})
    world = data_world(data)
    if world is not None:  # fresh scenes of the world the model was trained on
        from kinema.eval.fresh import evaluate

        adherence = evaluate(run / "model", world, exp.eval_level, exp.eval_n, exp.eval_steps, exp.guidance, run)
        if exp.world_n:
            from kinema.eval.world import world_report
            from kinema.pipeline import TextToVideoPipeline

            pipe = TextToVideoPipeline.from_pretrained(run / "model")
            adherence["world"] = world_report(pipe, exp.world_n, exp.eval_steps, progress=False, world=world,
                                              level=exp.eval_level, guidance=exp.guidance)
    else:
        prompts = [p for p in prompt_set(exp.eval_n) if p.category == "single"]
        adherence = run_adherence(pipeline_generator(run / "model", steps=exp.eval_steps, guidance=exp.guidance),
                                  prompts, run / "adherence").by_category["single"]
    from kinema.experiments.ladder import training_minutes

    result = {"name": name, "config": dataclasses.asdict(task.model_cfg),  # text width set from the data
              "params": sum(p.numel() for p in model.parameters()), "flops_per_clip": flops, "points": points,
              "train_minutes": training_minutes(run / "metrics.jsonl", cfg.batch_size), "adherence": adherence}
    done.write_text(json.dumps(result, indent=2))
    return result


def run_scaling_experiment(exp: ScalingExperiment, doc: Path | None = None) -> dict:
    from kinema.data.latents import LatentDataset

    exp.out.mkdir(parents=True, exist_ok=True)
    data = LatentDataset(exp.latents)
    if exp.val_clips >= len(data):
        raise ValueError(f"val_clips ({exp.val_clips}) must be fewer than the {len(data)} clips of {exp.latents}")
    train_idx, val_idx = list(range(len(data) - exp.val_clips)), list(range(len(data) - exp.val_clips, len(data)))
    c = data.latent_shape[0]
    runs = {f"dit-{s}": _run(exp, data, f"dit-{s}", dit_config(s, c), train_idx, val_idx) for s in exp.sizes}
    if exp.unet_match is not None:
        unet_cfg, _ = matched_unet(runs[f"dit-{exp.unet_match}"]["flops_per_clip"], data.latent_shape)
        runs["unet"] = _run(exp, data, "unet", unet_cfg, train_idx, val_idx)
    dits = [r for n, r in runs.items() if n.startswith("dit-")]
    all_points = [(p["compute"], p["val_loss"]) for r in dits for p in r["points"]]
    front = pareto_front(all_points)
    finals = [(r["points"][-1]["compute"], r["points"][-1]["val_loss"]) for r in dits]
    results = {"experiment": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(exp).items()},
               "runs": runs,
               "fit_frontier": asdict(fit_power_law(*zip(*front, strict=True))) if len(front) >= 2 else None,
               "fit_final": asdict(fit_power_law(*zip(*finals, strict=True))),
               "frontier": front}
    world = data_world(data)
    if world is not None:
        results["world"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(world).items()}
    (exp.out / "results.json").write_text(json.dumps(results, indent=2))
    if doc is not None:
        write_report(results, Path(doc))
    return results


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def plot(results: dict, path: Path) -> Path:
    from kinema.eval.report import pyplot, save_figure

    plt = pyplot()
    import numpy as np

    from kinema.eval.scaling import PowerLaw

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for name, r in results["runs"].items():
        xs, ys = [p["compute"] for p in r["points"]], [p["val_loss"] for p in r["points"]]
        style = dict(marker="s", linestyle="--", color="black") if name == "unet" else dict(marker="o")
        ax.plot(xs, ys, label=f"{name} ({r['params'] / 1e6:.2f} M)", **style)
    fit = results["fit_frontier"] or results["fit_final"]
    law = PowerLaw(fit["a"], fit["exponent"], fit["r2"], fit["points"])
    xs = np.geomspace(min(c for c, _ in results["frontier"]), max(c for c, _ in results["frontier"]), 50)
    ax.plot(xs, law(xs), color="gray", linewidth=3, alpha=0.5,
            label=f"fit: L = {law.a:.3g} C^{law.exponent:.3f} (R² {law.r2:.3f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("validation loss (flow matching)")
    ax.legend(fontsize=7)
    ax.set_title("Validation loss vs training compute")
    # adherence against the compute each model was trained with: DiTs as a line, the U-Net as a lone square
    dits = [(n, r) for n, r in results["runs"].items() if n.startswith("dit-")]
    compute = [r["points"][-1]["compute"] for _, r in dits]
    for k, attr in enumerate(("all_correct", "shape", "motion", "color")):
        bx.plot(compute, [100 * r["adherence"].get(attr, float("nan")) for _, r in dits], marker="o",
                color=f"C{k}", linewidth=3 if attr == "all_correct" else 1,
                label=attr.replace("_", " ") + (" (DiT)" if k == 0 else ""))
    for (name, _), c, r in zip(dits, compute, (r for _, r in dits), strict=True):
        bx.annotate(name[4:], (c, 100 * r["adherence"]["all_correct"]), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")
    if "unet" in results["runs"]:
        u = results["runs"]["unet"]
        bx.plot([u["points"][-1]["compute"]], [100 * u["adherence"]["all_correct"]], marker="s", color="black",
                linestyle="none", label="all correct (U-Net)")
    bx.set_xscale("log")
    bx.set_xlabel("training compute (FLOPs)")
    bx.set_ylabel("correct (%)")
    bx.set_ylim(0, 105)
    bx.legend(fontsize=7)
    level = results["experiment"].get("eval_level", "detailed") if results.get("world") else "detailed"
    bx.set_title(f"Adherence vs compute ({level} prompts)")
    return save_figure(fig, path)


def _world(run: dict, test: str, metric: str) -> float:
    """One world metric of a run's generated clips (NaN where a tiny run found no object to measure)."""
    return run["adherence"]["world"][test]["generated"].get(metric, float("nan"))


def plot_world(results: dict, path: Path) -> Path | None:
    """World-simulator metrics (`kinema eval world`) of each DiT size against its training compute; None when the
    run measured none (`--world-n 0`)."""
    from kinema.eval.report import pyplot, save_figure

    dits = [r for n, r in results["runs"].items() if n.startswith("dit-") and "world" in r["adherence"]]
    if not dits:
        return None
    plt = pyplot()
    compute = [r["points"][-1]["compute"] for r in dits]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for k, (test, metric, label) in enumerate((("motion", "count_kept", "frames with the right count"),
                                               ("motion", "shape_kept", "frames with the majority shape"),
                                               ("extension", "same_direction", "extensions keeping the direction"))):
        ax.plot(compute, [100 * _world(r, test, metric) for r in dits], marker="o",
                color=f"C{k}", label=label)
    ax.set_ylabel("% (real clips: 100)")
    ax.set_ylim(0, 105)
    bx.plot(compute, [_world(r, "motion", "velocity_residual") for r in dits], marker="o",
            label="straight-line residual (px)")
    bx.plot(compute, [_world(r, "motion", "max_jump") for r in dits], marker="o",
            label="largest jump beyond the steady step (px)")
    bx.set_ylabel("pixels (real clips: 0)")
    for axis, title in ((ax, "Objects kept as themselves"), (bx, "Motion: distance from the world's physics")):
        axis.set_xscale("log")
        axis.set_xlabel("training compute (FLOPs)")
        axis.legend(fontsize=7)
        axis.set_title(title)
    return save_figure(fig, path)


def _versus_reading(dit: dict, unet: dict) -> str:
    """One sentence on which backbone wins what, from the numbers."""
    loss = "DiT" if dit["points"][-1]["val_loss"] < unet["points"][-1]["val_loss"] else "U-Net"
    adh = "DiT" if dit["adherence"]["all_correct"] > unet["adherence"]["all_correct"] else "U-Net"
    if loss == adh:
        return f"The {loss} wins on both at this budget."
    return (f"The {loss} fits the data better (lower loss) while the {adh} follows prompts better at this budget: "
            f"validation loss and adherence rank the two backbones differently, so neither alone settles the "
            f"comparison.")


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.0f}%"


def write_report(results: dict, doc: Path) -> Path:
    image = plot(results, doc.with_suffix(".png"))
    plot_world(results, doc.with_name(doc.stem + "-world.png"))  # shown in world-simulation.md
    doc.with_suffix(".json").write_text(json.dumps(results, indent=2))
    e = results["experiment"]
    computes = [p["compute"] for r in results["runs"].values() for p in r["points"]]
    spread = max(computes) / min(computes)
    rows = []
    for name, r in results["runs"].items():
        last, adh = r["points"][-1], r["adherence"]
        rows.append(f"| {name} | {r['params'] / 1e6:.2f} M | {r['flops_per_clip'] / 1e9:.2f} | "
                    f"{last['compute']:.3g} | {last['val_loss']:.4f} | {100 * adh['all_correct']:.0f}% | "
                    f"{100 * adh.get('color', 0):.0f}% | "
                    f"{100 * adh.get('shape', 0):.0f}% | {100 * adh.get('motion', 0):.0f}% | "
                    f"{_signed(adh.get('word_swap'))} | {r.get('train_minutes', float('nan')):.1f} |")
    ff, fl = results["fit_frontier"], results["fit_final"]
    unet = results["runs"].get("unet")
    match = results["runs"].get(f"dit-{e['unet_match']}") if e["unet_match"] else None
    versus = ""
    if unet and match:
        versus = (f"\n## DiT vs 3D U-Net at equal compute\n\nThe U-Net (`kinema.unet.model.UNet3D`, "
                  f"{unet['params'] / 1e6:.2f} M parameters, {unet['flops_per_clip'] / 1e9:.2f} GFLOP per training "
                  f"clip) is matched to DiT "
                  f"{e['unet_match']} ({match['params'] / 1e6:.2f} M, {match['flops_per_clip'] / 1e9:.2f} GFLOP) and "
                  f"trained identically. Final validation loss: DiT {match['points'][-1]['val_loss']:.4f} vs U-Net "
                  f"{unet['points'][-1]['val_loss']:.4f}; all-attribute adherence: DiT "
                  f"{100 * match['adherence']['all_correct']:.0f}% vs U-Net "
                  f"{100 * unet['adherence']['all_correct']:.0f}% ("
                  + ", ".join(f"{a} {100 * match['adherence'].get(a, 0):.0f}% vs "
                              f"{100 * unet['adherence'].get(a, 0):.0f}%" for a in ("shape", "motion")) + ")"
                  f". {_versus_reading(match, unet)}\n")
    w = results.get("world")
    world_line = (f" The world: {w['min_objects']}-{w['max_objects']} object(s), shapes {', '.join(w['shapes'])}; "
                  f"{len(w['colors'])} colors; sizes {', '.join(w['sizes'])}; motions {', '.join(w['motions'])}; "
                  f"speeds {', '.join(w['speeds'])}; backgrounds {', '.join(w['backgrounds'])}." if w else "")
    dits = [(n, r) for n, r in results["runs"].items() if n.startswith("dit-")]
    scores = [100 * r["adherence"]["all_correct"] for _, r in dits]
    rising = all(b >= a for a, b in zip(scores, scores[1:], strict=False))
    n = dits[0][1]["adherence"]["n"] if "n" in dits[0][1]["adherence"] else e["eval_n"]
    noise = max(100 * (p / 100 * (1 - p / 100) / n) ** 0.5 for p in scores)  # one standard error, worst case
    best_last = scores[-1] == max(scores) and scores[-1] - scores[0] > 2 * noise
    adherence_reading = (
        f"All-attribute adherence from the smallest to the largest DiT: {' -> '.join(f'{v:.0f}%' for v in scores)}"
        + (": it rises with compute at equal data." if rising and scores[-1] > scores[0] else
           f": it rises with compute overall (the largest model is best, {scores[-1] - scores[0]:.0f} points above "
           f"the smallest); steps down between sizes are within the noise of {n:.0f} prompts (one standard error "
           f"up to {noise:.0f} points)." if best_last else ": not monotonic in compute at this budget.")
        + (" Where every size is near zero, the models have learned the data's statistics (loss) before they "
           "follow the prompt; that takes more steps." if max(scores) < 10 else ""))
    level = e.get("eval_level", "medium")
    adherence_setup = (f"{e['eval_n']} fresh scenes of the data's own world, {level} captions as prompts, "
                       f"{e['eval_steps']} Euler steps, guidance {e.get('guidance', 4.0):g}, probe-judged; 'word "
                       f"swap' is the rise of the flow loss on real clips when the caption's direction words are "
                       f"reversed"
                       if "word_swap" in dits[0][1]["adherence"] else
                       f"{e['eval_n']} detailed single-object prompts, {e['eval_steps']} Euler steps, guidance "
                       f"{e.get('guidance', 4.0):g}, probe-judged")
    world_flag = f" --world-n {e['world_n']}" if e.get("world_n") else ""
    flags = "".join(f" --{k.replace('_', '-')} {e[k]}" for k in ("ema_decay", "grad_clip") if e.get(k) is not None)
    recipe = "".join(f", {k.replace('_', ' ')} {e[k]}" for k in ("ema_decay", "grad_clip") if e.get(k) is not None)
    world_rows = []
    for n, r in results["runs"].items():
        if w := r["adherence"].get("world"):
            nan = float("nan")  # a metric no generated clip had an object for
            m, p, x = (w[k]["generated"] for k in ("motion", "permanence", "extension"))
            world_rows.append(f"| {n} | {m.get('velocity_residual', nan):.2f} | "
                              f"{100 * m.get('speed_error', nan):.0f}% | "
                              f"{100 * m.get('count_kept', nan):.0f}% | {100 * m.get('shape_kept', nan):.0f}% | "
                              f"{100 * p.get('permanence', nan):.0f}% | {100 * x.get('same_direction', nan):.0f}% |")
    world_table = ("\n## World-simulator metrics along the sizes\n\n`kinema eval world`'s tests on scenes of the "
                   "data's world (real clips score 0 px, 0%, 100%, 100%, 100%, 100%; permanence needs two objects, "
                   "which single-object data never shows):\n\n| model | straight-line residual (px) | speed error | "
                   "count kept | shape kept | permanence | extension keeps direction |\n| --- | --- | --- | --- | "
                   "--- | --- | --- |\n" + "\n".join(world_rows) + "\n") if world_rows else ""
    frontier = (f"- compute-efficient frontier ({ff['points']} points): **L = {ff['a']:.3g} · "
                f"C^{ff['exponent']:.4f}**, R² = {ff['r2']:.3f}\n" if ff else "")
    text = f"""# Scaling study

Does the same code, given more compute, make a better model? DiTs of {len(e['sizes'])} sizes trained on the same
data with the same recipe; validation loss measured against training compute.

## Setup

- Data: `{e['latents']}` (shapes world, 17x64x64 clips, VAE latents 16x5x8x8, 80 tokens per clip with patch
  1x2x2); the last {e['val_clips']} clips are held out.{world_line}
- Models: DiT width x depth {', '.join(e['sizes'])} (heads = width/32, absolute + RoPE positions), flow matching,
  30% frame-conditioning samples; each trained {e['steps']} steps at batch {e['batch_size']}, lr {e['lr']}{recipe},
  seed {e['seed']}, identical data order and noise.
- Compute: training FLOPs per clip counted by `torch.utils.flop_counter` (forward x 3), times clips seen.
- Validation loss: the same held-out clips and the same {VALIDATION_DRAWS} fixed (noise level, noise) draws per
  clip for every model, at {e['evals']} checkpoints per run.
- Adherence: {adherence_setup}

## Result

![loss vs compute, adherence per size]({image.name})

| model | params | GFLOP/clip | FLOPs | val loss | all correct | color | shape | motion | word swap | train min |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Power-law fits of validation loss against training compute C (FLOPs):
{frontier}- final points of the {len(e['sizes'])} DiT sizes: L = {fl['a']:.3g} · C^{fl['exponent']:.4f}, \
R² = {fl['r2']:.3f}
{versus}{world_table}
## Reading it

- Loss falls as a power law in compute across a {spread:.0f}x range of FLOPs, and each larger DiT sits on the
  frontier once it has had enough steps: at this scale, more compute buys a better model, as the recipe claims.
- {adherence_reading}
- Numbers: `{e['out']}/results.json` (copied to `{doc.with_suffix('.json').name}` beside this page).

## Reproduce

The latent cache: `kinema data synth` + `kinema vae encode`, or the ladder's (`kinema experiment ladder --rungs base`
writes the simple world's to `OUT/cache`).

```
kinema experiment scaling --latents {e['latents']} --out {e['out']} --sizes {' '.join(e['sizes'])} \\
    --steps {e['steps']} --batch-size {e['batch_size']} --lr {e['lr']}{flags} --eval-n {e['eval_n']}{world_flag} \\
    --doc {doc}
```
"""
    doc.write_text(text)
    return doc
