"""Rename Wan2.1 DiT checkpoints (original or diffusers layout) to kinetoscope's DiT keys.

Our parameter names are Wan2.1's original ones, so an original checkpoint only loses its
`model.diffusion_model.` prefix (ComfyUI-style files). diffusers' WanTransformer3DModel renames
almost everything and swaps the names of the cross-attention norm (Wan `norm3`, diffusers `norm2`)
and the MLP norm; the table below undoes that. Only text-to-video checkpoints are supported: the
image-to-video extras (CLIP image tokens: `img_emb`, `k_img`, ...) raise a ValueError.
"""

from __future__ import annotations

import re

from kinetoscope.models.dit import DiTConfig

# One table, both directions: (ours, diffusers) names. `{i}` is a block index; a name ending
# in "." is a module prefix (its weight and bias), any other name a whole parameter.
DIT_NAMES: list[tuple[str, str]] = [
    ("patch_embedding.", "patch_embedding."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    *[(f"blocks.{{i}}.{a}.{x}.", f"blocks.{{i}}.{b}.to_{x}.")
      for a, b in (("self_attn", "attn1"), ("cross_attn", "attn2")) for x in "qkv"],
    ("blocks.{i}.self_attn.o.", "blocks.{i}.attn1.to_out.0."),
    ("blocks.{i}.cross_attn.o.", "blocks.{i}.attn2.to_out.0."),
    *[(f"blocks.{{i}}.{a}.norm_{x}.", f"blocks.{{i}}.{b}.norm_{x}.")
      for a, b in (("self_attn", "attn1"), ("cross_attn", "attn2")) for x in "qk"],
    ("blocks.{i}.norm3.", "blocks.{i}.norm2."),  # the swap: diffusers norm2 = cross norm
    ("blocks.{i}.ffn.0.", "blocks.{i}.ffn.net.0.proj."),
    ("blocks.{i}.ffn.2.", "blocks.{i}.ffn.net.2."),
    ("blocks.{i}.modulation", "blocks.{i}.scale_shift_table"),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
]  # fmt: skip


def rename_rules(to_ours: bool) -> list[tuple[str, str]]:
    """Returns (regex, replacement) rules renaming diffusers keys to ours, or ours to diffusers."""
    rules = []
    for ours, theirs in DIT_NAMES:
        src, dst = (theirs, ours) if to_ours else (ours, theirs)
        prefix = src.endswith(".")  # then `weight` / `bias` follow, as the last group
        tail = (r"\2" if "{i}" in src else r"\1") if prefix else ""
        pattern = "^" + re.escape(src).replace(r"\{i\}", r"(\d+)")
        rules.append(
            (pattern + (r"(weight|bias)$" if prefix else "$"), dst.replace("{i}", r"\1") + tail)
        )
    return rules


DIFFUSERS_TO_OURS = rename_rules(to_ours=True)

# Original Wan2.1 keys are ours; this checks a key belongs to the text-to-video model.
OURS = re.compile(
    r"^(patch_embedding|text_embedding\.[02]|time_embedding\.[02]|time_projection\.1|head\.head)"
    r"\.(weight|bias)$"
    r"|^head\.modulation$"
    r"|^blocks\.\d+\.((self|cross)_attn\.(q|k|v|o|norm_q|norm_k)|norm3|ffn\.[02])\.(weight|bias)$"
    r"|^blocks\.\d+\.modulation$"
)


def is_diffusers_layout(state_dict: dict) -> bool:
    """Return True when the keys are diffusers' WanTransformer3DModel names."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in state_dict)


def from_diffusers(state_dict: dict) -> dict:
    """Return the state dict with diffusers WanTransformer3DModel keys renamed to ours."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, repl in DIFFUSERS_TO_OURS:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            unknown.append(key)
    _raise_unknown(unknown, "diffusers")
    return out


def from_original(state_dict: dict) -> dict:
    """Return an original-layout Wan2.1 state dict without any `model.diffusion_model.` prefix."""
    out = {k.removeprefix("model.diffusion_model."): v for k, v in state_dict.items()}
    _raise_unknown([k for k in out if not OURS.match(k)], "original Wan2.1")
    return out


def to_kinetoscope(state_dict: dict) -> dict:
    """Return our DiT state dict from a Wan2.1 DiT checkpoint in either layout."""
    if is_diffusers_layout(state_dict):
        return from_diffusers(state_dict)
    return from_original(state_dict)


def config_from_diffusers(config: dict) -> DiTConfig:
    """Return the DiTConfig matching a diffusers WanTransformer3DModel config.json dict."""
    if config.get("image_dim") or config.get("added_kv_proj_dim"):
        raise ValueError("image-to-video Wan checkpoints (image_dim set) are not supported")
    heads = config["num_attention_heads"]
    return DiTConfig(
        in_channels=config["in_channels"],
        out_channels=config.get("out_channels") or config["in_channels"],
        dim=heads * config["attention_head_dim"],
        ffn_dim=config["ffn_dim"],
        num_layers=config["num_layers"],
        num_heads=heads,
        patch_size=tuple(config.get("patch_size", (1, 2, 2))),
        text_dim=config["text_dim"],
        freq_dim=config.get("freq_dim", 256),
        eps=config.get("eps", 1e-6),
        qk_norm=bool(config.get("qk_norm", True)),
        cross_attn_norm=bool(config.get("cross_attn_norm", True)),
        text_len=512,
    )


def config_from_original(config: dict) -> DiTConfig:
    """Return the DiTConfig matching an original Wan2.1 config.json (`WanModel`) dict."""
    if config.get("model_type", "t2v") != "t2v":
        raise ValueError(f"only text-to-video Wan models are supported, got {config['model_type']}")
    return DiTConfig(
        in_channels=config.get("in_dim", 16),
        out_channels=config.get("out_dim", 16),
        dim=config["dim"],
        ffn_dim=config["ffn_dim"],
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        patch_size=tuple(config.get("patch_size", (1, 2, 2))),
        text_dim=config.get("text_dim", 4096),
        freq_dim=config.get("freq_dim", 256),
        eps=config.get("eps", 1e-6),
        qk_norm=bool(config.get("qk_norm", True)),
        cross_attn_norm=bool(config.get("cross_attn_norm", True)),
        text_len=config.get("text_len", 512),
    )


def _raise_unknown(keys: list[str], layout: str) -> None:
    if keys:
        shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        raise ValueError(f"unexpected keys for a {layout} text-to-video Wan DiT: {shown}")
