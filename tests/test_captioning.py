import json

import pytest
import torch

from kinema.captioning.captioner import CaptionerConfig, VideoCaptioner, Vocab, detokenize, tokenize
from kinema.captioning.recaption import caption_agreement, captioner_inputs, load_captioner, recaption_dataset
from kinema.config import TrainConfig
from kinema.data.latents import LatentDataset
from kinema.data.shards import DecodedClips, ShardDataset
from kinema.train.captioner_task import CaptionerTask
from kinema.train.loop import train


def test_vocab_round_trip():
    caps = ["A big red circle starts near the top edge and moves quickly left, on a black background."]
    vocab = Vocab.build(caps)
    assert vocab.decode(vocab.encode(caps[0], 64)[1:]) == caps[0]
    assert Vocab.from_json(vocab.to_json()).words == vocab.words
    assert detokenize(tokenize("a b, c.")) == "A b, c."


def _tiny(vocab_size=40):
    return VideoCaptioner(CaptionerConfig(latent_channels=4, vocab_size=vocab_size, dim=32, heads=2,
                                          encoder_layers=1, decoder_layers=1, max_length=12))


def test_shapes_and_decoding_terminates():
    torch.manual_seed(0)
    model = _tiny().eval()
    latents = torch.randn(3, 4, 2, 8, 8)
    tokens = torch.randint(4, 40, (3, 7))
    assert model.decode_step(tokens, model.encode_video(latents)).shape == (3, 7, 40)
    for beams in (1, 3):
        out = model.generate(latents, beams=beams)
        assert len(out) == 3 and all(len(seq) <= 11 for seq in out)


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = _tiny().eval()
    memory = model.encode_video(torch.randn(1, 4, 2, 8, 8))
    a = torch.tensor([[1, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 4] = 9
    assert torch.allclose(model.decode_step(a, memory)[:, :4], model.decode_step(b, memory)[:, :4], atol=1e-5)


def test_tiny_captioner_overfits_a_handful_of_clips(tiny_latents, tmp_path):
    from kinema.data.captions import parse_caption

    data = LatentDataset(tiny_latents)
    subset = [i for i, r in enumerate(data.rows) if len(parse_caption(r["captions"]["detailed"]).objects) <= 2][:4]
    vocab = Vocab.build([data.rows[i]["captions"]["detailed"] for i in subset])
    cfg = CaptionerConfig(latent_channels=4, vocab_size=len(vocab), dim=64, heads=2, encoder_layers=1,
                          decoder_layers=2, max_length=48)
    task = CaptionerTask(data, cfg, vocab, batch_size=4, subset=subset, eval_indices=subset)
    train(task, TrainConfig(steps=300, batch_size=4, lr=3e-3, warmup_steps=10, log_every=50, ckpt_every=300,
                            bf16=False), tmp_path, progress=False)
    model, vocab2, _ = load_captioner(tmp_path)
    b = data.gather(subset, ["detailed"] * 4)
    generated = [vocab2.decode(t) for t in model.generate(b.latents)]
    assert caption_agreement(generated, b.captions)["all"] == 1.0, generated
    assert (tmp_path / "samples" / "captions-0000300.txt").exists()


def test_caption_agreement_counts_attributes():
    ref = ["A big red circle starts near the left side and moves quickly right, on a black background."]
    assert caption_agreement(ref, ref)["all"] == 1.0
    wrong = ["A big red square starts near the left side and moves slowly right, on a black background."]
    got = caption_agreement(wrong, ref)
    assert got["color"] == 1.0 and got["shape"] == 0.0 and got["speed"] == 0.0 and got["all"] == 0.0


@pytest.fixture()
def tiny_captioner(tiny_latents, tmp_path):
    data = LatentDataset(tiny_latents)
    vocab = Vocab.build([r["captions"]["detailed"] for r in data.rows])
    cfg = CaptionerConfig(latent_channels=4, vocab_size=len(vocab), dim=32, heads=2, encoder_layers=1,
                          decoder_layers=1, max_length=24)
    task = CaptionerTask(data, cfg, vocab, batch_size=4)
    train(task, TrainConfig(steps=2, batch_size=4, warmup_steps=1, ckpt_every=2, bf16=False), tmp_path / "cap",
          progress=False)
    return tmp_path / "cap"


def test_recaption_job_resumes_keeps_originals_and_skips_corrupt(tiny_dataset, tiny_captioner, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    original = (data / "captions.jsonl").read_text()
    first = recaption_dataset(tiny_captioner, data, batch_size=5, progress=False)
    assert (first.written, first.failed) == (24, 0)
    lines = (data / "recaptions.jsonl").read_text().splitlines()
    # simulate a job killed part-way: keep 10 lines and a torn one
    (data / "recaptions.jsonl").write_text("\n".join(lines[:10]) + '\n{"key": "000')
    again = recaption_dataset(tiny_captioner, data, batch_size=5, progress=False)
    assert (again.written, again.skipped_existing) == (14, 10)
    rows = [json.loads(line) for line in (data / "recaptions.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == sorted(json.loads(line)["key"] for line in original.splitlines())
    assert (data / "captions.jsonl").read_text() == original  # the originals are kept
    ds = ShardDataset(data)
    assert all("recaption" in r["captions"] and "detailed" in r["captions"] for r in ds.rows)
    # a corrupt clip is skipped and counted
    (data / "recaptions.jsonl").unlink()
    shard = data / "shards" / "shard-00000.tar"
    raw = bytearray(shard.read_bytes())
    start = raw.find(b"ftyp")  # inside the first mp4
    raw[start: start + 2000] = bytes(2000)
    shard.write_bytes(bytes(raw))
    broken = recaption_dataset(tiny_captioner, data, batch_size=5, progress=False)
    assert broken.failed >= 1 and broken.written + broken.failed == 24


def test_caption_train_cli_takes_the_patch_size(tiny_latents, tmp_path):
    import json

    from kinema.cli import main

    argv = ["caption", "train", "--latents", str(tiny_latents), "--out", str(tmp_path), "--dim", "32",
            "--layers", "1", "--patch", "1x1x1", "--steps", "2", "--batch-size", "4", "--no-bf16"]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "captioner.json").read_text())
    assert cfg["patch"] == [1, 1, 1]
    model, _, _ = load_captioner(tmp_path)
    assert model.encode_video(torch.zeros(1, 4, 2, 8, 8)).shape == (1, 2 * 8 * 8, 32)


def test_caption_export_writes_a_run_checkpoint_as_a_captioner_folder(tiny_latents, tmp_path):
    from safetensors.torch import load_file

    from kinema.cli import main

    run = tmp_path / "run"
    argv = ["caption", "train", "--latents", str(tiny_latents), "--out", str(run), "--dim", "32", "--layers", "1",
            "--steps", "3", "--ckpt-every", "2", "--batch-size", "4", "--no-bf16"]
    assert main(argv) == 0
    assert main(["caption", "export", "--run", str(run), "--out", str(tmp_path / "mid")]) == 0
    exported = load_file(str(tmp_path / "mid" / "captioner.safetensors"))
    final = load_file(str(run / "captioner.safetensors"))
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)  # step 3 = final
    cfg = json.loads((tmp_path / "mid" / "captioner.json").read_text())
    assert cfg["trained_steps"] == 3 and cfg["vae"] == json.loads((run / "captioner.json").read_text())["vae"]
    model, vocab, _ = load_captioner(tmp_path / "mid")
    assert vocab.words == load_captioner(run)[1].words
    (tmp_path / "mid" / "captioner.json").write_text(json.dumps({**cfg, "keyframes": 2}))  # an older version's field
    assert load_captioner(tmp_path / "mid")[0].cfg == model.cfg
    (tmp_path / "mid" / "captioner.json").write_text(json.dumps({**cfg, "keyframes": 2, "input": "latents+keyframes"}))
    with pytest.raises(ValueError, match="input 'latents\\+keyframes'; expected one of"):
        load_captioner(tmp_path / "mid")
    assert main(["caption", "export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) != 0


def test_pixel_captioner_reads_clips_on_the_vae_grid():
    torch.manual_seed(0)
    cfg = CaptionerConfig(input="pixels", vocab_size=40, dim=32, heads=2, encoder_layers=1, decoder_layers=1,
                          max_length=12, pixel_temporal=4, pixel_spatial=8)
    model = VideoCaptioner(cfg).eval()
    clips = torch.rand(2, 3, 9, 32, 48) * 2 - 1
    assert model.encode_video(clips).shape == (2, 3 * 4 * 6, 32)  # (1 + 8/4) x 32/8 x 48/8 tokens
    assert len(model.generate(clips)) == 2
    # causal in time: a change to the last frames leaves the first frame's tokens alone
    later = clips.clone()
    later[:, :, 1:] = 0
    first = model.video_embedder(clips)[:, :, 0]
    assert torch.allclose(first, model.video_embedder(later)[:, :, 0])
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        model.encode_video(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="power of 2"):
        CaptionerConfig(input="pixels", pixel_spatial=6)
    with pytest.raises(ValueError, match="input"):
        CaptionerConfig(input="frames")


def test_tiny_pixel_captioner_overfits_and_recaptions_without_a_vae(tiny_dataset, tmp_path):
    import shutil

    from kinema.data.captions import parse_caption

    data = ShardDataset(tiny_dataset)
    subset = [i for i, r in enumerate(data.rows) if len(parse_caption(r["captions"]["detailed"]).objects) <= 2][:4]
    vocab = Vocab.build([data.rows[i]["captions"]["detailed"] for i in subset])
    cfg = CaptionerConfig(input="pixels", vocab_size=len(vocab), dim=64, heads=2, encoder_layers=1,
                          decoder_layers=2, max_length=48, pixel_spatial=8)
    task = CaptionerTask(data, cfg, vocab, batch_size=4, subset=subset, eval_indices=subset)
    train(task, TrainConfig(steps=150, batch_size=4, lr=3e-3, warmup_steps=10, log_every=50, ckpt_every=150,
                            bf16=False), tmp_path / "cap", progress=False)
    model, vocab2, vae = load_captioner(tmp_path / "cap")
    assert model.cfg.input == "pixels" and vae is None
    inputs, captions = captioner_inputs(data, subset)
    generated = [vocab2.decode(t) for t in model.generate(**inputs)]
    assert caption_agreement(generated, captions)["all"] == 1.0, generated
    # the recaption job feeds it pixels: no VAE is needed or asked for
    copy = tmp_path / "data"
    shutil.copytree(tiny_dataset, copy)
    done = recaption_dataset(tmp_path / "cap", copy, batch_size=8, progress=False)
    assert (done.written, done.failed) == (24, 0)


def test_caption_cli_trains_and_evaluates_a_pixel_captioner(tiny_dataset, tiny_latents, tmp_path, capsys):
    from kinema.cli import main

    argv = ["caption", "train", "--data", str(tiny_dataset), "--out", str(tmp_path), "--dim", "32", "--layers", "1",
            "--steps", "2", "--batch-size", "4", "--no-bf16", "--pixel-patch", "4x16"]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "captioner.json").read_text())
    assert (cfg["input"], cfg["pixel_temporal"], cfg["pixel_spatial"]) == ("pixels", 4, 16)
    assert main(["caption", "eval", "--captioner", str(tmp_path), "--data", str(tiny_dataset), "--n", "6"]) == 0
    assert "shape" in capsys.readouterr().out
    assert main(["caption", "eval", "--captioner", str(tmp_path), "--latents", str(tiny_latents)]) != 0
    assert "reads pixels: pass --data" in capsys.readouterr().err


def test_decoded_clips_keep_the_exact_pixels_and_captions(tiny_dataset):
    data = ShardDataset(tiny_dataset)
    clips = DecodedClips(data)
    for i in (0, 3, 0):  # the second read of clip 0 comes from memory
        assert torch.equal(clips.video(i), data[i]["video"])
    direct, caps = captioner_inputs(data, [1, 2])
    cached, caps2 = captioner_inputs(clips, [1, 2])
    assert torch.equal(direct["video"], cached["video"]) and caps == caps2
    assert set(clips._videos) == {0, 1, 2, 3} and clips._videos[0].dtype == torch.uint8
