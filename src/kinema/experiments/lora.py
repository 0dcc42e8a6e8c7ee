"""Teaching the bundled model a new concept with a LoRA adapter: a color it has never seen.

    kinema experiment lora --out runs/lora-pink [--color pink] [--doc docs/experiments/lora.md]

1. `clips` shapes-world clips (<= 256) where `share` of the clips have a first object of the new color and
   the rest are the default world (replay, so the old colors are not forgotten)
2. their latents, with the base model's VAE and text encoder
3. `kinema dit finetune --lora RANK` on them (the base weights frozen; only the adapter trains), timed
4. the base model and the base model + adapter, side by side on the same prompts and seeds: `eval_n` prompts
   with the new color (category `new`) and `eval_n` single-object prompts of the default world (`single`, the
   old concepts); the probe reads the new color as well for both models, so both are judged alike
5. results.json, a contact sheet of both models on the same new-concept prompts, the markdown report

Every stage resumes: data, latents and the adapter's checkpoints are kept in OUT, finished evaluations are
read back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ATTRIBUTES = ("all_correct", "count", "background", "color", "shape", "size", "motion", "speed")


@dataclass
class LoRAConceptExperiment:
    out: Path
    model: Path | None = None  # default: the bundled model
    color: str = "pink"
    clips: int = 256
    share: float = 0.5  # clips with the new color; the others replay the default world
    rank: int = 8
    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    eval_n: int = 50  # prompts per category (new color; old single-object prompts)
    seed: int = 0

    def __post_init__(self) -> None:
        from kinema.data.world import check_new_color

        self.out = Path(self.out)
        check_new_color(self.color, "LoRAConceptExperiment.color")
        if not 1 <= self.clips <= 256 * 64 or not 0 < self.share < 1:
            raise ValueError(f"need clips >= 1 and 0 < share < 1, got clips={self.clips}, share={self.share}")


def _base_model(exp: LoRAConceptExperiment) -> Path:
    from kinema.generate import default_model

    return Path(exp.model or default_model())


def prepare(exp: LoRAConceptExperiment) -> Path:
    """The new clips (resumable synth) and their latent cache with the base model's VAE and text encoder."""
    from kinema.data.shards import synth_dataset
    from kinema.data.world import WorldConfig
    from kinema.encode import encode_dataset
    from kinema.model_index import read_model_index

    model = _base_model(exp)
    index = read_model_index(model)
    world = WorldConfig(frames=index.frames, height=index.height, width=index.width,
                        colors=(*WorldConfig.colors, exp.color), featured=(exp.color,), featured_share=exp.share)
    data, latents = exp.out / "data", exp.out / "latents"
    if not (data / "captions.jsonl").exists():
        synth_dataset(data, exp.clips, world, seed=1_000 + exp.seed, progress=False)
    if not (latents / "index.jsonl").exists():
        encode_dataset(model, data, latents, text_encoder_name=index.text_encoder, progress=False)
    return latents


def finetune(exp: LoRAConceptExperiment, latents: Path) -> tuple[Path, float]:
    """The adapter (resumes from its checkpoints) and the wall minutes its training took."""
    import dataclasses

    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import objective_from_dict
    from kinema.model_index import read_model_index
    from kinema.presets import LORA_TRAIN
    from kinema.train.loop import train
    from kinema.train.lora_task import LoRATask, base_model_config

    model, run = _base_model(exp), exp.out / "adapter"
    timing = run / "train_minutes.json"
    if (run / "adapter.safetensors").exists() and timing.exists():
        return run, json.loads(timing.read_text())["minutes"]
    cfg = dataclasses.replace(LORA_TRAIN, steps=exp.steps, batch_size=exp.batch_size, lr=exp.lr, seed=exp.seed,
                              sample_every=0)
    data = LatentDataset(latents)
    task = LoRATask(data, base_model_config(model), objective_from_dict(read_model_index(model).objective),
                    cfg.batch_size, cfg.grad_accum, seed=cfg.seed, vae_dir=model, base_model=model, rank=exp.rank)
    start = time.perf_counter()
    train(task, cfg, run)
    minutes = (time.perf_counter() - start) / 60
    timing.write_text(json.dumps({"minutes": minutes, "steps": exp.steps}))
    return run, minutes


def evaluate(exp: LoRAConceptExperiment, adapter: Path | None, name: str) -> dict:
    """Adherence of the base model (adapter None) or base + adapter on the new-color and old prompts."""
    from kinema.eval.adherence import concept_prompts, pipeline_generator, prompt_set, run_adherence
    from kinema.eval.probe import WORLD_COLORS

    out = exp.out / "eval" / name
    if (out / "adherence.json").exists():
        return json.loads((out / "adherence.json").read_text())
    prompts = concept_prompts(exp.color, exp.eval_n) + [p for p in prompt_set(exp.eval_n) if p.category == "single"]
    run_adherence(pipeline_generator(_base_model(exp), lora=adapter), prompts, out, colors=(*WORLD_COLORS, exp.color))
    return json.loads((out / "adherence.json").read_text())


def contact_sheet(exp: LoRAConceptExperiment, adapter: Path, n: int = 4) -> Path:
    """The same n new-color prompts and seeds: the base model's clips, then the adapter's."""
    from kinema.eval.adherence import concept_prompts, pipeline_generator
    from kinema.io.video import contact_sheet as sheet
    from kinema.io.video import save_image

    prompts = concept_prompts(exp.color, n)
    clips, labels = [], []
    for name, lora in (("base", None), ("+ LoRA", adapter)):
        generate = pipeline_generator(_base_model(exp), lora=lora)
        for p in prompts:
            clips.append(generate(p.prompt, p.seed))
            labels.append(f"[{name}] {p.prompt}")
    return save_image(exp.out / "concept.png", sheet(clips, labels, scale=2))


def run_lora_experiment(exp: LoRAConceptExperiment, doc: Path | None = None) -> dict:
    from kinema.train.lora_task import adapter_numbers

    exp.out.mkdir(parents=True, exist_ok=True)
    latents = prepare(exp)
    adapter, minutes = finetune(exp, latents)
    results = {"experiment": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(exp).items()},
               "base_model": str(_base_model(exp)), "train_minutes": minutes,
               "size": adapter_numbers(adapter, _base_model(exp)),
               "base": evaluate(exp, None, "base")["by_category"],
               "lora": evaluate(exp, adapter, "lora")["by_category"]}
    results["contact_sheet"] = str(contact_sheet(exp, adapter))
    (exp.out / "results.json").write_text(json.dumps(results, indent=2))
    if doc is not None:
        write_report(results, Path(doc))
    return results


def summary_lines(results: dict) -> list[str]:
    out = []
    for category in ("new", "single"):
        for arm in ("base", "lora"):
            m = results[arm][category]
            out.append(f"{category:<7} {arm:<5} all-correct {m['all_correct']:6.1%}  color {m['color']:6.1%}  "
                       f"shape {m['shape']:6.1%}  motion {m['motion']:6.1%}")
    s = results["size"]
    out.append(f"adapter {s['adapter_params']:,} parameters ({s['adapter_bytes'] / 1e6:.2f} MB) vs the model's "
               f"{s['model_params']:,} ({s['model_bytes'] / 1e6:.1f} MB); trained in {results['train_minutes']:.1f} "
               f"min")
    return out


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def write_report(results: dict, doc: Path) -> Path:
    import shutil

    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.with_suffix(".json").write_text(json.dumps(results, indent=2))
    sheet = doc.with_name(doc.stem + "-concept.png")
    shutil.copyfile(results["contact_sheet"], sheet)
    e, s = results["experiment"], results["size"]
    base, lora = results["base"], results["lora"]

    def row(category: str, attr: str) -> str:
        b, a = base[category].get(attr, float("nan")), lora[category].get(attr, float("nan"))
        return f"| {category} | {attr.replace('_', ' ')} | {100 * b:.0f}% | {100 * a:.0f}% | {100 * (a - b):+.0f} |"

    rows = "\n".join(row(c, attr) for c in ("new", "single") for attr in ATTRIBUTES)
    new_color, old_all = lora["new"]["color"], lora["single"]["all_correct"] - base["single"]["all_correct"]
    model = "the bundled model (`models/shapes-64`)" if e["model"] is None else f"`{e['model']}`"
    per_prompt = 100 / base["single"]["n"]
    others = ", ".join(f"{a} {100 * lora['new'][a]:.0f}%" for a in ("shape", "size", "motion"))
    others_base = ", ".join(f"{a} {100 * base['single'][a]:.0f}%" for a in ("shape", "size", "motion"))
    text = f"""# LoRA: teaching the bundled model a new color

A new concept, `{e['color']}` (an exact RGB outside the default world's 8 colors: `kinema.data.world.NEW_COLORS`),
taught to {model} with a rank-{e['rank']} LoRA adapter on its attention, cross-attention and MLP linears. The base
model has never seen the word or the color: asked for it, it draws a recognisable object in
{100 * base['new']['count']:.0f}% of the clips and a {e['color']} one in {100 * base['new']['color']:.0f}%.

## Setup

- Data: {e['clips']} shapes-world clips, {100 * e['share']:.0f}% with a {e['color']} first object, the rest the
  default world (replay). `kinema data synth --featured {e['color']} --featured-share {e['share']}`, encoded with the
  base model's VAE.
- Training: `kinema dit finetune --lora {e['rank']}`, {e['steps']} steps at batch {e['batch_size']}, lr {e['lr']},
  {results['train_minutes']:.1f} minutes on this machine (the shared 2-core AMD EPYC with AVX512-BF16, one thread).
- Adapter: {s['adapter_params']:,} parameters, {s['adapter_bytes'] / 1e6:.2f} MB, beside the model's
  {s['model_params']:,} ({s['model_bytes'] / 1e6:.1f} MB): {100 * s['adapter_params'] / s['model_params']:.1f}%.
- Evaluation: `kinema eval adherence --concept {e['color']}` for both, on the same prompts and seeds: {e['eval_n']}
  detailed prompts with a {e['color']} object (`new`) and the {e['eval_n']} single-object prompts of the default
  world (`single`); the model's default sampler, steps and guidance; the probe reads {e['color']} for both models.

## Result

| prompts | attribute | base | + LoRA | change |
| --- | --- | --- | --- | --- |
{rows}

The new color is drawn in {100 * new_color:.0f}% of the new-concept prompts (the target: >= 80%), and
all-correct on the old prompts moves by {100 * old_all:+.0f} points (the target: within 3; with
{base['single']['n']:.0f} prompts one prompt is {per_prompt:.0f} points, so read it as "no change", not as a gain).
On the new prompts the other attributes score {others}; the base model on old prompts: {others_base}.

![the same prompts and seeds, base model (top) and with the adapter (bottom)]({sheet.name})

## Reproduce

```
kinema experiment lora --out {e['out']} --color {e['color']} --clips {e['clips']} --rank {e['rank']} \\
    --steps {e['steps']} --eval-n {e['eval_n']} --doc {doc}
```

or stage by stage:

```
kinema data synth --n {e['clips']} --featured {e['color']} --featured-share {e['share']} --out {e['out']}/data
kinema vae encode --vae models/shapes-64 --data {e['out']}/data --out {e['out']}/latents
kinema dit finetune --lora {e['rank']} --latents {e['out']}/latents --out {e['out']}/adapter --steps {e['steps']}
kinema eval adherence --concept {e['color']} --n {e['eval_n']} --lora {e['out']}/adapter --out {e['out']}/eval/lora
kinema generate "a large {e['color']} circle moving quickly to the right" --lora {e['out']}/adapter -o pink.mp4
```
"""
    doc.write_text(text)
    return doc
