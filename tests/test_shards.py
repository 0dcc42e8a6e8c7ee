import json
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kinema.data.shards import ShardDataset, load_index, make_clip, synth_dataset
from kinema.data.world import WorldConfig
from kinema.io.video import to_frames


def test_dataset_reads_back_exact_clips(tiny_dataset):
    ds = ShardDataset(tiny_dataset)
    assert len(ds) == 24
    meta = json.loads((tiny_dataset / "meta.json").read_text())
    cfg = WorldConfig.from_dict(meta["world"])
    for i in (0, 11, 23):
        item = ds[i]
        assert item["video"].shape == (3, 5, 32, 32)
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        frames, scene = make_clip(cfg, (3 << 32) + i)
        assert np.array_equal(to_frames(item["video"]), frames.numpy())  # round-trip error: exactly 0
        assert item["scene"]["captions"] == scene.captions == item["captions"]


def test_caption_mix_is_seeded_and_worker_independent(tiny_dataset):
    ds = ShardDataset(tiny_dataset, caption_mix={"short": 0.5, "detailed": 0.5}, seed=1)
    serial = [ds[i]["caption"] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=lambda b: [x["caption"] for x in b])
    parallel = [c for batch in loader for c in batch]
    assert serial == parallel
    assert {c == ds.rows[i]["captions"]["detailed"] for i, c in enumerate(serial)} == {True, False}


def test_synth_resumes_and_never_leaves_partial_shards(tmp_path):
    cfg = WorldConfig(frames=1, height=16, width=16)
    out = synth_dataset(tmp_path / "d", 12, cfg, seed=0, shard_size=5, progress=False)
    shard1 = out / "shards" / "shard-00001.tar"
    before = shard1.read_bytes()
    shard1.unlink()
    (out / "shards" / ".shard-00001.tar.x.tmp").write_bytes(b"half")  # what a killed writer leaves
    synth_dataset(out, 12, cfg, seed=0, shard_size=5, progress=False)
    assert shard1.read_bytes() == before
    assert len(ShardDataset(out)) == 12
    with tarfile.open(shard1) as tar:
        assert len(tar.getnames()) == 15  # 5 clips x (mp4, json, txt)


def test_synth_refuses_to_mix_settings(tmp_path):
    cfg = WorldConfig(frames=1, height=16, width=16)
    synth_dataset(tmp_path, 2, cfg, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        synth_dataset(tmp_path, 3, cfg, progress=False)
    synth_dataset(tmp_path, 3, cfg, overwrite=True, progress=False)
    assert len(ShardDataset(tmp_path)) == 3


def test_malformed_captions_line_names_file_and_line(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"key": "a", "captions": {"short": "x"}}\n{"key": "b", captions}\n')
    with pytest.raises(ValueError, match=r"captions.jsonl:2: malformed"):
        load_index(path)
    path.write_text('{"key": "a"}\n')
    with pytest.raises(ValueError, match=r"captions.jsonl:1: expected an object"):
        load_index(path)


def test_missing_dataset_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="kinema data synth"):
        ShardDataset(tmp_path)


def test_dataloader_batches(tiny_dataset):
    loader = DataLoader(ShardDataset(tiny_dataset), batch_size=8,
                        collate_fn=lambda b: torch.stack([x["video"] for x in b]))
    assert next(iter(loader)).shape == (8, 3, 5, 32, 32)
