"""The recaptioning ablation: does training on a captioner's detailed captions make a better generator?

    kinema experiment recaption --latents LATENTS --captioner CAPTIONER --out RUNS [--doc docs/experiments/recaption.md]

1. a dataset where only `detailed_share` (5%) of clips have detailed captions; the rest have only the weak
   `short` alt-text (the shapes world's ground-truth detailed captions are hidden for them)
2. the trained captioner writes a caption for every clip (from its VAE latents); its attribute agreement with
   the hidden ground truth is measured on the clips it recaptions
3. three DiTs, same preset, steps, batch, seed and data order:
      (a) original: detailed where present, else short
      (b) recaptioned: detailed where present, else the captioner's caption
      (c) ground truth: every clip's true detailed caption (the upper bound: what a perfect captioner gives)
4. adherence on detailed prompts, per attribute, for all three: fresh scenes of the data's own world when the
   latents come from a shapes-world dataset (else the single-object prompts of `kinema eval adherence`)
5. results.json, a bar plot and a markdown report

Every stage resumes: recaptions and their text embeddings are cached in OUT, training resumes from its
checkpoints, finished evaluations are read back.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

ARMS = {"a": "original captions", "b": "recaptioned", "c": "ground-truth detailed"}


@dataclass
class RecaptionExperiment:
    latents: Path
    captioner: Path
    out: Path
    detailed_share: float = 0.05
    preset: str = "shapes"
    steps: int | None = None  # default: the preset's
    batch_size: int | None = None
    eval_n: int = 50  # prompts per category
    eval_steps: int = 30
    categories: tuple[str, ...] = ("single",)
    seed: int = 0
    patch: tuple[int, int, int] | None = None  # DiT latent patch for both arms (default: the preset's)
    guidance: float = 4.0

    def __post_init__(self) -> None:
        self.latents, self.captioner, self.out = Path(self.latents), Path(self.captioner), Path(self.out)
        if not 0 < self.detailed_share < 1:
            raise ValueError(f"detailed_share must be in (0, 1), got {self.detailed_share}")


def detailed_subset(keys: list[str], share: float, seed: int) -> set[str]:
    """The clips that keep their detailed captions: a seeded random `share` of them."""
    rng = random.Random(seed)
    return set(rng.sample(sorted(keys), max(1, round(share * len(keys)))))


def _recaption(exp: RecaptionExperiment, data) -> dict[str, float]:
    """Captions for every clip (cached in OUT/recaptions.json) and their text embeddings (cached in
    OUT/recaptions.safetensors, tagged with the text encoder: a cache of another encoder's is redone from
    the cached captions) added to `data` as level 'recaption'; returns the captioner's agreement with the
    ground-truth detailed captions."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from kinema.captioning.recaption import caption_agreement, caption_clips, load_captioner
    from kinema.data.shards import ShardDataset
    from kinema.encode import encode_texts
    from kinema.text.encoder import MINILM, load_text_encoder

    cache = exp.out / "recaptions.safetensors"
    captions_path = exp.out / "recaptions.json"
    encoder_name = data.meta.get("text_encoder") or MINILM
    if captions_path.exists():
        captions = json.loads(captions_path.read_text())
    else:
        model, vocab, _ = load_captioner(exp.captioner)
        captions = [""] * len(data)
        if model.cfg.input == "pixels":  # it reads the clips the cache was encoded from
            if not data.meta.get("source"):
                raise ValueError(f"{exp.latents}: its meta.json names no source clips; a pixel captioner needs them")
            clips = ShardDataset(data.meta["source"])
            where = {r["key"]: i for i, r in enumerate(clips.rows)}
            groups = [(list(range(len(data))), clips, [where[r["key"]] for r in data.rows])]
        else:
            groups = [(members, data, members) for members in data.buckets.values()]
        for rows, source, indices in groups:
            for i, c in zip(rows, caption_clips(model, vocab, source, indices), strict=True):
                captions[i] = c
        captions_path.write_text(json.dumps(captions))
    cached_encoder = None
    if cache.exists():
        with safe_open(str(cache), framework="pt") as f:
            cached_encoder = (f.metadata() or {}).get("text_encoder", MINILM)
    if cached_encoder == encoder_name:
        tensors = load_file(str(cache))
        text, mask = tensors["text"], tensors["mask"]
    else:
        encoded = encode_texts(load_text_encoder(encoder_name), [{"recaption": c} for c in captions], ["recaption"],
                               batch_size=256)
        text, mask = encoded["text.recaption"], encoded["mask.recaption"]
        tmp = cache.with_name(".recaptions.tmp")
        save_file({"text": text.contiguous(), "mask": mask.contiguous()}, str(tmp),
                  metadata={"text_encoder": encoder_name})
        tmp.replace(cache)
    data.add_level("recaption", captions, text, mask)
    return caption_agreement(captions, [r["captions"]["detailed"] for r in data.rows])


def _train_arm(exp: RecaptionExperiment, data, levels: list[str], arm: str) -> Path:
    import dataclasses

    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_TRAIN, dit_preset, lookup
    from kinema.train.dit_task import DiTTask
    from kinema.train.loop import train

    model_cfg = dit_preset(exp.preset, data.latent_shape[0], exp.patch)
    cfg = lookup(DIT_TRAIN, exp.preset, "DiT preset")
    cfg = dataclasses.replace(cfg, steps=exp.steps or cfg.steps, batch_size=exp.batch_size or cfg.batch_size,
                              seed=exp.seed, sample_every=0)
    task = DiTTask(data, model_cfg, FlowObjective(), cfg.batch_size, cfg.grad_accum, exp.seed, clip_levels=levels,
                   vae_dir=Path(data.meta["vae"]), sample_steps=exp.eval_steps)
    out = exp.out / arm
    if not (out / "model" / "dit.safetensors").exists() or _trained_steps(out) < cfg.steps:
        train(task, cfg, out)
    return out / "model"


def _trained_steps(run: Path) -> int:
    from kinema.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run / "checkpoints")
    return int(ckpt.stem.split("-")[-1]) if ckpt else 0


def _evaluate(exp: RecaptionExperiment, data, model_dir: Path, arm: str) -> dict:
    """{category: attribute accuracies} on detailed prompts: of the data's own world when it is known."""
    from kinema.eval.adherence import pipeline_generator, prompt_set, run_adherence
    from kinema.eval.fresh import evaluate
    from kinema.experiments.scaling import data_world

    out = exp.out / arm / "adherence"
    if (out / "adherence.json").exists():
        return json.loads((out / "adherence.json").read_text())["by_category"]
    world = data_world(data)
    if world is not None:
        scores = evaluate(model_dir, world, "detailed", exp.eval_n, exp.eval_steps, exp.guidance, out)
        by_category = {exp.categories[0]: scores}
        out.mkdir(parents=True, exist_ok=True)
        (out / "adherence.json").write_text(json.dumps({"by_category": by_category, "world": True}, indent=2))
        return by_category
    prompts = [p for p in prompt_set(exp.eval_n) if p.category in exp.categories]
    run_adherence(pipeline_generator(model_dir, steps=exp.eval_steps, guidance=exp.guidance), prompts, out)
    return json.loads((out / "adherence.json").read_text())["by_category"]


def run_recaption_experiment(exp: RecaptionExperiment, doc: Path | None = None) -> dict:
    from kinema.data.latents import LatentDataset

    exp.out.mkdir(parents=True, exist_ok=True)
    data = LatentDataset(exp.latents)
    keys = [r["key"] for r in data.rows]
    subset = detailed_subset(keys, exp.detailed_share, exp.seed)
    (exp.out / "detailed_keys.txt").write_text("\n".join(sorted(subset)) + "\n")
    others = [i for i, k in enumerate(keys) if k not in subset]

    agreement_all = _recaption(exp, data)
    from kinema.captioning.recaption import caption_agreement

    agreement = caption_agreement([data.rows[i]["captions"]["recaption"] for i in others],
                                  [data.rows[i]["captions"]["detailed"] for i in others])
    levels = {"a": ["detailed" if k in subset else "short" for k in keys],
              "b": ["detailed" if k in subset else "recaption" for k in keys],
              "c": ["detailed"] * len(keys)}
    results = {"experiment": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(exp).items()},
               "clips": len(keys), "with_detailed": len(subset), "captioner_agreement": agreement,
               "captioner_agreement_all_clips": agreement_all, "arms": {}}
    for arm, name in ARMS.items():
        model_dir = _train_arm(exp, data, levels[arm], arm)
        results["arms"][arm] = {"name": name, "adherence": _evaluate(exp, data, model_dir, arm),
                                "final_loss": _final_loss(exp.out / arm)}
    (exp.out / "results.json").write_text(json.dumps(results, indent=2))
    if doc is not None:
        write_report(results, Path(doc))
    return results


def _final_loss(run: Path) -> float | None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    tail = losses[-10:]
    return sum(tail) / len(tail) if tail else None


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------

SHOWN = ("all_correct", "count", "background", "color", "shape", "size", "motion", "speed")


def plot(results: dict, path: Path) -> Path:
    from kinema.eval.report import pyplot, save_figure

    plt = pyplot()

    cat = results["experiment"]["categories"][0]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=120)
    arms = results["arms"]
    width = 0.8 / len(arms)
    for k, (arm, r) in enumerate(arms.items()):
        values = [100 * r["adherence"][cat].get(a, float("nan")) for a in SHOWN]
        bars = ax.bar([i + (k - (len(arms) - 1) / 2) * width for i in range(len(SHOWN))], values, width,
                      label=f"({arm}) {r['name']}")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(SHOWN)), [a.replace("_", " ") for a in SHOWN])
    ax.set_ylabel("correct (%)")
    ax.set_ylim(0, 110)
    ax.set_title(f"Adherence on detailed {cat}-object prompts (n={results['arms']['a']['adherence'][cat]['n']:.0f})")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)


def write_report(results: dict, doc: Path) -> Path:
    image = plot(results, doc.with_suffix(".png"))
    doc.with_suffix(".json").write_text(json.dumps(results, indent=2))
    e, cat = results["experiment"], results["experiment"]["categories"][0]
    arms = results["arms"]
    a, b = (arms[k]["adherence"][cat] for k in ("a", "b"))
    c = arms["c"]["adherence"][cat] if "c" in arms else None
    ag = results["captioner_agreement"]
    shown = [k for k in SHOWN if k in a or k in b]  # the attributes this data's world varies
    gains = [b.get(k, 0) - a.get(k, 0) for k in shown[1:]]
    wins, mean_gain = sum(g > 0 for g in gains), 100 * sum(gains) / len(gains)
    agreement = ", ".join(f"{k.replace('all', 'all attributes')} {100 * ag.get(k, float('nan')):.2f}%"
                          for k in ("all", "color", "shape", "size", "motion", "speed", "background"))

    def pct(m: dict, attr: str) -> str:
        return f"{100 * m.get(attr, float('nan')):.1f}%"

    header = "| attribute | (a) original | (b) recaptioned | (b) - (a) |" + (" (c) ground truth |" if c else "")
    rows = "\n".join(f"| {attr.replace('_', ' ')} | {pct(a, attr)} | {pct(b, attr)} | "
                     f"{100 * (b.get(attr, 0) - a.get(attr, 0)):+.1f} |" + (f" {pct(c, attr)} |" if c else "")
                     for attr in shown)
    extra = "".join(f" --{flag} {value}" for flag, value in
                    (("batch-size", e["batch_size"]), ("patch", "x".join(map(str, e.get("patch") or ()))),
                     ("guidance", e.get("guidance", 4.0))) if value)
    losses = ", ".join(f"({k}) {r['final_loss']:.4f}" for k, r in arms.items() if r.get("final_loss") is not None)
    n = a.get("n", e["eval_n"])
    closes = _share(a, b, c) if c else float("nan")
    gap = ("" if not c else
           f"\n- The ground-truth arm (c), what a perfect captioner would give, reaches {100 * c['all_correct']:.1f}%: "
           + (f"the captioner closes all of the gap between the original captions and perfect ones ((b) and (c) "
              f"{abs(b['all_correct'] - c['all_correct']) * n:.0f} prompt(s) of {n:.0f} apart)." if closes >= 95 else
              f"the captioner closes {closes:.0f}% of the gap between the original captions and perfect ones."))
    limit = ("caps what (b) can learn" if not c or b["all_correct"] < c["all_correct"] - 2 / n else
             "leaves (b) within sampling noise of (c): its captions are as good as the truth here"
             if ag["all"] >= 0.995 else
             "did not hold (b) back at this scale: its wrong words are outvoted by the many clips it captions right")
    world = ("fresh scenes of the data's own world, their detailed captions as prompts"
             if "word_swap" in a else f"`kinema eval adherence`'s detailed {cat}-object prompts")
    text = f"""# Recaptioning ablation

Do captions written by our video captioner make a better text-to-video model than the captions the data came
with? (The DALL-E 3 / Sora recipe: train a captioner on the few clips with precise descriptions, recaption
everything, train the generator on the new captions.)

## Setup

- Data: `{e['latents']}`: {results['clips']} shapes-world clips. Only {results['with_detailed']}
  ({100 * results['with_detailed'] / results['clips']:.0f}%) keep their detailed captions; every other clip has
  only its weak `short` alt-text ("a circle", "a red shape", "simple shapes animation").
- Captioner: `{e['captioner']}` (trained by `kinema caption train` on a separate captioned set; it never saw
  these clips). On the {results['clips'] - results['with_detailed']} clips it recaptions, its captions agree
  with the hidden ground truth on: {agreement}.
- {len(arms)} DiTs, identical except for the captions: preset `{e['preset']}`, {e['steps'] or 'preset'} steps,
  batch {e['batch_size'] or "the preset's"}, seed {e['seed']}, the same data order and noise, flow matching.
  (a) detailed where present, else short; (b) detailed where present, else the captioner's caption{
  "; (c) every clip's true detailed caption" if c else ""}. Final training loss: {losses}.
- Evaluation: {world} (n={a['n']:.0f}), {e['eval_steps']} Euler steps, guidance {e.get('guidance', 4.0):g}, each
  generated clip judged by the probe.

## Result

![adherence per attribute]({image.name})

{header}
| --- | --- | --- | --- |{" --- |" if c else ""}
{rows}

## Reading it

- All-attribute adherence: (b) recaptioned {100 * b['all_correct']:.1f}% vs (a) original
  {100 * a['all_correct']:.1f}% ({100 * (b['all_correct'] - a['all_correct']):+.1f} points).
- Per attribute, (b) beats (a) on {wins} of {len(shown) - 1} attributes, by {mean_gain:+.1f} points on average:
  what the weak captions never say the recaptioned model learned from the captioner's words, and the
  original-caption model could only guess.{gap}
- The captioner's agreement with the truth (all attributes {100 * ag.get('all', float('nan')):.2f}%, shape
  {100 * ag.get('shape', float('nan')):.1f}%) {limit}.

## Reproduce

The captioner: `kinema caption train --latents L` or `--data D` on a captioned set the ablation's clips are not in
(its folder's captioner.json records its input and patch).

```
kinema experiment recaption --latents {e['latents']} --captioner {e['captioner']} --out {e['out']} \\
    --share {e['detailed_share']} --preset {e['preset']} --steps {e['steps']}{extra} \\
    --eval-n {e['eval_n']} --doc {doc}
```
"""
    doc.write_text(text)
    return doc


def _share(a: dict, b: dict, c: dict) -> float:
    """How much of the (c) - (a) all-correct gap (b) closes, in percent."""
    gap = c["all_correct"] - a["all_correct"]
    return 100 * (b["all_correct"] - a["all_correct"]) / gap if gap > 0 else float("nan")
