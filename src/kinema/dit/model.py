"""Diffusion Transformer over spacetime patches of video latents (Peebles & Xie's DiT, for video).

    x_t (B, C, F, H, W) --patchify--> tokens (B, L, D) --N x DiTBlock--> final layer --unpatchify--> (B, C, F, H, W)

Each block: self-attention over all spacetime tokens (QK-norm, 3D RoPE; `attention` picks the fastest
kernel for the device), cross-attention to the prompt's tokens (padding masked out; a learned null token is
always present, so a dropped caption is "attend to nothing"), and an MLP; timestep + pooled prompt (unless
`pooled_text` is off) condition every block through adaLN-Zero. With `joint_attention` the blocks are MM-DiT
blocks instead (SD3): the prompt tokens are a second stream with their own weights, and one attention over both
streams replaces cross-attention, so words are updated by the video as well as read by it.
Optional frame conditioning (image-to-video, extension, editing) concatenates known latent frames and
their mask to the input channels: one model, one sampler, many tasks.

The model is called as `model(x_t, t, text=..., text_mask=..., cond=..., cond_mask=...)` with t in [0, 1]
(the noise level of the objective); objectives and samplers never import this class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kinema.layers.attention import CrossAttention, attention, rms, rms_rope
from kinema.layers.embedders import TextEmbedder, TimestepEmbedder, gated, modulate, with_frame_condition
from kinema.layers.patches import (
    patchify,
    rope_angles,
    rope_cos_sin,
    sincos_3d,
    token_grid,
    token_positions,
    unpatchify,
)

# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 16  # latent channels
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw)
    dim: int = 384
    depth: int = 8
    heads: int = 6
    mlp_ratio: float = 4.0
    text_dim: int = 384
    frame_conditioning: bool = True  # extra input channels for known frames + their mask
    rope_theta: float = 10000.0
    abs_pos: bool = False  # also add fixed 3D sin/cos positions to the tokens (DiT's absolute embedding)
    text_refiner: int = 0  # trainable transformer layers over the prompt tokens before the blocks read them
    # the mean prompt vector in adaLN's condition, beside the timestep. It is a bag of words: every token gets the
    # same one, so it can say "a triangle and a ball" but not which object is which; without it the prompt enters
    # through cross-attention only (PixArt-alpha), where each video token reads the words of its own object
    pooled_text: bool = True
    # MM-DiT (SD3): the prompt tokens are a second stream with their own weights, and one attention runs over video
    # and prompt tokens together in every block, so the words are updated by the video they describe as well as
    # read by it (replaces cross-attention)
    joint_attention: bool = False
    # height/width token positions (RoPE and abs_pos) counted in patches 1/position_scale times this one's size: 1
    # for a model trained on its own patch; 0.5 when a 1x4x4 model is continued with 1x2x2 patches (`repatch_state`),
    # so its attention keeps the distances it learned (position interpolation, as when LLMs extend their context)
    position_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", tuple(self.patch))
        if self.dim % self.heads:
            raise ValueError(f"DiTConfig: dim {self.dim} must be divisible by heads {self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"DiTConfig: head dim {self.dim // self.heads} must be even for RoPE")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"DiTConfig: patch must be three sizes >= 1 (pt, ph, pw), got {self.patch}")
        if not self.position_scale > 0:
            raise ValueError(f"DiTConfig: position_scale must be > 0, got {self.position_scale}")
        if min(self.depth, self.in_channels, self.text_dim) < 1 or self.text_refiner < 0:
            raise ValueError("DiTConfig: depth, in_channels, text_dim must be >= 1 and text_refiner >= 0")

    @property
    def input_channels(self) -> int:
        return 2 * self.in_channels + 1 if self.frame_conditioning else self.in_channels

    def num_params(self) -> int:
        return sum(p.numel() for p in DiT(self).parameters())


# ---------------------------------------------------------------------------------------------------
# Self-attention and the block (the shared pieces are in kinema.layers)
# ---------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6), nn.RMSNorm(dim // heads, eps=1e-6)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # (B, L, D), cos/sin
        # one copy to head-major order up front: the norms then run on dense tensors and the attention matmuls
        # take q, k, v without copying each (4% of a bf16 step on a CPU)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).contiguous()  # (B, h, L, Dh)
        q, k = rms_rope(self.q_norm, q, rope, q.shape[-1] ** -0.5), rms_rope(self.k_norm, k, rope)
        return self.proj(attention(q, k, v, scale=1.0).transpose(1, 2).flatten(2))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        # erf GELU: 5x the tanh form's speed in bf16 on a CPU and within 1e-3 of it (weights trained with either load)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, rope, text, key_mask):  # x (B, L, D), c (B, D), text (B, Lt, D), key_mask (B, Lt)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = gated(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope))
        x = x + self.cross_attn(self.norm_cross(x), text, key_mask)
        return gated(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class JointBlock(nn.Module):
    """An MM-DiT block: video tokens x and prompt tokens each have their own adaLN, qkv, output projection and MLP;
    one attention runs over [prompt; video] (video keys rotated by RoPE, prompt keys not; padding masked as keys).
    The last block only lets the video read the prompt (`last`: no prompt output, so no unused weights)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, last: bool = False):
        super().__init__()
        self.heads, self.last = heads, last
        hidden = int(dim * mlp_ratio)
        self.norm1, self.norm2 = (nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6) for _ in range(2))
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.text_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.text_qkv = nn.Linear(dim, (2 if last else 3) * dim)  # the last block's prompt only gives keys and values
        self.text_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, (2 if last else 6) * dim))
        self.q_norm, self.k_norm, self.text_k_norm = (nn.RMSNorm(dim // heads, eps=1e-6) for _ in range(3))
        if not last:
            self.text_q_norm = nn.RMSNorm(dim // heads, eps=1e-6)
            self.text_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.text_proj = nn.Linear(dim, dim)
            self.text_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _heads(self, linear: nn.Linear, h: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (n, B, heads, L, Dh)
        return linear(h).unflatten(-1, (-1, self.heads, h.shape[-1] // self.heads)).permute(2, 0, 3, 1, 4).contiguous()

    def forward(self, x, c, rope, text, key_mask):  # x (B, L, D), c (B, D), text (B, Lt, D), key_mask (B, Lt)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        text_mod = self.text_adaLN(c).chunk(2 if self.last else 6, dim=1)
        q, k, v = self._heads(self.qkv, modulate(self.norm1(x), shift_msa, scale_msa))  # (B, h, L, Dh) each
        *tq, tk, tv = self._heads(self.text_qkv, modulate(self.text_norm1(text), text_mod[0], text_mod[1]))  # Lt
        gain = q.shape[-1] ** -0.5
        q = rms_rope(self.q_norm, q, rope, gain)
        if not self.last:  # prompt queries too: the words read the video
            q = torch.cat([rms(self.text_q_norm, tq[0], gain), q], dim=2)  # (B, h, Lt+L, Dh)
        k = torch.cat([rms(self.text_k_norm, tk), rms_rope(self.k_norm, k, rope)], dim=2)  # (B, h, Lt+L, Dh)
        mask = torch.cat([key_mask, key_mask.new_ones(x.shape[0], x.shape[1])], dim=1)[:, None, None, :]
        out = attention(q, k, torch.cat([tv, v], dim=2), mask, scale=1.0).transpose(1, 2).flatten(2)  # (B, Lq, D)
        x = gated(x, gate_msa, self.proj(out[:, -x.shape[1]:]))
        x = gated(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        if self.last:
            return x, text
        _, _, t_gate_msa, t_shift_mlp, t_scale_mlp, t_gate_mlp = text_mod
        text = gated(text, t_gate_msa, self.text_proj(out[:, :text.shape[1]]))
        return x, gated(text, t_gate_mlp, self.text_mlp(modulate(self.text_norm2(text), t_shift_mlp, t_scale_mlp)))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        pt, ph, pw = cfg.patch
        self.x_embedder = nn.Linear(cfg.input_channels * pt * ph * pw, cfg.dim)
        self.t_embedder = TimestepEmbedder(cfg.dim)
        self.text_embedder = TextEmbedder(cfg.text_dim, cfg.dim, cfg.text_refiner, cfg.heads, cfg.pooled_text)
        self.blocks = nn.ModuleList(
            JointBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, last=i == cfg.depth - 1) if cfg.joint_attention
            else DiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for i in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.dim, cfg.in_channels * pt * ph * pw)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears; adaLN-Zero: every residual branch gate and the output start at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            if isinstance(block, JointBlock):  # the prompt stream's gates too: each block starts as the identity
                nn.init.zeros_(block.text_adaLN[-1].weight)
                nn.init.zeros_(block.text_adaLN[-1].bias)
            else:
                nn.init.zeros_(block.cross_attn.proj.weight)
        for layer in self.text_embedder.refiner:
            layer.zero_branches()
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def _inputs(self, x, cond, cond_mask) -> torch.Tensor:
        """Known frames and their mask as extra channels when the model takes frame conditioning."""
        return with_frame_condition(x, cond, cond_mask) if self.cfg.frame_conditioning else x

    def forward(
        self,
        x: torch.Tensor,  # (B, C, F, H, W) noisy latents
        t: torch.Tensor,  # (B,) noise level in [0, 1]
        text: torch.Tensor,  # (B, Lt, Dt) prompt tokens
        text_mask: torch.Tensor,  # (B, Lt) True where a token is real
        cond: torch.Tensor | None = None,  # (B, C, F, H, W) known latent frames
        cond_mask: torch.Tensor | None = None,  # (B, 1, F, H, W) 1 where cond is given
    ) -> torch.Tensor:
        grid = token_grid(x.shape, self.cfg.patch)
        tokens = self.x_embedder(patchify(self._inputs(x, cond, cond_mask), self.cfg.patch))  # (B, L, D)
        positions = token_positions(grid, self.cfg.position_scale, x.device)  # (L, 3)
        if self.cfg.abs_pos:
            tokens = tokens + sincos_3d(positions, self.cfg.dim).to(tokens.dtype)
        rope = rope_cos_sin(rope_angles(positions, self.cfg.dim // self.cfg.heads,
                                        self.cfg.rope_theta))  # (L, Dh) each, shared by every block
        text_tokens, key_mask, pooled = self.text_embedder(text, text_mask)  # (B, 1+Lt, D), (B, 1+Lt), (B, D) or None
        c = self.t_embedder(t)  # (B, D)
        if pooled is not None:
            c = c + pooled
        for block in self.blocks:
            if self.cfg.joint_attention:
                tokens, text_tokens = block(tokens, c, rope, text_tokens, key_mask)
            else:
                tokens = block(tokens, c, rope, text_tokens, key_mask)
        out = self.final_layer(tokens, c)  # (B, L, C*pt*ph*pw)
        return unpatchify(out, self.cfg.patch, grid).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Continuing a trained model with finer patches
# ---------------------------------------------------------------------------------------------------


def finer_position_scale(old: DiTConfig, patch: tuple[int, int, int]) -> float:
    """The `position_scale` that continues `old` with a spatial patch dividing its own (e.g. 1x4x4 -> 1x2x2: 0.5):
    the same blocks over more tokens, positions kept in the old patch's units."""
    (pt, ph, pw), (qt, qh, qw) = old.patch, tuple(patch)
    if qt != pt or ph % qh or pw % qw or ph // qh != pw // qw:
        raise ValueError(f"a model with patch {old.patch} continues only with a spatial patch that divides its own by "
                         f"the same factor in height and width (e.g. 1x4x4 -> 1x2x2), got {tuple(patch)}")
    return old.position_scale * qh / ph


def repatch_state(state: dict[str, torch.Tensor], old: DiTConfig, new: DiTConfig) -> dict[str, torch.Tensor]:
    """Weights of a DiT trained with `old.patch` for `new`, the same DiT with a finer patch and
    `finer_position_scale(old, new.patch)`. The new model
    computes what the old weights compute on the latent upsampled r times (nearest) in height and width, r the
    patch ratio, at the new positions, with each output pixel the mean of the r x r it became: the patch
    embedding sums each old weight over the r x r old pixels a new pixel fills, the output layer averages.
    A start for training, not the old model: an object covers r^2 times the tokens it did."""
    scale = finer_position_scale(old, new.patch)  # raises on a bad patch
    if new.position_scale != scale:
        raise ValueError(f"repatch_state: position_scale {new.position_scale} is not the old one's for patch "
                         f"{new.patch} ({scale})")
    (pt, ph, _), (_, qh, qw) = old.patch, new.patch
    r = ph // qh
    out = dict(state)
    # x_embedder: (D, Cin*pt*ph*pw), layout (c pt ph pw) as in patchify
    w = state["x_embedder.weight"].unflatten(1, (-1, pt, qh, r, qw, r))  # (D, Cin, pt, qh, r, qw, r)
    out["x_embedder.weight"] = w.sum(dim=(4, 6)).flatten(1)  # (D, Cin*pt*qh*qw)
    # final layer: (C*pt*ph*pw, D) and its bias, the same layout
    w = state["final_layer.linear.weight"].unflatten(0, (-1, pt, qh, r, qw, r))  # (C, pt, qh, r, qw, r, D)
    out["final_layer.linear.weight"] = w.mean(dim=(3, 5)).flatten(0, 3)  # (C*pt*qh*qw, D)
    b = state["final_layer.linear.bias"].unflatten(0, (-1, pt, qh, r, qw, r))
    out["final_layer.linear.bias"] = b.mean(dim=(3, 5)).flatten()
    return out


# ---------------------------------------------------------------------------------------------------
# Continuing a trained model with more blocks
# ---------------------------------------------------------------------------------------------------


def deeper_block_sources(old_depth: int, new_depth: int) -> list[int]:
    """For each block of a model deepened from `old_depth` to `new_depth`, the old block it copies: spread evenly,
    each old block first where it was in order (4 -> 6: [0, 0, 1, 2, 2, 3]; 4 -> 8: [0, 0, 1, 1, 2, 2, 3, 3])."""
    if not 1 <= old_depth <= new_depth:
        raise ValueError(f"a model of depth {old_depth} continues only with at least as many blocks, got {new_depth}")
    return [j * old_depth // new_depth for j in range(new_depth)]


def deepen_state(state: dict[str, torch.Tensor], old: DiTConfig, depth: int) -> dict[str, torch.Tensor]:
    """Weights of a DiT trained as `old` for the same DiT with `depth` blocks. Each old block keeps its weights
    and place in order; every added block is a copy of the one before it with its adaLN-Zero modulation and its
    cross-attention output at zero, so it adds nothing: the deeper model computes exactly what the old one did
    (as LLaMA Pro's block expansion). Its copied attention and MLP are a start that already reads the tokens, so
    the zero gates get gradients from the first step."""
    if old.joint_attention:  # the last joint block has no prompt stream to carry on
        raise ValueError("only models with cross-attention blocks can be deepened, not joint attention")
    sources = deeper_block_sources(old.depth, depth)
    out = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    for j, i in enumerate(sources):
        added = j > 0 and sources[j - 1] == i
        for name, value in state.items():
            if name.startswith(f"blocks.{i}."):
                rest = name[len(f"blocks.{i}."):]
                silent = added and rest.startswith(("adaLN_modulation.", "cross_attn.proj."))
                out[f"blocks.{j}.{rest}"] = torch.zeros_like(value) if silent else value.clone()
    return out
