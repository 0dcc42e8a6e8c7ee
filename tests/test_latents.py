import torch

from kinema.data.latents import LatentDataset, encode_dataset
from kinema.data.shards import ShardDataset
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
