import dataclasses

import pytest
import torch
from torch.nn.functional import avg_pool3d, scaled_dot_product_attention

from kinema.dit.model import (
    DiT,
    DiTConfig,
    deepen_state,
    deeper_block_sources,
    finer_position_scale,
    repatch_state,
)
from kinema.layers.attention import attention, rms, rms_rope
from kinema.layers.patches import (
    apply_rope,
    grid_positions,
    patchify,
    rope_angles,
    rope_cos_sin,
    token_positions,
    unpatchify,
)

TINY = DiTConfig(in_channels=4, patch=(1, 2, 2), dim=32, depth=2, heads=2, text_dim=8)


@pytest.mark.parametrize("shape, patch", [((2, 4, 3, 8, 8), (1, 2, 2)), ((1, 16, 4, 6, 10), (2, 2, 1)),
                                          ((3, 2, 5, 4, 12), (1, 4, 4)), ((1, 3, 6, 6, 6), (3, 3, 3))])
def test_patchify_unpatchify_is_identity(shape, patch):
    x = torch.randn(shape)
    tokens = patchify(x, patch)
    grid = tuple(n // p for n, p in zip(shape[2:], patch, strict=True))
    assert tokens.shape == (shape[0], grid[0] * grid[1] * grid[2], shape[1] * patch[0] * patch[1] * patch[2])
    assert torch.equal(unpatchify(tokens, patch, grid), x)


def test_patch_tokens_follow_grid_positions():
    x = torch.zeros(1, 1, 2, 4, 4)
    x[0, 0, 1, 2, 3] = 1.0  # frame 1, row 2, col 3 -> patch (1, 1, 1) with patch (1, 2, 2)
    tokens = patchify(x, (1, 2, 2))
    hot = tokens[0].abs().sum(-1).nonzero().item()
    assert grid_positions((2, 2, 2))[hot].tolist() == [1, 1, 1]


def test_indivisible_latents_are_explained():
    with pytest.raises(ValueError, match="height 5 is not divisible by the patch size 2"):
        patchify(torch.randn(1, 4, 3, 5, 4), (1, 2, 2))


def test_rope_is_relative():
    """Scores depend only on position differences: shifting every position changes nothing."""
    q, k = torch.randn(1, 1, 6, 12), torch.randn(1, 1, 6, 12)
    pos = torch.randint(0, 5, (6, 3))
    a = rope_angles(pos, 12)
    b = rope_angles(pos + torch.tensor([3, 1, 2]), 12)
    s1 = apply_rope(q, a) @ apply_rope(k, a).transpose(-1, -2)
    s2 = apply_rope(q, b) @ apply_rope(k, b).transpose(-1, -2)
    assert torch.allclose(s1, s2, atol=1e-4)
    assert torch.allclose(apply_rope(q, a).norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_rope_rotates_each_pair_by_its_angle():
    """(x1, x2) -> (x1 cos a - x2 sin a, x1 sin a + x2 cos a), the rotation itself, for every pair."""
    x = torch.randn(2, 3, 4, 12)
    angles = torch.rand(4, 6) * 6.0  # (L, Dh/2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = apply_rope(x, angles)
    assert torch.allclose(out[..., 0::2], x1 * angles.cos() - x2 * angles.sin(), atol=1e-6)
    assert torch.allclose(out[..., 1::2], x1 * angles.sin() + x2 * angles.cos(), atol=1e-6)


def _inputs(B=2, F=3, H=4, W=4, L=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 4, F, H, W, generator=g)
    t = torch.rand(B, generator=g)
    text = torch.randn(B, L, 8, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False
    return x, t, text, mask


def test_zero_initialised_dit_outputs_zeros():
    x, t, text, mask = _inputs()
    out = DiT(TINY)(x, t, text, mask)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))


def _trained_like(cfg=TINY) -> DiT:
    """A DiT with every weight random, so that all paths carry signal."""
    torch.manual_seed(1)
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def test_masked_text_tokens_do_not_change_the_output():
    model = _trained_like()
    x, t, text, mask = _inputs()
    out = model(x, t, text, mask)
    text2 = text.clone()
    text2[0, 3:] = 100.0  # only masked positions change
    assert torch.allclose(model(x, t, text2, mask), out, atol=1e-5)
    text2[0, 0] += 1.0  # an unmasked token changes the output
    assert not torch.allclose(model(x, t, text2, mask)[0], out[0], atol=1e-4)


def test_masked_text_tokens_do_not_change_the_refined_output():
    model = _trained_like(DiTConfig(**{**TINY.__dict__, "text_refiner": 2}))
    x, t, text, mask = _inputs()
    out = model(x, t, text, mask)
    text2 = text.clone()
    text2[0, 3:] = 100.0  # the refiner's self-attention must mask padding too
    assert torch.allclose(model(x, t, text2, mask), out, atol=1e-5)


def test_without_the_pooled_prompt_the_text_enters_through_cross_attention_only():
    model = _trained_like(DiTConfig(**{**TINY.__dict__, "pooled_text": False}))
    assert model.text_embedder.pool_proj is None
    x, t, text, mask = _inputs()
    out = model(x, t, text, mask)
    for block in model.blocks:  # cut cross-attention: the prompt no longer reaches the output at all
        block.cross_attn.proj.weight.data.zero_()
        block.cross_attn.proj.bias.data.zero_()
    cut = model(x, t, text, mask)
    assert not torch.allclose(cut, out, atol=1e-4)
    assert torch.allclose(model(x, t, text + 1.0, mask), cut, atol=1e-6)


def test_a_new_text_refiner_is_the_identity():
    """Zero-initialised output projections: adding a refiner to trained weights changes nothing until it trains."""
    plain = _trained_like()
    refined = DiT(DiTConfig(**{**TINY.__dict__, "text_refiner": 1})).eval()
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert all(k.startswith("text_embedder.refiner.") for k in missing) and missing and not unexpected
    x, t, text, mask = _inputs()
    assert torch.allclose(refined(x, t, text, mask), plain(x, t, text, mask), atol=1e-6)


JOINT = DiTConfig(**{**TINY.__dict__, "joint_attention": True})


def test_joint_attention_masks_padding_and_sizes_stay_independent():
    model = _trained_like(JOINT)
    x, t, text, mask = _inputs()
    out = model(x, t, text, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    text2 = text.clone()
    text2[0, 3:] = 100.0  # padding is masked as keys of the joint attention, in both streams
    assert torch.allclose(model(x, t, text2, mask), out, atol=1e-5)
    text2[0, 0] += 1.0
    assert not torch.allclose(model(x, t, text2, mask)[0], out[0], atol=1e-4)
    assert torch.allclose(model(x[1:], t[1:], text[1:], mask[1:]), out[1:], atol=1e-5)


def test_joint_attention_updates_the_prompt_with_the_video():
    """MM-DiT: after a block, the prompt's tokens depend on the video (cross-attention never changes them); the last
    block has no prompt output, so every weight gets a gradient (DDP needs no unused parameters)."""
    model = _trained_like(JOINT)
    x, t, text, mask = _inputs()
    seen = []
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.append(out[1]))
    model(x, t, text, mask)
    model(x + 1.0, t, text, mask)
    assert not torch.allclose(seen[0], seen[1], atol=1e-4)
    assert not hasattr(model.blocks[-1], "text_mlp")
    model.train()
    model(x, t, text, mask).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_zero_initialised_joint_dit_outputs_zeros_and_keeps_the_prompt():
    model = DiT(JOINT)
    x, t, text, mask = _inputs()
    assert torch.equal(model(x, t, text, mask), torch.zeros_like(x))
    seen = []
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.append((args[3], out[1])))
    model(x, t, text, mask)
    assert torch.equal(*seen[0])  # the prompt stream's gates start at zero too: each block starts as the identity


@pytest.mark.parametrize("L, Lk, masked", [(20, 20, False), (20, 7, True)])
def test_explicit_cpu_attention_matches_sdpa_in_bf16(L, Lk, masked):
    """The bf16 CPU path (matmul -> softmax -> matmul) computes what SDPA does, forward and gradients."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, requires_grad=True) for n in (L, Lk, Lk))
    mask = (torch.arange(Lk) < Lk - 2).expand(2, 1, 1, Lk) if masked else None
    grads = []
    for fn in (attention, lambda *a: scaled_dot_product_attention(*a[:3], attn_mask=a[3])):
        out = fn(*(x.bfloat16() for x in (q, k, v)), mask)
        (out.float() * torch.linspace(-1, 1, 16)).sum().backward()
        grads.append([out.float()] + [x.grad.clone() for x in (q, k, v)])
        for x in (q, k, v):
            x.grad = None
    for ours, reference in zip(*grads, strict=True):
        assert torch.allclose(ours, reference, atol=3e-2, rtol=3e-2)
    if masked:  # masked keys get no gradient through the values
        assert grads[0][3][..., Lk - 2:, :].abs().max() == 0


def test_written_out_rms_norm_and_the_folded_rope_match_torch():
    norm = torch.nn.RMSNorm(12, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, angles = torch.randn(2, 3, 4, 12), torch.rand(4, 6) * 6.0
    assert torch.allclose(rms(norm, x, 0.25), norm(x) * 0.25, atol=1e-6)
    rope = rope_cos_sin(angles)
    assert torch.allclose(rms_rope(norm, x, rope, 0.25), apply_rope(norm(x) * 0.25, rope), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rotate", [False, True])
def test_hand_written_norm_rope_backward_matches_autograd(dtype, rotate):
    """rms / rms_rope have their own backward: the gradients of x (a strided view, as q from qkv is) and of the
    norm's weight match autograd through nn.RMSNorm + apply_rope, in float32 and in bf16."""
    torch.manual_seed(0)
    norm = torch.nn.RMSNorm(12, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    base, angles = torch.randn(2, 4, 3, 3, 12) * 3, torch.rand(4, 6) * 6.0
    rope = rope_cos_sin(angles)
    upstream = torch.randn(2, 3, 4, 12)
    results = []
    for ours in (True, False):
        xb = base.to(dtype).requires_grad_(True)
        x = xb.permute(2, 0, 3, 1, 4)[1]  # (2, 3, 4, 12), not contiguous
        if ours:
            out = rms_rope(norm, x, rope, 0.25) if rotate else rms(norm, x, 0.25)
        else:
            ref = norm(x.float()) * 0.25
            out = apply_rope(ref, rope) if rotate else ref
        (out.float() * upstream).sum().backward()
        results.append((out.float(), xb.grad.float(), norm.weight.grad.clone()))
        norm.weight.grad = None
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=tol * b.abs().max().item(), rtol=tol)


def test_dit_takes_variable_sizes_and_batches_are_independent():
    model = _trained_like()
    for F, H, W in [(1, 2, 2), (5, 4, 6), (2, 8, 4)]:
        x, t, text, mask = _inputs(F=F, H=H, W=W)
        out = model(x, t, text, mask)
        assert out.shape == x.shape
        assert torch.allclose(model(x[1:], t[1:], text[1:], mask[1:]), out[1:], atol=1e-5)


def test_frame_conditioning_changes_the_output_only_when_given():
    model = _trained_like()
    x, t, text, mask = _inputs()
    none = model(x, t, text, mask)
    zeros = model(x, t, text, mask, cond=torch.randn_like(x), cond_mask=torch.zeros_like(x[:, :1]))
    assert torch.allclose(none, zeros, atol=1e-6)
    cond_mask = torch.zeros_like(x[:, :1])
    cond_mask[:, :, 0] = 1
    assert not torch.allclose(model(x, t, text, mask, cond=torch.randn_like(x), cond_mask=cond_mask), none)


def test_config_errors_teach():
    with pytest.raises(ValueError, match="dim 30 must be divisible by heads 4"):
        DiTConfig(dim=30, heads=4)


def test_token_positions_at_scale_one_are_the_grid():
    assert torch.equal(token_positions((2, 3, 4)), grid_positions((2, 3, 4)).double())
    half = token_positions((1, 4, 4), spatial_scale=0.5)  # 2x2 patches measured in 4x4 ones, centre to centre
    assert half[:4, 2].tolist() == [-0.25, 0.25, 0.75, 1.25]


def _random_dit(cfg: DiTConfig) -> DiT:
    model = DiT(cfg)
    for p in model.parameters():  # adaLN-Zero starts every branch at zero: make each one matter
        p.data.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("patch, finer", [((1, 4, 4), (1, 2, 2)), ((1, 2, 2), (1, 1, 1)), ((2, 4, 4), (2, 1, 1))])
def test_repatched_model_computes_the_old_one_on_the_upsampled_latent(patch, finer):
    """The finer-patch start is exact: on a latent upsampled r times (nearest), at the new positions, the old
    weights give (after r x r averaging) what the converted ones give on the latent itself."""
    torch.manual_seed(0)
    old = DiTConfig(in_channels=4, patch=patch, dim=48, depth=2, heads=4, text_dim=8, abs_pos=True, rope_theta=100)
    model = _random_dit(old)
    new = dataclasses.replace(old, patch=finer, position_scale=finer_position_scale(old, finer))
    r = patch[1] // finer[1]
    assert new.patch == finer and new.position_scale == 1 / r
    converted = DiT(new).eval()
    converted.load_state_dict(repatch_state(model.state_dict(), old, new))
    at_new_positions = DiT(dataclasses.replace(old, position_scale=new.position_scale)).eval()
    at_new_positions.load_state_dict(model.state_dict())

    x, t = torch.randn(2, 4, 2 * patch[0], 2 * finer[1], 2 * finer[2]), torch.rand(2)
    text, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    cond_mask = torch.zeros(2, 1, *x.shape[2:])
    cond_mask[:, :, :patch[0]] = 1  # the first frames given: their channels are converted too
    up = lambda v: v.repeat_interleave(r, -1).repeat_interleave(r, -2)  # noqa: E731
    with torch.no_grad():
        expected = avg_pool3d(at_new_positions(up(x), t, text, mask, up(x), up(cond_mask)), (1, r, r))
        got = converted(x, t, text, mask, x, cond_mask)
    assert torch.allclose(got, expected, atol=1e-4)


def test_a_patch_that_does_not_divide_the_old_one_is_refused():
    old = DiTConfig(in_channels=4, patch=(1, 4, 4), dim=32, depth=1, heads=2, text_dim=8)
    for bad in [(1, 3, 3), (1, 8, 8), (1, 2, 1), (2, 2, 2)]:
        with pytest.raises(ValueError, match="divides its own"):
            finer_position_scale(old, bad)


def test_dit_train_continues_a_model_with_finer_patches(tiny_model_dir, tiny_latents):
    """`dit train --init-from MODEL --patch` finer than MODEL's: the run's model is MODEL's with the finer
    patch and old-unit positions, started from the converted weights."""
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.io.weights import load_config, load_weights
    from kinema.presets import DIT_PRESETS
    from kinema.train.dit_task import DiTTask

    stored = DiTConfig(**load_config(tiny_model_dir, "dit"))
    finer = (stored.patch[0], stored.patch[1] // 2, stored.patch[2] // 2)
    task = DiTTask(LatentDataset(tiny_latents), dataclasses.replace(DIT_PRESETS["tiny"](), patch=finer),
                   FlowObjective(), batch_size=2, init_from=tiny_model_dir)
    assert task.model_cfg == dataclasses.replace(stored, patch=finer, position_scale=0.5)
    model = task.build_model()
    state, _ = load_weights(tiny_model_dir, "dit")
    assert torch.equal(model.x_embedder.weight, repatch_state(state, stored, task.model_cfg)["x_embedder.weight"])
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_a_deepened_model_computes_the_old_one_and_its_added_blocks_learn(depth):
    """Blocks added by deepen_state are silent copies: the output is the old model's exactly, and the loss
    reaches every added block's modulation (its gates) from the first step."""
    torch.manual_seed(0)
    old = DiTConfig(in_channels=4, patch=(1, 2, 2), dim=32, depth=2, heads=2, text_dim=8, frame_conditioning=True)
    model = _random_dit(old)
    deeper = DiT(dataclasses.replace(old, depth=depth)).eval()
    deeper.load_state_dict(deepen_state(model.state_dict(), old, depth))
    x, t = torch.randn(2, 4, 3, 4, 4), torch.rand(2)
    text, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    cond, cond_mask = torch.randn_like(x), torch.zeros(2, 1, 3, 4, 4)
    cond_mask[:, :, 0] = 1
    with torch.no_grad():
        assert torch.allclose(deeper(x, t, text, mask, cond, cond_mask), model(x, t, text, mask, cond, cond_mask),
                              atol=1e-5)
    deeper(x, t, text, mask, cond, cond_mask).square().mean().backward()
    sources = deeper_block_sources(old.depth, depth)
    added = [j for j in range(1, depth) if sources[j] == sources[j - 1]]
    assert len(added) == depth - old.depth
    for j in added:
        assert deeper.blocks[j].adaLN_modulation[-1].weight.grad.abs().sum() > 0
        assert deeper.blocks[j].cross_attn.proj.weight.grad.abs().sum() > 0


def test_deeper_block_sources_spread_the_copies_and_refuse_fewer_blocks():
    assert deeper_block_sources(4, 4) == [0, 1, 2, 3]
    assert deeper_block_sources(4, 6) == [0, 0, 1, 2, 2, 3]
    assert deeper_block_sources(4, 8) == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="at least as many blocks"):
        deeper_block_sources(4, 3)
    joint = DiTConfig(in_channels=4, patch=(1, 2, 2), dim=32, depth=2, heads=2, text_dim=8, joint_attention=True)
    with pytest.raises(ValueError, match="joint attention"):
        deepen_state(DiT(joint).state_dict(), joint, 3)


def test_dit_train_continues_a_model_with_more_blocks(tiny_model_dir, tiny_latents):
    """`dit train --init-from MODEL --depth` deeper than MODEL's: the run's model predicts what MODEL does."""
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.io.weights import load_config, load_weights
    from kinema.presets import DIT_PRESETS
    from kinema.train.dit_task import DiTTask

    stored = DiTConfig(**load_config(tiny_model_dir, "dit"))
    data = LatentDataset(tiny_latents)
    cfg = dataclasses.replace(DIT_PRESETS["tiny"](), depth=stored.depth + 2)
    model = DiTTask(data, cfg, FlowObjective(), batch_size=2, init_from=tiny_model_dir).build_model().eval()
    original = DiT(stored).eval()
    original.load_state_dict(load_weights(tiny_model_dir, "dit")[0])
    x, t = torch.randn(1, stored.in_channels, 3, 8, 8), torch.tensor([0.7])
    text, mask = torch.randn(1, 4, stored.text_dim), torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(model(x, t, text, mask), original(x, t, text, mask), atol=1e-5)
    assert len(model.blocks) == stored.depth + 2
    with pytest.raises(ValueError, match="dit.json: a model of depth .* at least as many blocks"):
        fewer = dataclasses.replace(cfg, depth=stored.depth - 1)
        DiTTask(data, fewer, FlowObjective(), batch_size=2, init_from=tiny_model_dir).build_model()


def test_a_finer_patch_run_with_other_sizes_names_the_weights_that_do_not_fit(tiny_model_dir, tiny_latents):
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.io.weights import load_config
    from kinema.presets import DIT_PRESETS
    from kinema.train.dit_task import DiTTask

    stored = DiTConfig(**load_config(tiny_model_dir, "dit"))
    data = LatentDataset(tiny_latents)
    wider = dataclasses.replace(DIT_PRESETS["tiny"](), patch=(1, 1, 1), dim=2 * stored.dim)
    with pytest.raises(ValueError, match="dit.safetensors: .* has shape"):
        DiTTask(data, wider, FlowObjective(), batch_size=2, init_from=tiny_model_dir).build_model()
    with pytest.raises(ValueError, match="divides its own"):
        DiTTask(data, dataclasses.replace(DIT_PRESETS["tiny"](), patch=(1, 2, 1)), FlowObjective(), batch_size=2,
                init_from=tiny_model_dir)
