"""A video captioner: a clip -> a detailed caption (the recipe's "second model").

    latents (B, C, F, H, W) --patchify----> video tokens --encoder--> memory
    or pixels (B, 3, F, H, W) --PixelStem--^   (the same grid as the VAE's latents)
    caption tokens --decoder (causal self-attention, cross-attention to memory)--> next-token logits

It reads VAE latents (cheap: the DiT's latent cache serves both) or pixels. Pixels are where a small square
and a small diamond (7 px across) are plainly told apart (the pixel probe: all 80 of them right on the
dataset's frames, while after our 8x VAE's round trip it reads 36 of 54 as circles), but in our runs the
latent captioner, trained as long, agrees with the scene record more often (README, "Recaptioning"). A third
input, latents plus a few frames in pixels, was tried twice (two frames at patch 1x2x2, one frame at 1x1x1)
and lost to latents alone both times, so it was removed.

The vocabulary is built from the training captions (words and punctuation, plus <pad> <bos> <eos> <unk>),
which for a closed world like ours is exactly as expressive as word pieces and far smaller. Decoding is
greedy or beam search and always terminates (max_length).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from kinema.layers.attention import attention
from kinema.layers.patches import grid_positions, patchify, token_grid

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
_TOKEN_RE = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")

# ---------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------


class Vocab:
    def __init__(self, words: list[str]):
        self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: list[str]) -> Vocab:
        return cls(sorted({t for c in captions for t in tokenize(c)}))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_length: int) -> list[int]:
        ids = [self.index.get(t, UNK) for t in tokenize(text)][: max_length - 2]
        return [BOS, *ids, EOS]

    def decode(self, ids: list[int]) -> str:
        words = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                words.append(self.words[i])
        return detokenize(words)

    def to_json(self) -> str:
        return json.dumps(self.words[len(SPECIALS):])

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        return cls(json.loads(text))


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def detokenize(words: list[str]) -> str:
    text = " ".join(words)
    text = re.sub(r" ([,.;:!?])", r"\1", text)
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------------
# Config and model
# ---------------------------------------------------------------------------------------------------


INPUTS = ("latents", "pixels")


@dataclass(frozen=True)
class CaptionerConfig:
    input: str = "latents"  # what it reads: VAE latents, or pixels in [-1, 1]
    latent_channels: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)  # latent patch per video token
    pixel_temporal: int = 4  # pixels: frames per video token after the first (causal, like the VAE)
    pixel_spatial: int = 8  # pixels: pixels per video token side (a power of 2)
    vocab_size: int = 256
    dim: int = 256
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    max_length: int = 64
    max_video_tokens: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", tuple(self.patch))
        if self.dim % self.heads:
            raise ValueError(f"CaptionerConfig: dim {self.dim} must be divisible by heads {self.heads}")
        if self.vocab_size <= len(SPECIALS):
            raise ValueError(f"CaptionerConfig: vocab_size {self.vocab_size} leaves no room for words")
        if self.input not in INPUTS:
            raise ValueError(f"CaptionerConfig: input {self.input!r}; expected one of {INPUTS}")
        s = self.pixel_spatial
        if self.pixel_temporal < 1 or s < 2 or s & (s - 1):
            raise ValueError(f"CaptionerConfig: pixel_temporal must be >= 1 and pixel_spatial a power of 2 >= 2, "
                             f"got {self.pixel_temporal}, {s}")


class PixelStem(nn.Module):
    """Pixels (B, 3, F, H, W) -> features (B, D, 1 + (F-1)/t, H/s, W/s). Causal in time like the VAE (the
    first frame is repeated t-1 times in front, so it forms a group of its own); each group of t frames is
    stacked on the channels and read by stride-2 3x3 convs that widen to D until the grid is H/s x W/s.
    (2D convs over frame groups compute what a (t, 3, 3) Conv3d at time stride t would, several times
    faster on a CPU.)"""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.t, self.s = cfg.pixel_temporal, cfg.pixel_spatial
        n = self.s.bit_length() - 1  # stride-2 convs
        widths = [min(cfg.dim, 64 * 2**i) for i in range(n - 1)] + [cfg.dim]
        layers: list[nn.Module] = [nn.Conv2d(3 * self.t, widths[0], 3, stride=2, padding=1)]
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.GELU(), nn.Conv2d(a, b, 3, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B, _, frames, height, width = video.shape
        if (frames - 1) % self.t or height % self.s or width % self.s:
            raise ValueError(f"captioner: pixel clips need 1 + {self.t}k frames and sizes divisible by {self.s}, "
                             f"got {frames}x{height}x{width}")
        video = torch.cat([video[:, :, :1].expand(-1, -1, self.t - 1, -1, -1), video], dim=2)
        groups = rearrange(video, "b c (g t) h w -> (b g) (c t) h w", t=self.t)  # (B*G, 3t, H, W)
        return rearrange(self.net(groups), "(b g) d h w -> b d g h w", b=B)  # (B, D, G, H/s, W/s)


class Attention(nn.Module):
    """Multi-head attention of x over a context (itself by default), through the DiT's `attention` (the
    fastest kernel for the device: on a CPU in bf16, 1.5-7x nn.MultiheadAttention's fused one)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # x (B, L, D), context (B, Lk, D)
        context = x if context is None else context
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, L, Dh)
        k, v = self.kv(context).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)  # (B, heads, Lk, Dh)
        return self.proj(attention(q, k, v, mask).transpose(1, 2).flatten(2))


def mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


class EncoderLayer(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DecoderLayer(nn.Module):
    """Pre-norm: masked self-attention over the caption so far, cross-attention to the video, MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm3, self.mlp = nn.LayerNorm(dim), mlp(dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), mask=mask)  # mask (B, 1, T, T), True = may attend
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.mlp(self.norm3(x))


class VideoCaptioner(nn.Module):
    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.cfg = cfg
        pt, ph, pw = cfg.patch
        if cfg.input == "pixels":
            self.video_embedder: nn.Module = PixelStem(cfg)
        else:
            self.video_embedder = nn.Linear(cfg.latent_channels * pt * ph * pw, cfg.dim)
        self.axis_embedders = nn.ModuleList(nn.Embedding(64, cfg.dim) for _ in range(3))  # f, h, w positions
        self.encoder = nn.ModuleList(EncoderLayer(cfg.dim, cfg.heads) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(cfg.dim)
        self.token_embedder = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=PAD)
        self.position_embedder = nn.Embedding(cfg.max_length, cfg.dim)
        self.decoder = nn.ModuleList(DecoderLayer(cfg.dim, cfg.heads) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, f, h, w) or pixels (B, 3, F, H, W), per cfg.input -> memory (B, L, D)."""
        if self.cfg.input == "pixels":
            x = self.video_embedder(video)  # (B, D, f, h, w)
            grid = tuple(x.shape[2:])
            x = x.flatten(2).transpose(1, 2)  # (B, L, D)
        else:
            grid = token_grid(video.shape, self.cfg.patch)
            x = self.video_embedder(patchify(video, self.cfg.patch))  # (B, L, D)
        x = x + self._positions(grid, video.device)
        for layer in self.encoder:
            x = layer(x)
        return self.encoder_norm(x)  # (B, L, D)

    def _positions(self, grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
        pos = grid_positions(grid, device).clamp(max=63)  # (L, 3)
        return sum(emb(pos[:, i]) for i, emb in enumerate(self.axis_embedders))  # (L, D)

    def decode_step(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids so far -> (B, T, vocab) logits."""
        T = tokens.shape[1]
        x = self.token_embedder(tokens) + self.position_embedder(torch.arange(T, device=tokens.device))
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()  # True: may attend
        mask = causal & (tokens != PAD)[:, None, None, :]  # (B, 1, T, T); <bos> is never padding
        for layer in self.decoder:
            x = layer(x, memory, mask)
        return self.head(self.norm(x))

    def loss(self, video: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy; tokens (B, T) = <bos> words <eos> <pad>..."""
        logits = self.decode_step(tokens[:, :-1], self.encode_video(video))
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), ignore_index=PAD)

    @torch.no_grad()
    def generate(self, video: torch.Tensor, beams: int = 1) -> list[list[int]]:
        """Token ids per clip, greedy (beams=1) or beam search; stops at <eos> or max_length."""
        memory = self.encode_video(video)
        if beams == 1:
            return self._greedy(memory)
        return [self._beam(memory[i:i + 1], beams) for i in range(memory.shape[0])]

    def _greedy(self, memory: torch.Tensor) -> list[list[int]]:
        B = memory.shape[0]
        tokens = torch.full((B, 1), BOS, dtype=torch.long, device=memory.device)
        done = torch.zeros(B, dtype=torch.bool, device=memory.device)
        for _ in range(self.cfg.max_length - 1):
            nxt = self.decode_step(tokens, memory)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done |= nxt == EOS
            if done.all():
                break
        return [row[1:].tolist() for row in tokens]

    def _beam(self, memory: torch.Tensor, beams: int) -> list[int]:
        hyps = [([BOS], 0.0)]
        for _ in range(self.cfg.max_length - 1):
            live = [h for h in hyps if h[0][-1] != EOS]
            if not live:
                break
            tokens = torch.tensor([h[0] for h in live], device=memory.device)
            logp = self.decode_step(tokens, memory.expand(len(live), -1, -1))[:, -1].log_softmax(-1)
            top = logp.topk(beams, dim=-1)
            candidates = [h for h in hyps if h[0][-1] == EOS]
            for i, (seq, score) in enumerate(live):
                for lp, tok in zip(top.values[i].tolist(), top.indices[i].tolist(), strict=True):
                    candidates.append((seq + [tok], score + lp))
            hyps = sorted(candidates, key=lambda h: h[1] / len(h[0]), reverse=True)[:beams]
        return hyps[0][0][1:]
