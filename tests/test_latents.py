import torch

from kinema.data.latents import LatentDataset
from kinema.data.shards import ShardDataset
from kinema.encode import encode_dataset
from kinema.io.weights import load_model, save_model
from kinema.precision import autocast, use_bf16
from kinema.presets import vae_tiny
from kinema.vae.model import VAEConfig, VideoVAE


def test_latent_cache_round_trips_and_resumes(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "vae", "vae", VideoVAE(vae_tiny()), vae_tiny())
    out = encode_dataset(tmp_path / "vae", tiny_dataset, tmp_path / "lat", batch_size=5, progress=False)
    cache = LatentDataset(out)
    assert len(cache) == 24 and cache.latent_shape == (4, 2, 8, 8)
    vae = load_model(tmp_path / "vae", "vae", VideoVAE, VAEConfig)
    ds = ShardDataset(tiny_dataset)
    with torch.no_grad(), autocast("cpu", use_bf16("auto", "cpu")):  # the cache encodes as the host is fast at
        expected = vae.encode(torch.stack([ds[i]["video"] for i in (0, 13)])).float()
    batch = cache.gather([0, 13], ["detailed", "short"])
    assert torch.allclose(batch.latents, expected, atol=1e-5)
    assert batch.captions == [ds.rows[0]["captions"]["detailed"], ds.rows[13]["captions"]["short"]]
    assert batch.text.shape[0] == 2 and batch.text.shape[2] == 768  # minilm:0,6, the default
    assert batch.mask[1].sum() < batch.mask[0].sum()  # the short caption has fewer tokens
    # resume: a deleted shard is rewritten, the others are kept as they are
    from safetensors.torch import load_file

    shard0 = out / "latents-00000.safetensors"
    mtime1 = (out / "latents-00001.safetensors").stat().st_mtime_ns
    before = load_file(str(shard0))
    shard0.unlink()
    encode_dataset(tmp_path / "vae", tiny_dataset, out, batch_size=5, progress=False)
    after = load_file(str(shard0))
    assert after.keys() == before.keys()
    assert all(torch.allclose(after[k].float(), before[k].float(), atol=1e-4) for k in before)
    assert (out / "latents-00001.safetensors").stat().st_mtime_ns == mtime1


def test_a_resumed_encode_refuses_another_vae_or_text_encoder(tiny_dataset, tmp_path):
    import pytest

    torch.manual_seed(0)
    save_model(tmp_path / "vae", "vae", VideoVAE(vae_tiny()), vae_tiny())
    torch.manual_seed(1)
    save_model(tmp_path / "vae2", "vae", VideoVAE(vae_tiny()), vae_tiny())  # same layout, other weights
    out = encode_dataset(tmp_path / "vae", tiny_dataset, tmp_path / "lat", batch_size=8, progress=False)
    (out / "latents-00002.safetensors").unlink()  # as if killed before the last shard
    with pytest.raises(ValueError, match="vae_sha256"):
        encode_dataset(tmp_path / "vae2", tiny_dataset, out, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="text_encoder"):
        encode_dataset(tmp_path / "vae", tiny_dataset, out, batch_size=8, text_encoder_name="minilm", progress=False)
    encode_dataset(tmp_path / "vae", tiny_dataset, out, batch_size=8, progress=False)  # the same models resume
    assert len(LatentDataset(out)) == 24


def test_a_resumed_retext_refuses_another_text_encoder(tiny_latents, tmp_path):
    import pytest

    from kinema.encode import reencode_text

    out = reencode_text(tiny_latents, tmp_path / "re", "minilm", progress=False)
    next(out.glob("latents-*.safetensors")).unlink()
    with pytest.raises(ValueError, match="text_encoder"):
        reencode_text(tiny_latents, out, "minilm:0,6", progress=False)
