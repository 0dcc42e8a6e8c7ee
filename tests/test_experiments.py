"""The experiment runners, end to end at toy scale: every stage runs, resumes, and writes its report."""

from __future__ import annotations

import json

import torch

from kinema.captioning.captioner import CaptionerConfig, VideoCaptioner, Vocab
from kinema.data.latents import LatentDataset
from kinema.io.weights import save_weights


def _captioner(latents_dir, out, input="latents"):
    data = LatentDataset(latents_dir)
    vocab = Vocab.build([r["captions"]["detailed"] for r in data.rows])
    cfg = CaptionerConfig(input=input, latent_channels=data.latent_shape[0], vocab_size=len(vocab), dim=32,
                          heads=2, encoder_layers=1, decoder_layers=1, max_length=24)
    torch.manual_seed(0)
    config = {**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "vocab": vocab.words[4:],
              "vae": data.meta["vae"] if input == "latents" else None}
    save_weights(out, "captioner", VideoCaptioner(cfg).state_dict(), config)
    return out


def test_recaption_experiment_trains_both_arms_on_their_captions_and_reports(tiny_latents, tmp_path):
    from kinema.cli import main
    from kinema.experiments.recaption import detailed_subset

    cap = _captioner(tiny_latents, tmp_path / "cap")
    doc = tmp_path / "docs" / "recaption.md"
    argv = ["experiment", "recaption", "--latents", str(tiny_latents), "--captioner", str(cap), "--out",
            str(tmp_path / "exp"), "--share", "0.25", "--preset", "tiny", "--steps", "4", "--batch-size", "4",
            "--eval-n", "2", "--eval-steps", "2", "--doc", str(doc), "--patch", "1x1x1"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert results["clips"] == 24 and results["with_detailed"] == 6
    keys = set((tmp_path / "exp" / "detailed_keys.txt").read_text().split())
    assert keys == detailed_subset([f"{i:08d}" for i in range(24)], 0.25, 0)
    assert set(results["arms"]) == {"a", "b", "c"}
    for arm in ("a", "b", "c"):
        assert results["arms"][arm]["adherence"]["single"]["n"] == 2
        assert (tmp_path / "exp" / arm / "model" / "dit.safetensors").exists()
        assert json.loads((tmp_path / "exp" / arm / "model" / "dit.json").read_text())["patch"] == [1, 1, 1]
    assert 0 <= results["captioner_agreement"]["all"] <= 1
    text = doc.read_text()
    assert "(a) original" in text and "recaptioned" in text and "(c) ground truth" in text
    assert doc.with_suffix(".png").stat().st_size > 1000
    assert "word_swap" in results["arms"]["a"]["adherence"]["single"]  # judged on the data's own world
    # a second run resumes: nothing is retrained or re-evaluated
    mtime = (tmp_path / "exp" / "a" / "model" / "dit.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    assert (tmp_path / "exp" / "a" / "model" / "dit.safetensors").stat().st_mtime_ns == mtime


def test_arms_see_the_captions_they_are_given(tiny_latents):
    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_PRESETS
    from kinema.train.distributed import DistInfo
    from kinema.train.dit_task import DiTTask

    data = LatentDataset(tiny_latents)
    levels = ["detailed" if i % 4 == 0 else "short" for i in range(len(data))]
    task = DiTTask(data, DIT_PRESETS["tiny"](), FlowObjective(), batch_size=8, clip_levels=levels,
                   caption_dropout=0.0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    idx = task._indices(0, 0, info)
    batch = task.batch(0, 0, info)
    expected = data.gather(idx, [levels[i] for i in idx])
    assert torch.equal(batch["text_mask"], expected.mask)
    assert torch.equal(batch["text"], expected.text * expected.mask[..., None])  # padding zeroed

def test_recaptions_are_reencoded_when_the_cache_text_encoder_changes(tiny_latents, tmp_path):
    from safetensors import safe_open

    from kinema.encode import reencode_text
    from kinema.experiments.recaption import RecaptionExperiment, _recaption

    cap = _captioner(tiny_latents, tmp_path / "cap")
    exp = RecaptionExperiment(latents=tiny_latents, captioner=cap, out=tmp_path / "exp")
    exp.out.mkdir()
    _recaption(exp, data := LatentDataset(tiny_latents))
    captions = json.loads((exp.out / "recaptions.json").read_text())
    assert data.gather([0], ["recaption"]).text.shape[-1] == data.meta["text_dim"]
    narrow = LatentDataset(reencode_text(tiny_latents, tmp_path / "lat384", "minilm", progress=False))
    _recaption(exp, narrow)  # captions reused, embeddings redone with the cache's encoder
    assert json.loads((exp.out / "recaptions.json").read_text()) == captions
    assert narrow.gather([0], ["recaption"]).text.shape[-1] == 384
    with safe_open(str(exp.out / "recaptions.safetensors"), framework="pt") as f:
        assert f.metadata()["text_encoder"] == "minilm"


def test_a_pixel_captioner_recaptions_the_clips_the_cache_was_encoded_from(tiny_latents, tmp_path):
    from kinema.captioning.recaption import caption_clips, load_captioner
    from kinema.data.shards import ShardDataset
    from kinema.experiments.recaption import RecaptionExperiment, _recaption

    cap = _captioner(tiny_latents, tmp_path / "cap", input="pixels")
    exp = RecaptionExperiment(latents=tiny_latents, captioner=cap, out=tmp_path / "exp")
    exp.out.mkdir()
    data = LatentDataset(tiny_latents)
    _recaption(exp, data)
    captions = json.loads((exp.out / "recaptions.json").read_text())
    # row i of the cache got the caption of the clip with the same key, read from its pixels
    clips = ShardDataset(data.meta["source"])
    model, vocab, _ = load_captioner(cap)
    where = {r["key"]: i for i, r in enumerate(clips.rows)}
    assert captions[3] == caption_clips(model, vocab, clips, [where[data.rows[3]["key"]]])[0]
    assert data.gather([3], ["recaption"]).captions == [captions[3]]


def test_lora_experiment_teaches_and_judges_a_new_color_end_to_end(tiny_model_dir, tmp_path):
    import json

    from kinema.cli import main

    doc = tmp_path / "lora.md"
    assert main(["experiment", "lora", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--clips", "8",
                 "--steps", "2", "--batch-size", "4", "--rank", "2", "--eval-n", "2", "--doc", str(doc)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for arm in ("base", "lora"):
        assert set(results[arm]) == {"new", "single"} and results[arm]["new"]["n"] == 2
    size = results["size"]
    assert 0 < size["adapter_params"] < size["model_params"]
    data = [json.loads(line) for line in (tmp_path / "run" / "data" / "captions.jsonl").read_text().splitlines()]
    assert len(data) == 8 and any("pink" in r["captions"]["detailed"] for r in data)
    assert "pink" in doc.read_text() and doc.with_name("lora-concept.png").exists()
    # a second run reads every finished stage back
    assert main(["experiment", "lora", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--clips", "8",
                 "--steps", "2", "--batch-size", "4", "--rank", "2", "--eval-n", "2"]) == 0
