"""Text encoders: both map `list[str]` to `(emb [B, L, D] float32, mask [B, L] bool)`.

- `ByteTextEncoder`: a small bidirectional transformer over UTF-8 bytes, trained jointly with the
  DiT (any language or symbol; no tokenizer file to ship). A convolution over the byte
  embeddings first gives every byte its n-gram, so words are readable from the first layer.
  The empty string "" encodes to a single learned NULL token: that is the unconditional
  embedding used for classifier-free guidance and for caption dropout in training, so both
  see exactly the same input.
- `T5TextEncoder`: a frozen T5/UMT5 encoder loaded with `transformers` from a local folder,
  encoding exactly as Wan2.1 does (512 tokens, padded positions zeroed). "" is encoded like any
  prompt (just the EOS token), which is Wan's and diffusers' default negative prompt.

Padded positions of `emb` are zero in both, and `mask` is True on real tokens.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from kinetoscope.models.dit import Attention
from kinetoscope.models.layers import LayerNorm32, RMSNorm


@dataclass
class ByteTextConfig:
    dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 1024
    max_len: int = 320  # bytes; longer prompts are truncated silently
    conv_kernel: int = 7  # bytes seen by the n-gram convolution before attention (odd; 0 = none)
    eps: float = 1e-6


BYTE_PRESETS: dict[str, ByteTextConfig] = {
    "tiny": ByteTextConfig(dim=256, num_layers=4, num_heads=4, ffn_dim=1024),
    "small": ByteTextConfig(dim=512, num_layers=6, num_heads=8, ffn_dim=2048),
}

PAD, NULL = 256, 257  # token ids after the 256 byte values
VOCAB = 258


def byte_text_config(name: str, **overrides) -> ByteTextConfig:
    """Return a copy of the named ByteTextEncoder preset with fields overridden."""
    if name not in BYTE_PRESETS:
        raise ValueError(
            f"unknown text encoder preset {name!r}; choose from {sorted(BYTE_PRESETS)}"
        )
    return replace(BYTE_PRESETS[name], **overrides)


class TextBlock(nn.Module):
    """Pre-norm transformer block: bidirectional self-attention with key padding, GELU MLP."""

    def __init__(self, cfg: ByteTextConfig):
        super().__init__()
        self.norm1 = LayerNorm32(cfg.dim, cfg.eps)
        self.attn = Attention(cfg.dim, cfg.num_heads, qk_norm=True, eps=cfg.eps)
        self.norm2 = LayerNorm32(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU("tanh"), nn.Linear(cfg.ffn_dim, cfg.dim)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask=mask).type_as(x)
        return x + self.ffn(self.norm2(x)).type_as(x)


class ByteTextEncoder(nn.Module):
    """Return (emb [B, L, dim], mask [B, L]) for a list of strings, L = longest prompt in bytes."""

    def __init__(self, cfg: ByteTextConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(VOCAB, cfg.dim)
        # Learned positions are enough: the length is bounded by max_len.
        self.pos_embedding = nn.Parameter(torch.zeros(cfg.max_len, cfg.dim))
        # Without it, 100 steps of reading ShapeWorld captions leave the loss at 3.5; with it, 0.65.
        k = cfg.conv_kernel
        if k and k % 2 == 0:
            raise ValueError(f"conv_kernel must be odd or 0, got {k}")
        self.conv = nn.Conv1d(cfg.dim, cfg.dim, k, padding=k // 2) if k else None
        self.blocks = nn.ModuleList([TextBlock(cfg) for _ in range(cfg.num_layers)])
        self.norm = LayerNorm32(cfg.dim, cfg.eps)
        if not self.pos_embedding.is_meta:
            self.init_weights()

    @property
    def dim(self) -> int:
        return self.cfg.dim

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (also after `to_empty`): xavier linears, normal embeddings."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, RMSNorm, nn.Conv1d)):
                m.reset_parameters()  # norms: gains 1, biases 0; conv: PyTorch's default
        # Unit-scale byte embeddings: at GPT's std 0.02 the first block's O(1) outputs drowned
        # each byte's identity (token-token cosine 0.94 after block 1, 0.99 at the output),
        # and trained on captions it read environments but never a single colour.
        nn.init.normal_(self.token_embedding.weight, std=1.0)
        nn.init.normal_(self.pos_embedding, std=0.02)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (ids [B, L] long, mask [B, L] bool): UTF-8 bytes, "" -> [NULL], PAD after."""
        if isinstance(texts, str):
            texts = [texts]
        seqs = [list(s.encode("utf-8")[: self.cfg.max_len]) or [NULL] for s in texts]
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), PAD, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        device = self.token_embedding.weight.device
        return ids.to(device), (ids != PAD).to(device)

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts)
        return self.encode_ids(ids, mask), mask

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return emb [B, L, dim] float32 for token ids [B, L], zero where mask is False."""
        x = self.token_embedding(ids) * mask[..., None]  # [B, L, D]; padding zero for the conv
        if self.conv is not None:
            x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        x = x + self.pos_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x).float() * mask[..., None]


def clean_prompt(text: str) -> str:
    """Return the prompt cleaned as Wan2.1's tokenizer wrapper does (HTML entities, whitespace)."""
    try:  # Wan also runs ftfy when it is installed; it is optional here.
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class T5TextEncoder(nn.Module):
    """Return (emb [B, max_len, d_model], mask [B, max_len]) from a frozen T5/UMT5 encoder."""

    def __init__(self, model: nn.Module, tokenizer, max_len: int = 512):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_len = max_len

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype = torch.bfloat16,
        tokenizer_path: str | Path | None = None,
        max_len: int = 512,
    ) -> T5TextEncoder:
        """Return the encoder loaded from a local folder (config.json + weights + tokenizer).

        tokenizer_path defaults to `path` (diffusers checkpoints keep it in a sibling `tokenizer/`).
        Nothing is downloaded.
        """
        try:
            import transformers
        except ImportError as e:  # optional dependency
            raise ImportError("T5TextEncoder needs `pip install transformers`") from e
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"no T5 encoder config.json in {path}")
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        kind = transformers.UMT5EncoderModel if config.model_type == "umt5" else None
        kind = kind or transformers.T5EncoderModel
        model = kind.from_pretrained(path, dtype=dtype, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            tokenizer_path or path, local_files_only=True
        )
        return cls(model, tokenizer, max_len)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        tok = self.tokenizer(
            [clean_prompt(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.max_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device).bool()
        emb = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        # Wan keeps only the real tokens then zero-pads to 512; zeroing the tail is the same.
        return emb.float() * mask[..., None], mask
