"""Cross-attention grounding (train/grounding.py): targets from the world's scenes, the loss, and the training task."""

from __future__ import annotations

import pytest
import torch

from kinema.data.world import ObjectSpec, Scene
from kinema.layers.attention import kept_cross_attention
from kinema.train.grounding import clause_objects, grounding_loss, object_token_masks

GROUPS = [range(0, 1), range(1, 5), range(5, 9)]  # 9 pixel frames, x4 time (causal): 3 latent frames


def _scene(*objects: ObjectSpec) -> Scene:
    return Scene("black", list(objects), frames=9, height=32, width=32, fps=8)


def _obj(color: str, shape: str, start: tuple[float, float], motion: str = "still", speed: str | None = None,
         radius: float = 3.0) -> ObjectSpec:
    return ObjectSpec(shape, color, "small", motion, speed, start, radius)


def test_token_masks_follow_the_object_over_the_latent_frames():
    # 32x32 px, x4 space, patch 1x2x2: tokens of 8x8 px, a 4x4 grid per latent frame
    still = _obj("red", "square", (4.0, 4.0))  # inside token (0, 0)
    mover = _obj("blue", "circle", (28.0, 20.0), motion="left", speed="quickly")  # row 2, drifting left
    masks = object_token_masks(_scene(still, mover), GROUPS, spatial=4, patch=(1, 2, 2))
    assert masks.shape == (2, 3 * 16)
    grid = masks.view(2, 3, 4, 4)
    assert grid[0].nonzero().tolist() == [[f, 0, 0] for f in range(3)]  # one token, every frame
    cols = [set(grid[1, f].nonzero()[:, 1].tolist()) for f in range(3)]
    assert 3 in cols[0] and min(cols[2]) < min(cols[0])  # starts at the right, ends further left
    assert all(set(grid[1, f].nonzero()[:, 0].tolist()) <= {2} for f in range(3))  # stays in its row


def test_clauses_are_matched_to_their_objects_by_color_then_shape():
    scene = _scene(_obj("red", "square", (4, 4)), _obj("blue", "circle", (20, 20)))
    assert clause_objects("a small blue ball heading left and a tiny red box standing still, on a black backdrop",
                          scene) == [1, 0, -1]
    assert clause_objects("two objects: a circle that stays still, plus a red square", scene) == [-1, 1, 0]
    assert clause_objects("2 objects", scene) == [-1]
    twins = _scene(_obj("red", "square", (4, 4)), _obj("blue", "square", (20, 20)))
    assert clause_objects("a square, and a blue square", twins) == [-1, 1]  # a shape two objects have: unmatched


def _kept(attn_on: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One layer whose single head sends each video token's attention to the keys in attn_on (L, 1 + Lt) as
    logits (0 or -30): q = attn_on rows, k = identity."""
    L, Lk = attn_on.shape
    q = (attn_on * 30.0 - 30.0)[None, None]  # (1, 1, L, Lk): q . k_j = the logit of key j
    k = torch.eye(Lk)[None, None]
    return [(q, k, torch.ones(1, Lk, dtype=torch.bool))]


def test_loss_is_zero_when_a_clause_is_read_only_on_its_object_and_grows_with_attention_elsewhere():
    L, Lt = 6, 3  # 6 video tokens; text: two words and one clause token (position 2), null key in front
    owner = torch.tensor([[-1, -1, 0]])
    masks = torch.tensor([[[True, True, False, False, False, False]]])  # object 0 on tokens 0, 1
    on_object = torch.zeros(L, 1 + Lt)
    on_object[:2, 3] = 1  # tokens 0, 1 read the clause token
    on_object[2:, 0] = 1  # the rest read the null token
    assert grounding_loss(_kept(on_object), owner, masks).item() == pytest.approx(0.0, abs=1e-6)
    everywhere = torch.zeros(L, 1 + Lt)
    everywhere[:, 3] = 1  # every token reads the clause: 2 of 6 on the object
    assert grounding_loss(_kept(everywhere), owner, masks).item() == pytest.approx((1 - 2 / 6) ** 2, abs=1e-4)
    elsewhere = torch.zeros(L, 1 + Lt)
    elsewhere[2:, 3] = 1
    elsewhere[:2, 0] = 1
    assert grounding_loss(_kept(elsewhere), owner, masks).item() == pytest.approx(1.0, abs=1e-4)
    assert grounding_loss(_kept(everywhere), torch.full((1, Lt), -1), masks).item() == 0.0  # nothing grounded


def test_kept_cross_attention_records_every_block_only_inside():
    from kinema.dit.model import DiT, DiTConfig

    model = DiT(DiTConfig(in_channels=4, patch=(1, 2, 2), dim=32, depth=3, heads=2, text_dim=8,
                          frame_conditioning=False))
    x, t = torch.randn(2, 4, 2, 8, 8), torch.rand(2)
    text, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    with kept_cross_attention(model) as kept:
        model(x, t, text, mask)
    assert len(kept) == 3
    q, k, key_mask = kept[0]
    assert q.shape == (2, 2, 2 * 4 * 4, 16) and k.shape == (2, 2, 6, 16) and key_mask.shape == (2, 6)
    model(x, t, text, mask)
    assert len(kept) == 3  # nothing recorded after the block


@pytest.fixture(scope="module")
def clause_latents(tiny_latents, tmp_path_factory):
    from kinema.encode import reencode_text

    return reencode_text(tiny_latents, tmp_path_factory.mktemp("clauses"), "minilm:0,6+clauses", progress=False)


def test_the_task_grounds_each_clause_token_and_the_loss_trains_the_cross_attention(clause_latents):
    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_PRESETS
    from kinema.train.distributed import DistInfo
    from kinema.train.dit_task import DiTTask

    data = LatentDataset(clause_latents)
    task = DiTTask(data, DIT_PRESETS["tiny"](), FlowObjective(), batch_size=8, caption_dropout=0.0,
                   caption_mix={"medium": 1.0}, grounding_weight=0.5)
    batch = task.batch(0, 0, DistInfo())
    owner = batch["ground_owner"]
    for b in range(8):  # every object of every clip has its clause token, the last real tokens of the text
        grounded = (owner[b] >= 0).nonzero().flatten()
        n_objects = int(batch["ground_masks"][b].any(-1).sum())
        assert sorted(owner[b, grounded].tolist()) == list(range(n_objects))
        assert batch["text_mask"][b, grounded].all()
    model = task.build_model()
    loss, metrics = task.loss(model, batch, torch.Generator().manual_seed(0))
    assert 0 < metrics["grounding"] <= 1
    assert loss.item() == pytest.approx((metrics["flow_loss"] + 0.5 * metrics["grounding"]).item(), rel=1e-5)
    loss.backward()
    assert model.blocks[0].cross_attn.q.weight.grad.abs().sum() > 0
    assert "grounding_weight" in task.model_config()


def test_grounding_needs_the_source_scenes(clause_latents, tmp_path):
    import json
    import shutil

    from kinema.data.latents import LatentDataset
    from kinema.diffusion.objectives import FlowObjective
    from kinema.presets import DIT_PRESETS
    from kinema.train.distributed import DistInfo
    from kinema.train.dit_task import DiTTask

    moved = shutil.copytree(clause_latents, tmp_path / "latents")
    meta = json.loads((moved / "meta.json").read_text())
    (moved / "meta.json").write_text(json.dumps(meta | {"source": str(tmp_path / "gone")}))
    task = DiTTask(LatentDataset(moved), DIT_PRESETS["tiny"](), FlowObjective(), batch_size=4, grounding_weight=1.0)
    with pytest.raises(ValueError, match="grounding needs each clip's scene"):
        task.batch(0, 0, DistInfo())
