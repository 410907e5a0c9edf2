"""Key renaming from Wan2.1 VAE checkpoints (original `.pth` or diffusers layout) to our VAE.

Only names change: tensors, shapes and math are the same (tests/test_wan_vae_parity.py).
Our layout: `encoder.conv_in`, `encoder.down.{i}` (one flat list, as Wan's `downsamples`),
`encoder.mid.{0,1,2}` (res, attention, res), `encoder.norm_out`, `encoder.conv_out`,
`quant_conv`, `post_quant_conv`, and the same for `decoder.*` with `up.{i}`. Residual blocks
have `norm1, conv1, norm2, conv2, shortcut`; resamples `conv, time_conv`.
"""

from __future__ import annotations

import re

import torch

# Original Wan2.1 (`Wan2.1_VAE.pth`): nn.Sequential indices -> our names.
_WAN_RULES = [
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
    (r"\.downsamples\.", ".down."),
    (r"\.upsamples\.", ".up."),
    (r"\.middle\.", ".mid."),
    (r"\.head\.0\.", ".norm_out."),
    (r"\.head\.2\.", ".conv_out."),
    (r"\.residual\.0\.", ".norm1."),
    (r"\.residual\.2\.", ".conv1."),
    (r"\.residual\.3\.", ".norm2."),
    (r"\.residual\.6\.", ".conv2."),
    (r"\.resample\.1\.", ".conv."),
]

# diffusers' AutoencoderKLWan: everything but the decoder's nested up_blocks.
_DIFFUSERS_RULES = [
    (r"\.down_blocks\.", ".down."),
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"\.mid_block\.resnets\.0\.", ".mid.0."),
    (r"\.mid_block\.attentions\.0\.", ".mid.1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.2."),
    (r"\.resample\.1\.", ".conv."),
]
_UP_BLOCK = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)$")


def is_diffusers_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    """Returns True for diffusers' key names, False for original Wan (or ours)."""
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state_dict)


def from_wan(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns the original Wan2.1 VAE state dict under our key names (same tensors)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _WAN_RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def from_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns a diffusers AutoencoderKLWan state dict under our key names (same tensors).

    diffusers nests the decoder as up_blocks[i].resnets[j] + upsamplers[0]; ours is one flat
    list, so up_blocks[i] starts at i * (resnets per level + 1). Wan2.1 has no decoder
    attention (attn_scales=()), which is the only layout diffusers can express.
    """
    res_per_level = 1 + max(
        (int(m.group(3)) for k in state_dict if (m := _UP_BLOCK.match(k)) and m.group(3)),
        default=-1,
    )
    out = {}
    for key, value in state_dict.items():
        m = _UP_BLOCK.match(key)
        if m:
            level, rest = int(m.group(1)), m.group(4)
            j = int(m.group(3)) if m.group(3) is not None else res_per_level
            key = f"decoder.up.{level * (res_per_level + 1) + j}.{rest}"
        for pattern, repl in _DIFFUSERS_RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns any Wan2.1 VAE state dict (original or diffusers) under our key names."""
    return from_diffusers(state_dict) if is_diffusers_layout(state_dict) else from_wan(state_dict)


def load_wan_vae(vae: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Loads a Wan2.1 VAE state dict (either layout) into our VAE, strictly.

    Wan keeps its latent mean/std in code, not in the checkpoint: they come from `vae.cfg`
    (the `wan2.1` preset carries the published values).
    """
    sd = to_ours(state_dict)
    sd.setdefault("latents_mean", vae.latents_mean)
    sd.setdefault("latents_std", vae.latents_std)
    vae.load_state_dict(sd, strict=True)
