"""Cross-attention grounding: each object's clause token should be read where that object is.

TokenCompose (Wang et al., CVPR 2024) supervises a text-to-image model's cross-attention with object masks: the
attention a noun token receives should fall inside its object's mask. The shapes world gives those masks
exactly, and clause tokens (`minilm:...+clauses`, one token per object phrase) give each object one token, so the
same supervision applies: for the clause token k of object o, over the video tokens n of one sample,

    A_n  = mean over heads of softmax over keys (q_n . k_k)     (the share of token n's attention that clause k gets)
    L_k  = (1 - sum_{n in mask_o} A_n / sum_n A_n) ** 2          (zero when all of clause k's attention is on o)

averaged over the grounded clauses of the batch and over the blocks (TokenCompose's L_token). A model whose
clause token for "a small red circle" is read only by the tokens where that circle is has bound the words to one
place, which is what a prompt drawn as two copies of one object (or one object for two) lacks.

    targets = GroundingTargets.from_dataset(dataset, frame_groups, spatial, patch)   # the clips' scenes, once
    ground = targets.batch(indices, captions, text_mask)              # per sample: object of each text token + masks
    with kept_cross_attention(model) as kept:
        loss = objective.loss(model, ...)
    loss = loss + weight * grounding_loss(kept, *ground)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kinema.data.captions import parse_caption
from kinema.data.latents import LatentDataset
from kinema.data.shards import ShardDataset
from kinema.data.world import Scene, object_coverage
from kinema.layers.attention import attention_shares
from kinema.text.encoder import clause_token_positions, split_clauses

# ---------------------------------------------------------------------------------------------------
# Targets: which text token names which object, and where that object is on the token grid
# ---------------------------------------------------------------------------------------------------


def object_token_masks(scene: Scene, frame_groups: list[range], spatial: int, patch: tuple[int, int, int],
                       min_pixels: float = 4.0) -> torch.Tensor:
    """(n_objects, L) bool: the video tokens where each object is, in patchify's (f h w) order. A token is the
    object's when at least `min_pixels` pixels of it are covered in one of its pixel frames (`frame_groups[j]`: the
    pixel frames latent frame j covers; `spatial`: pixels per latent position)."""
    pt, ph, pw = patch
    th, tw = ph * spatial, pw * spatial  # a token's pixels
    groups = [sum((list(frame_groups[j]) for j in range(f, f + pt)), []) for f in range(0, len(frame_groups), pt)]
    masks = []
    for obj in scene.objects:
        cover = object_coverage(obj, scene.frames, scene.height, scene.width)  # (F, H, W) in [0, 1]
        per_frame = cover.unflatten(1, (-1, th)).unflatten(3, (-1, tw)).sum((2, 4))  # (F, H/th, W/tw) pixels
        tokens = torch.stack([per_frame[g].amax(0) for g in groups])  # (f, h, w): most covered frame of each
        masks.append(tokens.flatten() >= min_pixels)
    return torch.stack(masks) if masks else torch.zeros(0, len(groups) * (scene.height // th) * (scene.width // tw),
                                                        dtype=torch.bool)


def clause_objects(caption: str, scene: Scene) -> list[int]:
    """For each clause of the caption (text.encoder.split_clauses, as the clause tokens were made), the index of
    the scene object it describes, or -1 (the background clause, "3 objects", a clause naming no object or one the
    scene does not single out). An object is matched by its color (distinct within a scene), else its shape if only
    one object has it."""
    out = []
    for clause in split_clauses(caption):
        found = parse_caption(clause).objects
        match = -1
        if len(found) == 1:
            said = found[0]
            by_color = [i for i, o in enumerate(scene.objects) if said.color and o.color == said.color]
            by_shape = [i for i, o in enumerate(scene.objects) if said.shape and o.shape == said.shape]
            if len(by_color) == 1:
                match = by_color[0]
            elif not said.color and len(by_shape) == 1:
                match = by_shape[0]
        out.append(match)
    return out


@dataclass
class GroundingTargets:
    scenes: list[Scene]  # dataset order
    frame_groups: list[range]
    spatial: int
    patch: tuple[int, int, int]
    # per clip, computed on first use: every epoch draws the same clips again
    _masks: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _clauses: dict[tuple[int, str], list[int]] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_dataset(cls, data: LatentDataset, frame_groups: list[range], spatial: int,
                     patch: tuple[int, int, int]) -> GroundingTargets:
        """The scenes of a latent cache's clips, read from its source dataset; a clear error where the source is
        not a shapes-world dataset (`kinema data synth`: each clip's record is its Scene)."""
        source = data.meta.get("source")
        meta = Path(source, "meta.json") if source else None
        kind = json.loads(meta.read_text()).get("kind") if meta and meta.exists() else None
        if kind != "shapes-world":
            raise ValueError(f"{data.root}: grounding needs each clip's scene (objects and their paths) from the "
                             f"source dataset {source!r}, which is {'missing' if kind is None else repr(kind)}; only "
                             "shapes-world datasets (`kinema data synth`) have them")
        shards = ShardDataset(source)
        return cls([Scene.from_dict(shards.scene(r["key"])) for r in data.rows], frame_groups, spatial, tuple(patch))

    def _token_masks(self, i: int) -> torch.Tensor:
        if i not in self._masks:
            self._masks[i] = object_token_masks(self.scenes[i], self.frame_groups, self.spatial, self.patch)
        return self._masks[i]

    def _clause_objects(self, i: int, caption: str) -> list[int]:
        if (i, caption) not in self._clauses:
            self._clauses[i, caption] = clause_objects(caption, self.scenes[i])
        return self._clauses[i, caption]

    def batch(self, indices: list[int], captions: list[str], text_mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lt) long: the scene object each text token is the clause token of, -1 for the rest (word tokens,
        padding, dropped captions); (B, n_max, L) bool: each object's video tokens. The clause tokens of a caption
        are the last of its unmasked tokens, one per clause (text.encoder puts them after the words)."""
        B, Lt = text_mask.shape
        owner = torch.full((B, Lt), -1, dtype=torch.long)
        masks = [self._token_masks(i) for i in indices]
        n_max = max(1, max(len(m) for m in masks))
        token_masks = torch.zeros(B, n_max, masks[0].shape[-1], dtype=torch.bool)
        for b, (i, caption) in enumerate(zip(indices, captions, strict=True)):
            token_masks[b, :len(masks[b])] = masks[b]
            objects = self._clause_objects(i, caption)
            positions = clause_token_positions(text_mask[b], len(objects))  # [] for a dropped caption
            for position, obj in zip(positions, objects if positions else [], strict=True):
                owner[b, position] = obj
        return owner, token_masks


# ---------------------------------------------------------------------------------------------------
# The attention the clause tokens receive, and the loss
# ---------------------------------------------------------------------------------------------------


def grounding_loss(kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], owner: torch.Tensor,
                   token_masks: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token loss over the kept cross-attention layers: mean over layers and grounded clause tokens
    of (1 - the share of the clause token's attention that falls on its object's tokens) ** 2. `owner` (B, Lt) and
    `token_masks` (B, n, L) are GroundingTargets.batch's; the keys carry the null token in front of the text."""
    b_idx, t_idx = (owner >= 0).nonzero(as_tuple=True)  # the grounded clause tokens
    if not kept or len(b_idx) == 0:
        return owner.new_zeros((), dtype=torch.float32)
    inside = token_masks[b_idx, owner[b_idx, t_idx]].float()  # (G, L)
    losses = []
    for q, k, key_mask in kept:
        # (G, L): what each grounded clause token gets from each video token
        received = attention_shares(q, k, key_mask)[b_idx, :, t_idx + 1]
        share = (received * inside).sum(-1) / received.sum(-1).clamp_min(1e-12)
        losses.append((1 - share).square().mean())
    return torch.stack(losses).mean()
