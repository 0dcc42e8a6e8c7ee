"""LoRA: parameter count, a zero-initialised adapter changes nothing, merging equals applying, and the
finetune -> generate --lora -> lora merge path on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kinema.cli import main
from kinema.dit.model import DiT, DiTConfig
from kinema.layers.lora import DEFAULT_TARGETS, LoRALinear, add_lora, lora_modules, merge_lora

CFG = DiTConfig(in_channels=4, patch=(1, 2, 2), dim=32, depth=2, heads=2, text_dim=16, abs_pos=True)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 3, 8, 8, generator=g)
    return x, torch.rand(2, generator=g), torch.randn(2, 5, 16, generator=g), torch.ones(2, 5, dtype=torch.bool)


@pytest.mark.parametrize("rank", [1, 4, 8])
def test_lora_has_the_expected_parameter_count(rank):
    torch.manual_seed(0)
    model = DiT(CFG)
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("blocks.") and n.endswith(DEFAULT_TARGETS)}
    add_lora(model, rank)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(rank * (m.in_features + m.out_features) for m in linears.values())
    assert set(lora_modules(model)) == set(linears)  # attention (self and cross) and MLP of every block
    assert len(linears) == CFG.depth * len(DEFAULT_TARGETS)


def test_a_zero_initialised_adapter_leaves_outputs_unchanged():
    torch.manual_seed(0)
    model = DiT(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # past adaLN-Zero's zero init, so the blocks matter
        before = model(*_inputs())
        add_lora(model, 4)
        after = model(*_inputs())
    assert torch.equal(before, after)


def test_merging_equals_applying():
    torch.manual_seed(0)
    model = DiT(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        add_lora(model, 4, alpha=8)
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.05)
        applied = model(*_inputs())
        merged = merge_lora(model)(*_inputs())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(merged, applied, atol=1e-5, rtol=1e-4)


def test_finetune_generate_and_merge_on_a_tiny_model(tiny_model_dir, tiny_latents, tmp_path, capsys):
    run = tmp_path / "lora"
    assert main(["dit", "finetune", "--lora", "4", "--model", str(tiny_model_dir), "--latents", str(tiny_latents),
                 "--out", str(run), "--steps", "4", "--batch-size", "4", "--no-bf16"]) == 0
    assert (run / "adapter.safetensors").exists() and "parameters" in capsys.readouterr().out
    assert (run / "adapter.safetensors").stat().st_size < (tiny_model_dir / "dit.safetensors").stat().st_size
    common = ["--model", str(tiny_model_dir), "--steps", "2", "--no-expand", "--fp32", "--seed", "1"]
    assert main(["generate", "a red circle", *common, "--lora", str(run), "-o", str(tmp_path / "a.gif")]) == 0
    assert main(["lora", "merge", "--model", str(tiny_model_dir), "--lora", str(run),
                 "--out", str(tmp_path / "merged")]) == 0
    common[1] = str(tmp_path / "merged")
    assert main(["generate", "a red circle", *common, "-o", str(tmp_path / "b.gif")]) == 0
    from kinema.io.video import read_video

    a, b = read_video(tmp_path / "a.gif"), read_video(tmp_path / "b.gif")
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0  # merge == apply, through the whole pipeline


def test_an_adapter_only_fits_the_weights_it_was_trained_on(tiny_model_dir, tiny_latents, tmp_path, capsys):
    import shutil

    from kinema.io.weights import load_weights, save_weights

    run = tmp_path / "lora"
    assert main(["dit", "finetune", "--lora", "2", "--model", str(tiny_model_dir), "--latents", str(tiny_latents),
                 "--out", str(run), "--steps", "2", "--batch-size", "4"]) == 0
    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    state, cfg = load_weights(other, "dit")
    save_weights(other, "dit", {k: v + 0.01 for k, v in state.items()}, cfg)
    capsys.readouterr()
    assert main(["generate", "a red circle", "--model", str(other), "--lora", str(run), "--steps", "1",
                 "-o", str(tmp_path / "x.mp4")]) == 2
    assert "adapter only fits" in capsys.readouterr().err


def test_a_cache_encoded_for_another_text_encoder_is_refused_and_encode_defaults_to_the_models(
        tiny_model_dir, tiny_dataset, tiny_latents, tmp_path, capsys):
    import json
    import shutil

    from kinema.model_index import read_model_index, write_model_index

    clauses = shutil.copytree(tiny_model_dir, tmp_path / "clauses")  # the same DiT, prompts read with clause tokens
    write_model_index(clauses, read_model_index(clauses).replace(text_encoder="minilm:0,6+clauses"))
    assert main(["dit", "finetune", "--lora", "2", "--model", str(clauses), "--latents", str(tiny_latents),
                 "--out", str(tmp_path / "lora"), "--steps", "1", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "'minilm:0,6'" in err and "minilm:0,6+clauses" in err and "vae encode" in err
    # `vae encode --vae MODEL_FOLDER` captions with the folder's own text encoder unless told otherwise
    out = tmp_path / "latents"
    assert main(["vae", "encode", "--vae", str(clauses), "--data", str(tiny_dataset), "--out", str(out)]) == 0
    assert json.loads((out / "meta.json").read_text())["text_encoder"] == "minilm:0,6+clauses"
