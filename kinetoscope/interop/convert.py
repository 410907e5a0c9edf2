"""Write a loaded Wan2.1 pipeline back out: diffusers layout, and the key maps both ways.

Loading is interop/wan.py; this module holds what goes the other way (ours -> diffusers
names, configs and folders) plus the UMT5 rename shared by both directions, so that
`kinetoscope convert` round-trips weights exactly: diffusers -> ours -> diffusers gives the
same tensors under the same names (tests/test_wan_interop.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from kinetoscope.files import save_tensors
from kinetoscope.interop.wan_dit_keys import rename_rules

# ---- DiT: ours (= Wan original) -> diffusers WanTransformer3DModel ---------------------------

DIT_OURS_TO_DIFFUSERS = rename_rules(to_ours=False)  # the loader's table, read the other way


def _rename(key: str, rules: list[tuple[str, str]], what: str) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise ValueError(f"no {what} name for key {key!r}")


def dit_to_diffusers(state_dict: dict) -> dict:
    """Returns our DiT state dict under diffusers WanTransformer3DModel names (same tensors)."""
    return {_rename(k, DIT_OURS_TO_DIFFUSERS, "diffusers"): v for k, v in state_dict.items()}


def dit_diffusers_config(cfg) -> dict:
    """Returns the diffusers WanTransformer3DModel config.json dict of a DiTConfig."""
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim,
        "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers,
        "cross_attn_norm": cfg.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None,
        "eps": cfg.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
    }


# ---- VAE: ours -> diffusers AutoencoderKLWan ---------------------------------------------------

_VAE_TO_DIFFUSERS = [
    (r"^encoder\.down\.", "encoder.down_blocks."),
    (r"\.shortcut\.", ".conv_shortcut."),
    (r"\.mid\.0\.", ".mid_block.resnets.0."),
    (r"\.mid\.1\.", ".mid_block.attentions.0."),
    (r"\.mid\.2\.", ".mid_block.resnets.1."),
    (r"\.conv\.", ".resample.1."),  # only resamples have a bare `conv`
]
_UP = re.compile(r"^decoder\.up\.(\d+)\.(.*)$")


def vae_to_diffusers(state_dict: dict, num_res_blocks: int) -> dict:
    """Returns our VAE state dict under AutoencoderKLWan names (latent stats go to the config).

    The decoder is one flat list here; diffusers nests it as up_blocks[level] = the level's
    num_res_blocks + 1 resnets then one upsampler (none after the last level).
    """
    per_level = num_res_blocks + 1
    out = {}
    for key, value in state_dict.items():
        if key in ("latents_mean", "latents_std"):
            continue
        for pattern, repl in _VAE_TO_DIFFUSERS:
            key = re.sub(pattern, repl, key)
        m = _UP.match(key)
        if m:
            level, j = divmod(int(m.group(1)), per_level + 1)
            inner = "upsamplers.0" if j == per_level else f"resnets.{j}"
            key = f"decoder.up_blocks.{level}.{inner}.{m.group(2)}"
        out[key] = value
    return out


def vae_config_from_diffusers(config: dict):
    """Returns the VAEConfig of a diffusers AutoencoderKLWan config.json dict (Wan2.1 only)."""
    from kinetoscope.models.vae import PRESETS, VAEConfig

    if config.get("is_residual") or config.get("patch_size") or config.get("decoder_base_dim"):
        raise ValueError(
            "this AutoencoderKLWan is the Wan2.2 variant (is_residual / patch_size / "
            "decoder_base_dim set); only the Wan2.1 VAE is supported"
        )
    return VAEConfig(
        dim=config.get("base_dim", 96),
        z_dim=config.get("z_dim", 16),
        dim_mult=tuple(config.get("dim_mult", (1, 2, 4, 4))),
        num_res_blocks=config.get("num_res_blocks", 2),
        attn_scales=tuple(config.get("attn_scales", ())),
        temperal_downsample=tuple(config.get("temperal_downsample", (False, True, True))),
        latents_mean=config.get("latents_mean"),
        latents_std=config.get("latents_std"),
        tile_above=PRESETS["wan2.1"].tile_above,
    )


def vae_config_from_state(state: dict):
    """Returns the VAEConfig of a Wan2.1 VAE state dict (our names), read off its shapes.

    The original release has no VAE config file: levels are the encoder's down list split at
    its resamples; a resample with a `time_conv` also halves time. Wan2.1's published latent
    statistics come with a 16-channel latent (the only Wan2.1 VAE).
    """
    from kinetoscope.models.vae import PRESETS, VAEConfig

    dim = state["encoder.conv_in.weight"].shape[0]
    z_dim = state["post_quant_conv.weight"].shape[0]
    n = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    levels, temporal, attn, res = [[]], [], set(), 0
    for i in range(n):
        p = f"encoder.down.{i}."
        if p + "conv.weight" in state:  # a resample ends the level
            temporal.append(p + "time_conv.weight" in state)
            levels.append([])
        elif p + "conv2.weight" in state:
            levels[-1].append(state[p + "conv2.weight"].shape[0])
        elif p + "to_qkv.weight" in state:
            attn.add(1 / 2 ** (len(levels) - 1))
    res = len(levels[0])
    wan = PRESETS["wan2.1"] if z_dim == PRESETS["wan2.1"].z_dim else VAEConfig()
    return VAEConfig(
        dim=dim,
        z_dim=z_dim,
        dim_mult=tuple(level[-1] // dim for level in levels),
        num_res_blocks=res,
        attn_scales=tuple(sorted(attn, reverse=True)),
        temperal_downsample=tuple(temporal),
        latents_mean=wan.latents_mean,
        latents_std=wan.latents_std,
        tile_above=wan.tile_above,
    )


def vae_diffusers_config(cfg) -> dict:
    """Returns the diffusers AutoencoderKLWan config.json dict of a VAEConfig."""
    return {
        "_class_name": "AutoencoderKLWan",
        "base_dim": cfg.dim,
        "z_dim": cfg.z_dim,
        "dim_mult": list(cfg.dim_mult),
        "num_res_blocks": cfg.num_res_blocks,
        "attn_scales": list(cfg.attn_scales),
        "temperal_downsample": list(cfg.temperal_downsample),
        "dropout": cfg.dropout,
        "latents_mean": list(cfg.latents_mean or (0.0,) * cfg.z_dim),
        "latents_std": list(cfg.latents_std or (1.0,) * cfg.z_dim),
    }


# ---- UMT5: Wan's own T5 encoder (`models_t5_umt5-xxl-enc-bf16.pth`) <-> transformers ----------

T5_WAN_TO_HF: list[tuple[str, str]] = [
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.(q|k|v|o)\.", r"encoder.block.\1.layer.0.SelfAttention.\2."),
    (
        r"^blocks\.(\d+)\.pos_embedding\.embedding\.",
        r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.",
    ),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
    (r"^norm\.", "encoder.final_layer_norm."),
]


def t5_from_wan(state_dict: dict) -> dict:
    """Returns Wan's T5 encoder state dict under transformers UMT5EncoderModel names."""
    out = {_rename(k, T5_WAN_TO_HF, "UMT5EncoderModel"): v for k, v in state_dict.items()}
    out["encoder.embed_tokens.weight"] = out["shared.weight"]  # tied in transformers
    return out


def t5_config_from_wan(state_dict: dict):
    """Returns the UMT5Config of a Wan T5 encoder state dict, read off its tensor shapes."""
    import transformers

    vocab, dim = state_dict["token_embedding.weight"].shape
    buckets, heads = state_dict["blocks.0.pos_embedding.embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    return transformers.UMT5Config(
        vocab_size=vocab,
        d_model=dim,
        d_kv=state_dict["blocks.0.attn.q.weight"].shape[0] // heads,
        d_ff=state_dict["blocks.0.ffn.fc1.weight"].shape[0],
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=128,  # Wan's T5RelativeEmbedding max_dist
        feed_forward_proj="gated-gelu",  # Wan: fc1(x) * GELU_tanh(gate(x))
    )


# ---- writing folders ----------------------------------------------------------------------------


def save_safetensors(state: dict, folder: Path, stem: str, max_shard_bytes: int = 10 << 30):
    """Writes `stem`.safetensors, or numbered shards + `stem`.safetensors.index.json if large."""
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    shards, size = [{}], 0
    for key, value in state.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += nbytes
    if len(shards) == 1:
        save_tensors(state, folder / f"{stem}.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_tensors(shard, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_diffusers(pipe, out: str | Path, max_shard_bytes: int = 10 << 30) -> Path:
    """Returns `out` holding the pipeline in diffusers' WanPipeline layout.

    transformer/, vae/, text_encoder/, tokenizer/, scheduler/ and model_index.json. The
    scheduler written is the one diffusers ships with Wan2.1 (UniPC with flow sigmas) at the
    pipeline's shift; kinetoscope itself samples with its own Euler / DPM++ loop.
    """
    from kinetoscope.interop.wan import WanT5

    if not isinstance(pipe.text_encoder, WanT5):
        raise ValueError("only Wan2.1 pipelines (UMT5 text encoder) can be written for diffusers")
    out = Path(out)
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    version = {"_diffusers_version": "0.32.0"}  # the first diffusers with Wan2.1
    _write_json(out / "transformer/config.json", {**dit_diffusers_config(pipe.dit.cfg), **version})
    dit_state = dit_to_diffusers(pipe.dit.state_dict())
    save_safetensors(dit_state, out / "transformer", "diffusion_pytorch_model", max_shard_bytes)
    _write_json(out / "vae/config.json", {**vae_diffusers_config(pipe.vae.cfg), **version})
    vae_state = vae_to_diffusers(pipe.vae.state_dict(), pipe.vae.cfg.num_res_blocks)
    save_safetensors(vae_state, out / "vae", "diffusion_pytorch_model", max_shard_bytes)
    pipe.text_encoder.model.save_pretrained(out / "text_encoder")
    pipe.text_encoder.tokenizer.save_pretrained(out / "tokenizer")
    shift = pipe.defaults.shift or 3.0
    scheduler = {
        "_class_name": "UniPCMultistepScheduler",
        **version,
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": shift,
        "solver_order": 2,
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "final_sigmas_type": "zero",
    }
    _write_json(out / "scheduler/scheduler_config.json", scheduler)
    tokenizer_class = type(pipe.text_encoder.tokenizer).__name__
    index = {
        "_class_name": "WanPipeline",
        **version,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", tokenizer_class],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "_kinetoscope_defaults": asdict(pipe.defaults),
    }
    _write_json(out / "model_index.json", index)
    return out
