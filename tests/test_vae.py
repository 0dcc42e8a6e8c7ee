import pytest
import torch

from kinema.config import TrainConfig
from kinema.data.shards import ShardDataset
from kinema.eval.metrics import psnr
from kinema.io.weights import WeightsError, load_model, save_model
from kinema.presets import vae_tiny
from kinema.train.checkpoint import CheckpointError, load_checkpoint
from kinema.train.loop import train
from kinema.train.vae_task import VAETask
from kinema.vae.loss import VAELossConfig, foreground_mask, vae_loss
from kinema.vae.model import Conv3d, VAEConfig, VideoVAE, fold, unfold


@pytest.mark.parametrize("t, s, c", [(4, 8, 16), (4, 4, 4), (2, 8, 8), (1, 4, 4)])
def test_latent_shapes_and_compression(t, s, c):
    cfg = VAEConfig(latent_channels=c, spatial_compression=s, temporal_compression=t, base_channels=8,
                    decoder_blocks=1)
    vae = VideoVAE(cfg)
    x = torch.randn(2, 3, 1 + 2 * t, 32, 32)
    z = vae.encode(x)
    assert z.shape == (2, c, 3, 32 // s, 32 // s) == (2, *cfg.latent_shape(1 + 2 * t, 32, 32))
    assert vae.decode(z).shape == x.shape
    assert cfg.compression_ratio == t * s * s * 3 / c


def test_default_shapes_preset_compression_is_at_least_48x():
    from kinema.presets import vae_shapes, vae_shapes_s4
    assert vae_shapes().compression_ratio >= 48
    assert vae_shapes_s4().compression_ratio >= 48
    assert vae_shapes_s4().latent_shape(17, 64, 64) == (4, 5, 16, 16)


def test_single_image_is_a_one_frame_video():
    vae = VideoVAE(vae_tiny())
    x = torch.randn(1, 3, 1, 16, 16)
    assert vae.encode(x).shape == (1, 4, 1, 4, 4)
    assert vae.decode(vae.encode(x)).shape == (1, 3, 1, 16, 16)


def test_encoder_is_causal_in_time():
    torch.manual_seed(0)
    vae = VideoVAE(VAEConfig(latent_channels=4, spatial_compression=4, temporal_compression=4, base_channels=8))
    x = torch.randn(1, 3, 9, 16, 16)
    z = vae.encode(x)
    for t in (1, 4, 5, 8):  # changing frame t leaves latent frames before (t + 3) // 4 untouched
        x2 = x.clone()
        x2[:, :, t] += 1.0
        z2 = vae.encode(x2)
        first_touched = (t + 3) // 4
        assert torch.equal(z[:, :, :first_touched], z2[:, :, :first_touched]), t
        assert not torch.allclose(z[:, :, first_touched], z2[:, :, first_touched])


def test_decoder_is_causal_in_time():
    vae = VideoVAE(vae_tiny())
    z = torch.randn(1, 4, 3, 4, 4)
    x = vae.decoder(z)
    z2 = z.clone()
    z2[:, :, 2] += 1
    assert torch.equal(vae.decoder(z2)[:, :, :5], x[:, :, :5])  # latent frame 2 only makes frames 5..8


def test_fold_unfold_round_trip():
    x = torch.randn(2, 3, 9, 8, 8)
    assert torch.equal(unfold(fold(x, 2, 2), 2, 2), x)


@pytest.mark.parametrize("shape, kernel, padding", [((1, 8, 7, 12, 12), 3, (0, 1, 1)), ((2, 8, 5, 6, 6), 1, 0),
                                                     ((1, 4, 3, 4, 4), (3, 1, 1), (1, 0, 0)),
                                                     ((1, 4, 5, 6, 6), 3, "same")])
def test_conv3d_fast_path_matches_torch_conv3d_with_gradients(shape, kernel, padding):
    # the oneDNN path (taken for float32 on CPU) computes what torch's own conv3d does, forward and backward
    torch.manual_seed(0)
    ours = Conv3d(shape[1], 6, kernel, padding=padding)
    ref = torch.nn.Conv3d(shape[1], 6, kernel, padding=padding)
    ref.load_state_dict(ours.state_dict())
    x1 = torch.randn(shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-5)
    (y1 * y2.detach()).sum().backward()
    (y2 * y2.detach()).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_bad_frame_counts_and_sizes_are_explained():
    vae = VideoVAE(vae_tiny())
    with pytest.raises(ValueError, match=r"frames must be 1 \+ 4\*k"):
        vae.encode(torch.randn(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(torch.randn(1, 3, 5, 18, 16))
    with pytest.raises(ValueError, match="spatial_compression"):
        VAEConfig(spatial_compression=3)


def test_calibration_normalises_latents():
    vae = VideoVAE(vae_tiny())
    raw = torch.randn(8, 4, 2, 4, 4) * 3 + 1
    vae.calibrate(raw)
    z = vae.normalize(raw)
    assert z.mean().abs() < 1e-5 and (z.std() - 1).abs() < 0.05
    assert torch.allclose(vae.denormalize(z), raw, atol=1e-5)


def test_tiny_vae_training_improves_reconstruction(tiny_dataset, tmp_path):
    ds = ShardDataset(tiny_dataset)
    clips = torch.stack([ds[i]["video"] for i in range(8)])
    cfg = TrainConfig(steps=60, batch_size=4, lr=3e-3, warmup_steps=5, log_every=20, ckpt_every=60)
    torch.manual_seed(0)
    before = psnr(VideoVAE(vae_tiny()).eval().decode(VideoVAE(vae_tiny()).encode(clips)), clips).mean()
    task = VAETask(ds, vae_tiny(), VAELossConfig(), 4, crop_frames=5, crop_size=16)
    result = train(task, cfg, tmp_path, progress=False)
    vae = load_model(tmp_path, "vae", VideoVAE, VAEConfig)
    with torch.no_grad():
        after = psnr(vae.decode(vae.encode(clips)), clips).mean()
    assert after > before + 5, (before, after)
    assert (tmp_path / "samples" / "recon-0000060.png").exists()
    assert result.exported == tmp_path / "vae.safetensors"


def test_edge_loss_sees_blurred_corners_that_l1_barely_weighs():
    x = -torch.ones(1, 3, 1, 32, 32)
    x[..., 10:16, 10:16] = 1.0  # a small white square on black
    blurred = torch.nn.functional.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    mean = logvar = torch.zeros(1, 4, 1, 8, 8)
    plain, _ = vae_loss(x, blurred, mean, logvar, VAELossConfig())
    edged, _ = vae_loss(x, blurred, mean, logvar, VAELossConfig(edge_weight=1.0))
    assert edged > 1.5 * plain  # the edge term more than doubles what a rounded square costs
    same, _ = vae_loss(x, x, mean, logvar, VAELossConfig(edge_weight=1.0))
    assert same == 0.0
    with pytest.raises(ValueError, match="weights must be >= 0"):
        VAELossConfig(edge_weight=-1.0)


def test_foreground_weight_counts_a_small_object_as_much_as_its_background():
    x = -torch.ones(2, 3, 2, 32, 32)
    x[0, :, :, 4:10, 4:10] = 1.0  # a small white square on black
    x[1] = 0.2  # a flat gray frame: no foreground
    x[1, 0, :, 20:24, 20:26] = 0.9  # a red-ish patch: one channel differs
    mask = foreground_mask(x)
    assert mask.shape == (2, 1, 2, 32, 32)
    assert mask[0, 0, 0].sum() == 36 and mask[0, 0, 0, 4:10, 4:10].all()
    assert mask[1, 0, 0].sum() == 24 and mask[1, 0, 0, 20:24, 20:26].all()
    mean = logvar = torch.zeros(2, 4, 1, 8, 8)
    wrong_object = x.clone()
    wrong_object[0, :, :, 4:10, 4:10] = -1.0  # the square lost
    wrong_background = x.clone()
    wrong_background[0, :, :, 20:26, 20:26] = 1.0  # a square drawn where there is none: as many wrong pixels
    cfg = VAELossConfig(foreground_weight=9.0)
    plain = [vae_loss(x, y, mean, logvar, VAELossConfig())[0] for y in (wrong_object, wrong_background)]
    weighted = [vae_loss(x, y, mean, logvar, cfg)[0] for y in (wrong_object, wrong_background)]
    assert torch.isclose(plain[0], plain[1])  # unweighted, both errors cost the same
    assert weighted[0] > 5 * weighted[1]  # weighted, losing the object costs far more
    assert vae_loss(x, x, mean, logvar, cfg)[0] == 0.0
    # a frame with no foreground: the weighted loss is the plain one
    flat = torch.full((1, 3, 2, 32, 32), 0.2)
    noisy = flat + 0.1 * torch.randn_like(flat)
    assert torch.isclose(vae_loss(flat, noisy, mean[:1], logvar[:1], cfg)[0],
                         vae_loss(flat, noisy, mean[:1], logvar[:1], VAELossConfig())[0])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        VAELossConfig(foreground_weight=-1.0)


def test_decoder_only_fine_tune_keeps_the_encoder_and_the_latent(tiny_dataset, tiny_vae_dir, tmp_path):
    ds = ShardDataset(tiny_dataset)
    cfg = TrainConfig(steps=6, batch_size=2, lr=1e-2, warmup_steps=1, log_every=3, ckpt_every=6)
    task = VAETask(ds, vae_tiny(), VAELossConfig(edge_weight=1.0), 2, crop_frames=5, crop_size=16,
                   init_from=tiny_vae_dir, decoder_only=True)
    train(task, cfg, tmp_path, progress=False)
    before = load_model(tiny_vae_dir, "vae", VideoVAE, VAEConfig)
    after = load_model(tmp_path, "vae", VideoVAE, VAEConfig)
    for (name, a), b in zip(before.encoder.state_dict().items(), after.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(before.decoder.parameters(), after.decoder.parameters(),
                                                        strict=True))
    clips = torch.stack([ds[i]["video"] for i in range(2)])
    with torch.no_grad():  # same encoder, recalibrated on the same clips: the latent space is unchanged
        assert torch.allclose(before.posterior(clips)[0], after.posterior(clips)[0])
    # runs saved before the edge term existed still resume: an unset edge weight is not part of the run's identity
    loss = VAETask(ds, vae_tiny(), VAELossConfig(), 2).model_config()["loss"]
    assert "edge_weight" not in loss and "foreground_weight" not in loss
    with pytest.raises(ValueError, match="decoder_only needs init_from"):
        VAETask(ds, vae_tiny(), VAELossConfig(), 2, decoder_only=True)
    wrong = VAEConfig(latent_channels=8, spatial_compression=4, temporal_compression=4, base_channels=8)
    with pytest.raises(ValueError, match="does not fit the VAE config"):
        VAETask(ds, wrong, VAELossConfig(), 2, init_from=tiny_vae_dir).build_model()


def test_corrupt_weights_and_checkpoints_give_clear_errors(tmp_path):
    save_model(tmp_path, "vae", VideoVAE(vae_tiny()), vae_tiny())
    data = (tmp_path / "vae.safetensors").read_bytes()
    (tmp_path / "vae.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="vae.safetensors.*truncated or corrupt"):
        load_model(tmp_path, "vae", VideoVAE, VAEConfig)
    (tmp_path / "step-0000001.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="step-0000001.safetensors"):
        load_checkpoint(tmp_path / "step-0000001.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------------
# Probe ceiling and reconstruct
# ---------------------------------------------------------------------------------------------------


class _PassThrough:
    """A 'VAE' whose latent is the video itself (encode = decode = identity), optionally blurring."""

    def __init__(self, blur: int = 1):
        self.blur = blur

    def encode(self, x):
        return x

    def decode(self, z):
        if self.blur == 1:
            return z
        f = torch.nn.functional
        return f.interpolate(f.avg_pool3d(z, (1, self.blur, self.blur)), scale_factor=(1, self.blur, self.blur))


def test_probe_ceiling_is_the_control_for_a_lossless_latent_and_drops_for_a_lossy_one():
    from kinema.eval.vae import probe_ceiling

    exact = probe_ceiling(_PassThrough(), n=6, frames=9, size=64)
    for k in ("single object", "2 objects"):
        assert exact[k]["original"]["all_correct"] == 1.0
        assert exact[k]["reconstructed"] == exact[k]["original"]  # nothing lost, nothing to blame on the latent
    blurred = probe_ceiling(_PassThrough(blur=8), n=6, frames=9, size=64, objects=(1,))
    assert blurred["single object"]["reconstructed"]["shape"] < 1.0  # 8x8 blocks lose the shape
    assert blurred["single object"]["reconstructed"]["all_correct"] < 1.0


def test_vae_eval_reports_the_probe_ceiling_of_a_tiny_vae(tiny_vae_dir):
    from kinema.eval.vae import evaluate_vae

    report = evaluate_vae(tiny_vae_dir, [], ceiling_n=2)
    assert set(report.ceiling) == {"single object", "2 objects"}
    assert report.ceiling["single object"]["original"]["all_correct"] == 1.0
    assert 0.0 <= report.ceiling["2 objects"]["reconstructed"]["all_correct"] <= 1.0
    assert any("probe ceiling, single object (reconstructed" in line for line in report.lines())


def test_reconstruct_round_trips_a_video_and_fits_it_to_the_vae(tiny_vae_dir, tmp_path):
    import numpy as np

    from kinema.eval.vae import reconstruct
    from kinema.io.video import read_video, write_mp4

    src = write_mp4(tmp_path / "in.mp4", np.random.default_rng(0).integers(0, 255, (11, 38, 42, 3), np.uint8))
    r = reconstruct(tiny_vae_dir, src, tmp_path / "out.mp4", lossless=True)
    assert (r["frames"], r["height"], r["width"], r["dropped_frames"]) == (9, 36, 40, 2)  # 1 + 4k, multiples of 4
    assert read_video(tmp_path / "out.mp4").shape == (9, 36, 40, 3)
    assert np.isfinite(r["psnr"])


def test_reconstruct_errors_name_the_file(tiny_vae_dir, tmp_path):
    from kinema.eval.vae import reconstruct
    from kinema.io.video import VideoReadError

    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(VideoReadError, match="notes.mp4"):
        reconstruct(tiny_vae_dir, tmp_path / "notes.mp4", tmp_path / "out.mp4")
    with pytest.raises(ValueError, match=r"out.webm.*expected .mp4 or .gif"):
        reconstruct(tiny_vae_dir, tmp_path / "notes.mp4", tmp_path / "out.webm")
    with pytest.raises(VideoReadError, match="missing.mp4: file not found"):
        reconstruct(tiny_vae_dir, tmp_path / "missing.mp4", tmp_path / "out.mp4")


@pytest.mark.parametrize("cfg", [vae_tiny(), VAEConfig(), VAEConfig(spatial_compression=4, temporal_compression=2)])
def test_pixel_shape_inverts_latent_shape(cfg):
    for frames, size in ((17, 64), (1, 32), (33, 96)):
        if (frames - 1) % cfg.temporal_compression:
            continue
        _, f, h, w = cfg.latent_shape(frames, size, 2 * size)
        assert cfg.pixel_shape(f, h, w) == (frames, size, 2 * size)


def test_vae_train_cli_fine_tunes_a_vae_folder(tiny_dataset, tiny_vae_dir, tmp_path, capsys):
    """--init-from takes the folder's architecture (not --preset's) and --decoder-only keeps its encoder; run again
    on the finished run, it says there is nothing to do."""
    import json

    from kinema.cli import main

    with pytest.raises(SystemExit, match="--decoder-only needs --init-from"):
        main(["vae", "train", "--data", str(tiny_dataset), "--decoder-only", "--out", str(tmp_path / "bad")])
    main(["vae", "train", "--data", str(tiny_dataset), "--init-from", str(tiny_vae_dir), "--decoder-only",
          "--edge-weight", "0.5", "--foreground-weight", "3", "--steps", "2", "--batch-size", "2", "--crop-size", "16",
          "--crop-frames", "5",
          "--sample-every", "0", "--out", str(tmp_path / "run")])
    config = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert config["vae"] == json.loads((tiny_vae_dir / "vae.json").read_text())
    assert config["loss"]["edge_weight"] == 0.5 and config["init_from"]["decoder_only"] is True
    assert config["loss"]["foreground_weight"] == 3.0
    capsys.readouterr()
    main(["vae", "train", "--data", str(tiny_dataset), "--init-from", str(tiny_vae_dir), "--decoder-only",  # again
          "--edge-weight", "0.5", "--foreground-weight", "3", "--steps", "2", "--batch-size", "2", "--crop-size", "16",
          "--crop-frames", "5", "--sample-every", "0", "--out", str(tmp_path / "run")])
    assert capsys.readouterr().out.strip().endswith("already trained to step 2; nothing to do")  # not "loss nan"


@pytest.mark.parametrize(("name", "channels", "share"), [("shapes-s4c8-lite", [32, 64, 64], 0.4),
                                                         ("shapes-s4c8-slim", [16, 32, 64], 0.3)])
def test_the_narrow_shapes_presets_keep_the_latent(name: str, channels: list[int], share: float):
    """shapes-s4c8-lite (64 channels instead of 128 at the deepest stage) and shapes-s4c8-slim (half the channels
    at every stage) encode to the same latent shape as shapes-s4c8 with a fraction of its parameters, so a DiT
    recipe moves between them unchanged; they train with its settings."""
    from kinema.presets import VAE_PRESETS, VAE_TRAIN, lookup

    full, narrow = (lookup(VAE_PRESETS, n, "vae") for n in ("shapes-s4c8", name))
    assert (full.channels, narrow.channels) == ([32, 64, 128], channels)
    assert narrow.latent_shape(17, 64, 64) == full.latent_shape(17, 64, 64) == (8, 5, 16, 16)
    model = VideoVAE(narrow)
    assert model.encode(torch.zeros(1, 3, 9, 16, 16)).shape == (1, 8, 3, 4, 4)
    assert sum(p.numel() for p in model.parameters()) < share * sum(p.numel() for p in VideoVAE(full).parameters())
    assert lookup(VAE_TRAIN, name, "vae") == lookup(VAE_TRAIN, "shapes-s4c8", "vae")
