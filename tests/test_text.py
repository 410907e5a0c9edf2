"""Text encoders: shapes, masks, the CFG null embedding, truncation, and Wan-style T5 encoding."""

import pytest
import torch

from kinetoscope.models.text import ByteTextConfig, ByteTextEncoder, T5TextEncoder, clean_prompt

CFG = ByteTextConfig(dim=32, num_layers=2, num_heads=2, ffn_dim=64, max_len=24)


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    return ByteTextEncoder(CFG).eval()


def test_shapes_and_mask_count_utf8_bytes(enc):
    texts = ["a red cube", "日本語 🎥", "!"]
    with torch.no_grad():
        emb, mask = enc(texts)
    lengths = [len(s.encode("utf-8")) for s in texts]
    assert emb.shape == (3, max(lengths), 32) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool
    assert mask.sum(1).tolist() == lengths
    assert (emb[~mask] == 0).all()  # padded positions are zero
    assert torch.isfinite(emb).all()


def test_empty_string_is_one_learned_null_token(enc):
    with torch.no_grad():
        null, null_mask = enc([""])
        batched, mask = enc(["", "a long prompt here"])
        other, _ = enc(["x"])
    assert null.shape == (1, 1, 32) and null_mask.tolist() == [[True]]
    assert mask[0].tolist() == [True] + [False] * (mask.shape[1] - 1)
    torch.testing.assert_close(batched[0, :1], null[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(null, other, atol=1e-3)


def test_padding_does_not_change_a_prompts_embedding(enc):
    with torch.no_grad():
        alone, _ = enc(["blue sphere"])
        padded, _ = enc(["blue sphere", "a much longer prompt"])
    torch.testing.assert_close(padded[0, : alone.shape[1]], alone[0], rtol=1e-5, atol=1e-5)


def test_long_prompt_is_truncated_without_error(enc):
    with torch.no_grad():
        emb, mask = enc(["x" * 500, "short"])
    assert emb.shape[1] == CFG.max_len and mask[0].all()
    with torch.no_grad():
        a, _ = enc(["y" * CFG.max_len + "tail A"])
        b, _ = enc(["y" * CFG.max_len + "tail B"])
    torch.testing.assert_close(a, b)  # only the first max_len bytes are seen


def test_different_prompts_differ_and_gradients_reach_embeddings():
    torch.manual_seed(0)
    enc = ByteTextEncoder(CFG)
    emb, mask = enc(["red cube", "blue cube"])
    assert (emb[0] - emb[1]).abs().max() > 1e-3
    (emb * mask[..., None]).pow(2).sum().backward()
    assert enc.token_embedding.weight.grad.abs().sum() > 0
    assert enc.pos_embedding.grad.abs().sum() > 0


def test_meta_construction_then_init():
    with torch.device("meta"):
        enc = ByteTextEncoder(CFG)
    enc.to_empty(device="cpu")
    with torch.no_grad():
        for p in enc.parameters():
            p.fill_(float("nan"))
    enc.init_weights()
    with torch.no_grad():
        emb, _ = enc(["ok"])
    assert torch.isfinite(emb).all()


def test_clean_prompt_matches_wan_whitespace_rules():
    assert clean_prompt("  a &amp;amp; b\n\tc  ") == "a & b c"


# --- T5 / UMT5, built offline: a tiny random UMT5 and a word-level tokenizer saved to a folder.


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("umt5")
    words = ["a", "red", "circle", "moves", "left", "blue", "square"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    # T5 appends </s> to every sequence; the encoder must see it as Wan's does.
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.UMT5Config(
        vocab_size=16, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8,
    )  # fmt: skip
    transformers.UMT5EncoderModel(config).save_pretrained(folder)
    return folder


def test_t5_encodes_like_wan(t5_folder):
    enc = T5TextEncoder.from_pretrained(t5_folder, dtype=torch.float32)
    emb, mask = enc(["a red  circle moves left", ""])
    assert emb.shape == (2, 512, 16) and mask.shape == (2, 512)
    assert mask.sum(1).tolist() == [6, 1]  # five words + </s>; "" is just </s>
    assert (emb[~mask] == 0).all()
    # The real tokens equal the encoder run on the unpadded sequence (what Wan keeps).
    ids = torch.tensor([[3, 4, 5, 6, 7, 1]])
    with torch.no_grad():
        direct = enc.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(emb[0, :6], direct[0], rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())


def test_t5_missing_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        T5TextEncoder.from_pretrained(tmp_path)


def test_bytes_keep_their_identity_through_a_fresh_encoder():
    """Tiny byte embeddings under O(1) block outputs collapse every position to one vector
    (mean token-token cosine 0.99 at the output, and colours were never learned from it)."""
    from kinetoscope.models.text import byte_text_config

    torch.manual_seed(0)
    enc = ByteTextEncoder(byte_text_config("tiny")).eval()
    with torch.no_grad():
        emb, _ = enc(["a quick huge violet cube moves up"])
    f = torch.nn.functional.normalize(emb[0], dim=-1)
    assert (f @ f.T).mean() < 0.6  # 0.41 with unit-scale embeddings; 0.99 at std 0.02
