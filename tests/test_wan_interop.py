"""Wan2.1 folders (original and diffusers layouts) load into our pipeline and match diffusers.

The reference is built here from diffusers (WanTransformer3DModel, AutoencoderKLWan) and
transformers (UMT5EncoderModel + an offline word-level tokenizer) with tiny random configs,
saved as a diffusers folder and re-keyed to Wan's original release layout. Nothing is
downloaded. All comparisons run in float32 and must agree within 1e-4 relative error.
"""

import copy
import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kinetoscope.errors import UserError
from kinetoscope.interop import wan
from kinetoscope.pipeline import Pipeline
from kinetoscope.video import Video

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["a", "red", "circle", "moves", "left", "blue", "square", "over", "the", "sea"]
TEXT_DIM, Z = 16, 16  # Wan's VAE has 16 latent channels; the tiny one keeps Wan's latent stats


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---- the reference, built and saved offline ------------------------------------------------


def _tokenizer():
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def _perturb(model, scale=0.1):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def _reference():
    torch.manual_seed(0)
    transformer = _perturb(diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=Z,
        out_channels=Z, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=48, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    ))  # fmt: skip
    vae = _perturb(
        diffusers.AutoencoderKLWan(base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
        0.02,
    )
    config = transformers.UMT5Config(
        vocab_size=len(WORDS) + 3, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8,
    )  # fmt: skip
    text_encoder = transformers.UMT5EncoderModel(config).eval()
    return transformer, vae, text_encoder, _tokenizer()


def _to_wan_vae(state):
    """diffusers AutoencoderKLWan keys -> Wan2.1_VAE.pth keys (Wan's nn.Sequential indices)."""
    out = {}
    n_res = 1 + max(
        int(m[1]) for k in state if (m := re.search(r"up_blocks\.\d+\.resnets\.(\d+)", k))
    )
    for k, v in state.items():
        m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)", k)
        if m:
            j = int(m[3]) if m[3] is not None else n_res
            k = f"decoder.upsamples.{int(m[1]) * (n_res + 1) + j}.{m[4]}"
        for a, b in [
            (r"\.norm1\.", ".residual.0."),  # residual blocks first: conv_in becomes conv1 below
            (r"\.conv1\.", ".residual.2."),
            (r"\.norm2\.", ".residual.3."),
            (r"\.conv2\.", ".residual.6."),
            (r"^quant_conv\.", "conv1."),
            (r"^post_quant_conv\.", "conv2."),
            (r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."),
            (r"\.down_blocks\.", ".downsamples."),
            (r"\.mid_block\.resnets\.0\.", ".middle.0."),
            (r"\.mid_block\.attentions\.0\.", ".middle.1."),
            (r"\.mid_block\.resnets\.1\.", ".middle.2."),
            (r"\.norm_out\.", ".head.0."),
            (r"\.conv_out\.", ".head.2."),
            (r"\.conv_shortcut\.", ".shortcut."),
        ]:
            k = re.sub(a, b, k)
        out[k] = v
    return out


def _to_wan_t5(state):
    """transformers UMT5EncoderModel keys -> models_t5_umt5-xxl-enc-bf16.pth keys (wan/t5.py)."""
    out = {}
    for k, v in state.items():
        if k == "encoder.embed_tokens.weight":
            continue
        for a, b in [
            (r"^shared\.", "token_embedding."),
            (r"^encoder\.final_layer_norm\.", "norm."),
            (r"layer\.0\.SelfAttention\.relative_attention_bias\.", "pos_embedding.embedding."),
            (r"layer\.0\.SelfAttention\.", "attn."),
            (r"layer\.0\.layer_norm\.", "norm1."),
            (r"layer\.1\.layer_norm\.", "norm2."),
            (r"layer\.1\.DenseReluDense\.wi_0\.", "ffn.gate.0."),
            (r"layer\.1\.DenseReluDense\.wi_1\.", "ffn.fc1."),
            (r"layer\.1\.DenseReluDense\.wo\.", "ffn.fc2."),
            (r"^encoder\.block\.", "blocks."),
        ]:
            k = re.sub(a, b, k)
        out[k] = v
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ref():
    return _reference()


@pytest.fixture(scope="module")
def folders(ref, tmp_path_factory):
    """(diffusers folder, original folder) holding the same reference weights."""
    transformer, vae, text_encoder, tokenizer = ref
    root = tmp_path_factory.mktemp("wan")
    d = root / "Wan2.1-T2V-tiny-Diffusers"
    pipe = diffusers.WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )  # fmt: skip
    pipe.save_pretrained(d, max_shard_size="30KB")  # sharded transformer + index json

    o = root / "Wan2.1-T2V-tiny"
    o.mkdir()
    cfg = transformer.config
    (o / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "model_type": "t2v", "text_len": 512, "in_dim": Z,
        "dim": 24, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "out_dim": Z,
        "num_heads": 2, "num_layers": 2, "eps": 1e-6, "text_dim": TEXT_DIM,
    }))  # fmt: skip
    from kinetoscope.interop.wan_dit_keys import from_diffusers  # Wan's names are ours

    dit = from_diffusers(transformer.state_dict())
    keys = sorted(dit)
    stem = "diffusion_pytorch_model-0000{}-of-00002.safetensors"
    halves = {stem.format(1): keys[: len(keys) // 2], stem.format(2): keys[len(keys) // 2 :]}
    for name, ks in halves.items():
        save_file({k: dit[k].contiguous() for k in ks}, str(o / name))
    index = {"weight_map": {k: name for name, ks in halves.items() for k in ks}}
    (o / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    torch.save(_to_wan_vae(vae.state_dict()), o / "Wan2.1_VAE.pth")
    t5 = {k: v.to(torch.bfloat16) for k, v in _to_wan_t5(text_encoder.state_dict()).items()}
    torch.save(t5, o / "models_t5_umt5-xxl-enc-bf16.pth")  # bf16, as Wan ships it
    tokenizer.save_pretrained(o / "google" / "umt5-xxl")
    return d, o


@pytest.fixture(scope="module")
def pipes(folders):
    d, o = folders
    load = lambda p: wan.load_pipeline(p, device="cpu", dtype=torch.float32)
    return load(d), load(o)


# ---- parity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [0, 1], ids=["diffusers", "original"])
def test_transformer_forward_matches_diffusers(ref, pipes, layout):
    dit = pipes[layout].dit
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, Z, 3, 4, 6, generator=g)
    ctx = torch.randn(2, 7, TEXT_DIM, generator=g)
    t = torch.tensor([0.25, 0.937])
    padded = torch.nn.functional.pad(ctx, (0, 0, 0, 512 - 7))  # Wan's zero-padded 512 tokens
    with torch.no_grad():
        want = ref[0](x, t * 1000, padded, return_dict=False)[0]
        got = dit(x, t, ctx)  # no mask: padded to 512 with zeros that are attended, as Wan
        as_pipeline = dit(x, t, padded, torch.ones(2, 512, dtype=torch.bool))  # WanT5's output
    assert rel_err(got, want) < 1e-4
    assert rel_err(as_pipeline, want) < 1e-4


@pytest.mark.parametrize("layout", [0, 1], ids=["diffusers", "original"])
def test_vae_encode_and_chunked_decode_match_diffusers(ref, pipes, layout):
    ref_vae, ours = ref[1], pipes[layout].vae
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 17, 32, 48, generator=g) * 2 - 1  # 17 frames -> 5 latent frames
    mean = torch.tensor(ref_vae.config.latents_mean).view(1, Z, 1, 1, 1)
    std = torch.tensor(ref_vae.config.latents_std).view(1, Z, 1, 1, 1)
    with torch.no_grad():
        want_z = (ref_vae.encode(x).latent_dist.mean - mean) / std
        got_z = ours.encode(x)
        want_x = ref_vae.decode(want_z * std + mean).sample
        got_x = torch.cat(list(ours.decode_chunks(want_z)), dim=2)  # one latent frame at a time
    assert got_z.shape == (1, Z, 5, 4, 6)
    assert rel_err(got_z, want_z) < 1e-4
    assert got_x.shape == want_x.shape == (1, 3, 17, 32, 48)
    assert rel_err(got_x, want_x) < 1e-4


@pytest.mark.parametrize("layout", [0, 1], ids=["diffusers", "original"])
def test_vae_decodes_the_native_480x832_whole_and_720p_in_tiles(pipes, layout):
    # Whole is the reference's function; tiles blend their overlaps (and cost 2.4x at 480p).
    vae = pipes[layout].vae
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for (h, w), tiled in (((60, 104), False), ((90, 160), True)):
            z = torch.randn(1, Z, 1, h, w, generator=g)
            same = torch.equal(vae.decode(z), vae.decode(z, tile=False))
            assert same != tiled, (h, w)


@pytest.mark.parametrize("layout", [0, 1], ids=["diffusers", "original"])
def test_text_encoding_matches_diffusers(ref, pipes, layout):
    _, _, text_encoder, tokenizer = ref
    if layout == 1:  # Wan ships this encoder in bf16: the reference gets the same rounded weights
        text_encoder = copy.deepcopy(text_encoder)
        with torch.no_grad():
            for p in text_encoder.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    ref_pipe = diffusers.WanPipeline(tokenizer, text_encoder, ref[1], None, ref[0])
    prompts = ["a red circle moves left", ""]
    want, _ = ref_pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                     max_sequence_length=512)  # fmt: skip
    emb, mask = pipes[layout].text_encoder(prompts)
    assert emb.shape == want.shape == (2, 512, TEXT_DIM) and mask.all()  # Wan attends to all 512
    assert rel_err(emb, want) < 1e-4


def test_full_sampling_with_cfg_matches_a_diffusers_loop(ref, pipes):
    """generate() == diffusers' WanPipeline loop (FlowMatchEuler, same shift and sigmas)."""
    transformer, vae, text_encoder, tokenizer = ref
    pipe = pipes[0]
    steps, guidance, seed, prompt = 4, 5.0, 3, "a blue square moves over the sea"
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=pipe.defaults.shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    ref_pipe = diffusers.WanPipeline(tokenizer, text_encoder, vae, scheduler, transformer)
    cond, uncond = ref_pipe.encode_prompt(prompt, negative_prompt="", max_sequence_length=512)
    latents = torch.randn(1, Z, 2, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for t in scheduler.timesteps:
            tt = t.expand(1)
            v_c = transformer(latents, tt, cond, return_dict=False)[0]
            v_u = transformer(latents, tt, uncond, return_dict=False)[0]
            latents = scheduler.step(v_u + guidance * (v_c - v_u), t, latents).prev_sample
        mean = torch.tensor(vae.config.latents_mean).view(1, Z, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, Z, 1, 1, 1)
        want_x = vae.decode(latents / (1.0 / std) + mean).sample

    p = pipe.encode_prompt(prompt, expand=False)
    z = pipe.sample_latents(p, (2, 32, 32), torch.Generator().manual_seed(seed), steps=steps,
                            guidance=guidance)  # fmt: skip
    assert rel_err(z, latents) < 1e-4  # both sample normalised latents
    with torch.no_grad():
        got_x = pipe.vae.decode(z)
    assert rel_err(got_x, want_x) < 1e-4
    # The user-facing call gives the same frames (uint8; a rounding flip at most).
    video = pipe.generate(prompt, frames=5, size=(32, 32), steps=steps, guidance=guidance,
                          seed=seed, expand=False, progress=False)  # fmt: skip
    want_frames = Video.from_tensor(want_x[0]).frames
    assert video.frames.shape == want_frames.shape == (5, 32, 32, 3)
    assert np.abs(video.frames.astype(int) - want_frames).max() <= 1


# ---- loading ------------------------------------------------------------------------------------


def test_both_layouts_load_the_same_tensors(pipes):
    (a, b) = pipes
    for name in ("dit", "vae"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_defaults_and_from_pretrained_hook(folders):
    pipe = Pipeline.from_pretrained(folders[1], device="cpu", dtype=torch.float32)
    d = pipe.defaults
    assert (d.width, d.height, d.fps, d.steps, d.guidance, d.shift) == (832, 480, 16, 50, 5.0, 3.0)
    assert pipe.num_frames(None, None, d.fps) == 81  # the default clip is Wan's 81 frames
    assert d.window >= 21  # ... made in one DiT window
    assert wan.wan_defaults("720p").shift == 5.0


def test_bf16_load_casts_big_modules_and_keeps_vae_float32(folders):
    pipe = wan.load_pipeline(folders[0], device="cpu", dtype=torch.bfloat16)
    assert pipe.dit.patch_embedding.weight.dtype == torch.bfloat16
    assert next(pipe.text_encoder.parameters()).dtype == torch.bfloat16
    assert pipe.vae.decoder.conv_in.weight.dtype == torch.float32
    assert not any(t.is_meta for t in pipe.dit.state_dict().values())


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_incomplete_folder_names_the_missing_file(folders, tmp_path):
    o = _copy(folders[1], tmp_path / "orig")
    (o / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(UserError, match="Wan2.1_VAE.pth"):
        wan.load_pipeline(o, device="cpu")
    d = _copy(folders[0], tmp_path / "diff")
    shard = sorted((d / "transformer").glob("*-00002-of-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(UserError, match=shard.name):
        wan.load_pipeline(d, device="cpu")
    shutil.rmtree(d / "tokenizer")
    with pytest.raises(UserError, match="tokenizer"):
        wan.load_text(d, "diffusers", torch.float32)


def test_other_models_are_refused(folders, tmp_path):
    o = _copy(folders[1], tmp_path / "i2v")
    cfg = json.loads((o / "config.json").read_text())
    (o / "config.json").write_text(json.dumps({**cfg, "model_type": "i2v"}))
    with pytest.raises(UserError, match="i2v"):
        wan.load_pipeline(o, device="cpu")
    # An image-to-video transformer under a t2v config: its extra keys give it away.
    (o / "config.json").write_text(json.dumps(cfg))
    first = o / "diffusion_pytorch_model-00001-of-00002.safetensors"
    state = load_file(str(first))
    save_file({**state, "img_emb.proj.0.weight": torch.zeros(2)}, str(first))
    with pytest.raises(UserError, match="img_emb"):
        wan.load_pipeline(o, device="cpu")
    d = _copy(folders[0], tmp_path / "other")
    t = json.loads((d / "transformer/config.json").read_text())
    (d / "transformer/config.json").write_text(json.dumps({**t, "_class_name": "FluxTransformer"}))
    with pytest.raises(UserError, match="FluxTransformer"):
        wan.load_pipeline(d, device="cpu")
    index = json.loads((d / "model_index.json").read_text())
    (d / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "WanImageToVideoPipeline"})
    )
    with pytest.raises(UserError, match="image-to-video"):
        wan.load_pipeline(d, device="cpu")


# ---- convert ------------------------------------------------------------------------------------


def _tensors(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_convert_round_trips_diffusers_through_our_format(folders, tmp_path):
    from kinetoscope.cli import main

    src = folders[0]
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert main(["convert", str(src), "--out", str(ours), "--name", "my-wan"]) == 0
    config = json.loads((ours / "config.json").read_text())
    assert config["format"] == "kinetoscope-pipeline" and config["name"] == "my-wan"
    assert "Wan2.1 license" in (ours / "README.md").read_text()
    assert main(["convert", str(ours), "--out", str(back), "--format", "diffusers"]) == 0
    for sub in ("transformer", "vae", "text_encoder"):
        a, b = _tensors(src / sub), _tensors(back / sub)
        assert a.keys() == b.keys(), sub
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a), sub
    # Both written folders load and run: ours through the pipeline folder format, diffusers back.
    p1 = Pipeline.from_pretrained(ours, device="cpu", dtype=torch.float32)
    # (from_pretrained needs `accelerate` for this model; the same check without it:)
    config = json.loads((back / "transformer/config.json").read_text())
    p2 = diffusers.WanTransformer3DModel.from_config(config).eval()
    p2.load_state_dict(_tensors(back / "transformer"), strict=True)
    x, ctx = torch.randn(1, Z, 1, 4, 4), torch.randn(1, 512, TEXT_DIM)
    with torch.no_grad():
        want = p2(x, torch.tensor([500.0]), ctx, return_dict=False)[0]
        got = p1.dit(x, torch.tensor([0.5]), ctx)
    assert rel_err(got, want) < 1e-4
    emb, _ = p1.text_encoder(["a red circle"])
    assert emb.shape == (1, 512, TEXT_DIM)
    # Refuses to overwrite a folder.
    assert main(["convert", str(src), "--out", str(ours)]) == 2
