"""Variable duration, resolution and aspect ratio: size buckets in the latent cache, one bucket per batch,
and a DiT training run over mixed sizes."""

from __future__ import annotations

import json
import random

import pytest
import torch

from kinema.data.buckets import bucket_batch_indices
from kinema.data.latents import LatentDataset
from kinema.data.shards import ShardDataset, synth_dataset
from kinema.data.world import WorldConfig
from kinema.encode import encode_dataset

SIZES = [(5, 32, 32), (5, 32, 48), (9, 32, 32)]


@pytest.fixture(scope="module")
def mixed_latents(tiny_vae_dir, tmp_path_factory):
    data = synth_dataset(tmp_path_factory.mktemp("mixed"), 30, WorldConfig(frames=5, height=32, width=32), seed=5,
                         shard_size=12, progress=False, sizes=SIZES)
    return encode_dataset(tiny_vae_dir, data, tmp_path_factory.mktemp("mixed-latents"), batch_size=4,
                          progress=False)


def test_synth_draws_each_clip_size_from_the_list(tmp_path):
    out = synth_dataset(tmp_path, 20, WorldConfig(), seed=1, shard_size=20, progress=False, sizes=SIZES)
    ds = ShardDataset(out)
    shapes = [tuple(ds[i]["video"].shape[1:]) for i in range(len(ds))]
    assert set(shapes) == set(SIZES)
    assert json.loads((out / "meta.json").read_text())["sizes"] == [list(s) for s in SIZES]
    with pytest.raises(ValueError, match="height, width >= 16"):
        synth_dataset(tmp_path / "bad", 2, WorldConfig(), sizes=[(5, 8, 8)], progress=False)


def test_latent_cache_keeps_one_bucket_per_size(mixed_latents, tiny_vae_dir):
    from kinema.io.weights import load_model
    from kinema.precision import autocast, use_bf16
    from kinema.vae.model import VAEConfig, VideoVAE

    cache = LatentDataset(mixed_latents)
    assert set(cache.buckets) == {"2x8x8", "2x8x12", "3x8x8"}  # tiny VAE: x4 time, x4 space
    assert sum(len(v) for v in cache.buckets.values()) == len(cache) == 30
    ds = ShardDataset(cache.meta["source"])
    vae = load_model(tiny_vae_dir, "vae", VideoVAE, VAEConfig)
    for bucket, members in cache.buckets.items():
        i = members[-1]
        batch = cache.gather([i], ["medium"])
        with torch.no_grad(), autocast("cpu", use_bf16("auto", "cpu")):  # the cache encodes as the host is fast at
            expected = vae.encode(ds[i]["video"][None]).float()
        assert "x".join(map(str, batch.latents.shape[2:])) == bucket
        assert torch.allclose(batch.latents, expected, atol=1e-5)
        assert batch.captions == [ds.rows[i]["captions"]["medium"]]  # text rows stay aligned with clips
    a, b = cache.buckets["2x8x8"][0], cache.buckets["2x8x12"][0]
    with pytest.raises(ValueError, match="one size bucket"):
        cache.gather([a, b], ["short", "short"])


def test_bucket_batches_are_single_size_deterministic_and_cover_every_clip():
    buckets = [list(range(0, 7)), list(range(7, 20)), list(range(20, 23))]
    per_epoch = 2 + 4 + 1  # ceil(7/4) + ceil(13/4) + ceil(3/4)
    seen = set()
    for n in range(per_epoch):
        batch = bucket_batch_indices(buckets, seed=0, number=n, batch_size=4)
        assert len(batch) == 4 and any(set(batch) <= set(b) for b in buckets)
        assert batch == bucket_batch_indices(buckets, seed=0, number=n, batch_size=4)
        seen |= set(batch)
    assert seen == set(range(23))
    epochs = [[bucket_batch_indices(buckets, 0, e * per_epoch + n, 4) for n in range(per_epoch)] for e in (0, 1)]
    assert epochs[0] != epochs[1]


def test_dit_trains_over_mixed_sizes_and_samples_other_sizes(mixed_latents, tmp_path):
    from kinema.cli import main
    from kinema.pipeline import TextToVideoPipeline

    main(["dit", "train", "--latents", str(mixed_latents), "--preset", "tiny", "--steps", "6", "--batch-size", "4",
          "--ckpt-every", "6", "--sample-every", "0", "--out", str(tmp_path / "run")])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    pipe = TextToVideoPipeline.from_pretrained(tmp_path / "run" / "model")
    for frames, h, w in [(9, 32, 48), (5, 48, 32), (13, 32, 32)]:
        video = pipe("a red circle moving left", frames=frames, height=h, width=w, steps=2, seed=0)
        assert video.shape == (frames, h, w, 3)


def test_dit_train_patch_flag_gives_a_finer_token_grid(tiny_latents, tmp_path):
    from safetensors.torch import load_file

    from kinema.cli import main
    from kinema.pipeline import TextToVideoPipeline

    main(["dit", "train", "--latents", str(tiny_latents), "--preset", "tiny", "--patch", "1x1x1", "--steps", "2",
          "--batch-size", "2", "--ckpt-every", "2", "--sample-every", "0", "--out", str(tmp_path / "run")])
    assert json.loads((tmp_path / "run" / "model" / "dit.json").read_text())["patch"] == [1, 1, 1]
    objective = json.loads((tmp_path / "run" / "model" / "model_index.json").read_text())["objective"]
    assert (objective["logit_mean"], objective["shift"]) == (0.8, 2.0)  # the CLI's measured noise levels by default
    model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert "foreground_weight" not in model and "input_perturbation" not in model["objective"]  # unset: as before
    pipe = TextToVideoPipeline.from_pretrained(tmp_path / "run" / "model")
    s = pipe.vae.cfg.spatial_compression  # an odd latent size: fine for 1x1 patches, not for the default 2x2
    assert pipe("a red circle moving left", height=3 * s, width=5 * s, steps=2, seed=0).shape[1:] == (3 * s, 5 * s, 3)
    assert main(["dit", "export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]) == 0
    # the latest checkpoint is the last step: the export holds the run's own released weights
    exported, own = (load_file(str(tmp_path / d / "dit.safetensors")) for d in ("exported", "run/model"))
    assert exported.keys() == own.keys() and all(torch.equal(exported[k], own[k]) for k in own)
    assert json.loads((tmp_path / "exported" / "model_index.json").read_text())["trained_steps"] == 2
    assert main(["dit", "export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "k2"),
                 "--candidates", "2"]) == 0
    assert TextToVideoPipeline.from_pretrained(tmp_path / "k2").index.candidates == 2  # the folder's default
    with pytest.raises(SystemExit):
        main(["dit", "train", "--latents", str(tiny_latents), "--patch", "1x1", "--out", str(tmp_path / "bad")])


def test_dit_train_flags_reach_the_model_and_the_objective(tiny_latents, tmp_path, capsys):
    """The ladder's DiT and objective options from the CLI: saved with the model, used when it samples."""
    from kinema.cli import main
    from kinema.pipeline import TextToVideoPipeline

    main(["dit", "train", "--latents", str(tiny_latents), "--preset", "tiny", "--joint-attention",
          "--text-refiner", "1", "--no-pooled-text", "--logit-mean", "0.8", "--shift", "2", "--prediction", "x0",
          "--foreground-weight", "9", "--foreground-of", "either", "--width", "48", "--depth", "1", "--heads", "3",
          "--rope-theta", "100", "--input-perturbation", "0.1", "--steps", "2",
          "--batch-size", "2", "--ckpt-every", "2", "--sample-every", "0", "--out", str(tmp_path / "run")])
    dit = json.loads((tmp_path / "run" / "model" / "dit.json").read_text())
    assert (dit["joint_attention"], dit["text_refiner"], dit["pooled_text"]) == (True, 1, False)
    assert (dit["dim"], dit["depth"], dit["heads"], dit["rope_theta"]) == (48, 1, 3, 100.0)
    objective = json.loads((tmp_path / "run" / "model" / "model_index.json").read_text())["objective"]
    assert (objective["logit_mean"], objective["shift"], objective["prediction"]) == (0.8, 2.0, "x0")
    assert objective["input_perturbation"] == 0.1
    # the loss weight is part of the run's identity (a resume with another weight is refused), only when set
    model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (model["foreground_weight"], model["foreground_of"]) == (9.0, "either")
    assert model["objective"]["input_perturbation"] == 0.1  # set: part of the run's identity
    pipe = TextToVideoPipeline.from_pretrained(tmp_path / "run" / "model")
    assert pipe.objective.shift == 2.0 and pipe.dit.blocks[0].__class__.__name__ == "JointBlock"
    assert pipe("a red circle moving left", steps=2, seed=0).ndim == 4
    assert main(["dit", "train", "--latents", str(tiny_latents), "--preset", "tiny", "--objective", "epsilon",
                 "--input-perturbation", "0.1", "--out", str(tmp_path / "bad")]) == 2
    assert "use --objective flow" in capsys.readouterr().err
    assert main(["dit", "train", "--latents", str(tiny_latents), "--preset", "tiny", "--width", "50", "--heads", "3",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "dim 50 must be divisible by heads 3" in capsys.readouterr().err


def test_dit_train_caption_mix_flag(tiny_latents, tmp_path, capsys):
    """--caption-mix picks the caption levels trained on; a level the cache lacks or a bad spec is refused."""
    from kinema.cli import main
    from kinema.cli.dit import parse_caption_mix
    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_PRESETS
    from kinema.train.dit_task import DiTTask

    assert parse_caption_mix("detailed=0.4, free=0.6") == {"detailed": 0.4, "free": 0.6}
    data = LatentDataset(tiny_latents)
    assert "free" in data.text  # synthesised shapes clips carry the freely phrased level
    task = DiTTask(data, DIT_PRESETS["tiny"](), FlowObjective(), batch_size=2, caption_mix=parse_caption_mix("free=1"))
    assert set(task._levels(list(range(len(data))), [random.Random(i) for i in range(len(data))])) == {"free"}
    base = ["dit", "train", "--latents", str(tiny_latents), "--preset", "tiny", "--steps", "1", "--batch-size", "2",
            "--sample-every", "0"]
    assert main([*base, "--caption-mix", "free=0.5,medium=0.5", "--out", str(tmp_path / "run")]) in (0, None)
    assert (tmp_path / "run" / "model" / "dit.safetensors").exists()
    for spec, message in (("bogus=1", "LEVEL one of"), ("free=x", "not a number"), ("free=-1", ">= 0"),
                          ("free=0", "every weight is 0")):
        with pytest.raises(SystemExit):
            main([*base, "--caption-mix", spec, "--out", str(tmp_path / "bad")])
        assert message in capsys.readouterr().err
    assert main([*base, "--caption-mix", "recaption=1", "--out", str(tmp_path / "bad")]) == 2
    assert "has no captions of level ['recaption']" in capsys.readouterr().err


def test_foreground_weight_counts_from_its_step_on(tiny_latents, tmp_path):
    """--foreground-from: before that step the loss is the plain one, from it the weighted one, batch for batch;
    the step is part of the run's identity (saved in its config) only when set."""
    from kinema.cli import main
    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_PRESETS
    from kinema.train.distributed import DistInfo
    from kinema.train.dit_task import DiTTask

    data = LatentDataset(tiny_latents)
    objective = FlowObjective(prediction="x0")

    def task(**kw) -> DiTTask:
        return DiTTask(data, DIT_PRESETS["tiny"](), objective, batch_size=2, **kw)

    late, plain, always = task(foreground_weight=9.0, foreground_from=3), task(), task(foreground_weight=9.0)
    torch.manual_seed(0)
    model = late.build_model()

    def loss(t: DiTTask, step: int) -> torch.Tensor:
        batch = t.batch(step, 0, DistInfo())
        x0 = torch.full_like(batch["x0"], 0.3)  # a flat background with one object: (B, C, F, H, W)
        x0[..., :2, :2] = 2.0
        return t.loss(model, batch | {"x0": x0}, torch.Generator().manual_seed(step))[0]

    for step in (0, 2):
        assert not late.batch(step, 0, DistInfo())["foreground"]
        assert torch.equal(loss(late, step), loss(plain, step))
    for step in (3, 5):
        assert torch.equal(loss(late, step), loss(always, step))
    assert not torch.equal(loss(late, 3), loss(plain, 3))  # the weight is on: it changes the loss
    assert late.model_config()["foreground_from"] == 3 and "foreground_from" not in always.model_config()
    with pytest.raises(ValueError, match="foreground_from"):
        task(foreground_weight=9.0, foreground_from=-1)
    with pytest.raises(ValueError, match="no foreground_weight"):
        task(foreground_from=3)
    main(["dit", "train", "--latents", str(tiny_latents), "--preset", "tiny", "--foreground-weight", "4",
          "--foreground-from", "1", "--steps", "2", "--batch-size", "2", "--sample-every", "0",
          "--out", str(tmp_path / "run")])
    model_cfg = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (model_cfg["foreground_weight"], model_cfg["foreground_from"]) == (4.0, 1)


def test_foreground_weight_counts_from_a_share_of_the_run(tiny_latents, tmp_path, capsys):
    """--foreground-from N%: off until the loop tells the task the run's length, then from round(N% x steps) on,
    as the step form would be; the CLI parses both forms and refuses others by name."""
    from kinema.cli import main
    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_PRESETS
    from kinema.train.distributed import DistInfo
    from kinema.train.dit_task import DiTTask

    data = LatentDataset(tiny_latents)

    def task(**kw) -> DiTTask:
        return DiTTask(data, DIT_PRESETS["tiny"](), FlowObjective(prediction="x0"), batch_size=2,
                       foreground_weight=4.0, **kw)

    share, step = task(foreground_from_share=0.45), task(foreground_from=9)
    assert not share.batch(15, 0, DistInfo())["foreground"]  # the length is not known yet: the weight waits
    share.set_run_steps(20)
    for s in (0, 8, 9, 19):
        assert share.batch(s, 0, DistInfo())["foreground"] == step.batch(s, 0, DistInfo())["foreground"] == (s >= 9)
    assert share.model_config()["foreground_from_share"] == 0.45
    for bad in ({"foreground_from_share": 1.0}, {"foreground_from_share": 0.5, "foreground_from": 3}):
        with pytest.raises(ValueError, match="foreground_from_share"):
            task(**bad)
    base = ["dit", "train", "--latents", str(tiny_latents), "--preset", "tiny", "--foreground-weight", "4",
            "--steps", "4", "--batch-size", "2", "--sample-every", "0"]
    main([*base, "--foreground-from", "50%", "--out", str(tmp_path / "run")])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    model_cfg = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert model_cfg["foreground_from_share"] == 0.5 and "foreground_from" not in model_cfg
    assert metrics[-1]["step"] == 4
    for text, message in (("100%", "under 100%"), ("-2", "a step must be >= 0"), ("half", "expected a step")):
        with pytest.raises(SystemExit):
            main([*base, "--foreground-from", text, "--out", str(tmp_path / "bad")])
        assert message in capsys.readouterr().err


def test_late_logit_mean_moves_the_noise_centre_when_the_foreground_weight_starts(tiny_latents, monkeypatch):
    """--late-logit-mean: the flow loss draws its noise levels around the late centre from the step the foreground
    weight starts, around --logit-mean before it; it needs that step, and is saved with the run's model config."""
    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_PRESETS
    from kinema.train.distributed import DistInfo
    from kinema.train.dit_task import DiTTask

    data = LatentDataset(tiny_latents)
    task = DiTTask(data, DIT_PRESETS["tiny"](), FlowObjective(prediction="x0", logit_mean=1.4), batch_size=2,
                   foreground_weight=4.0, foreground_from=3, late_logit_mean=-0.5)
    centres = []
    plain = FlowObjective.loss
    monkeypatch.setattr(FlowObjective, "loss",
                        lambda self, *a, **k: centres.append(self.logit_mean) or plain(self, *a, **k))
    model = task.build_model()
    for step in (0, 2, 3, 7):
        task.loss(model, task.batch(step, 0, DistInfo()), torch.Generator().manual_seed(step))
    assert centres == [1.4, 1.4, -0.5, -0.5]
    assert task.model_config()["late_logit_mean"] == -0.5
    with pytest.raises(ValueError, match="late_logit_mean"):
        DiTTask(data, DIT_PRESETS["tiny"](), FlowObjective(), batch_size=2, late_logit_mean=0.0)
