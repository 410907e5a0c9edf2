"""Load a Wan2.1 text-to-video checkpoint folder into our own VAE, DiT and text encoder.

Two layouts are found in the wild; both load from a local folder, nothing is downloaded:

  original (Wan-AI/Wan2.1-T2V-1.3B, -14B)       diffusers (Wan-AI/Wan2.1-T2V-1.3B-Diffusers)
    config.json              (WanModel)            model_index.json       (WanPipeline)
    diffusion_pytorch_model.safetensors            transformer/  config.json + weights
      or -0000N-of-0000M shards + .index.json      vae/          config.json + weights
      or a transformer .pth                        text_encoder/ UMT5EncoderModel
    Wan2.1_VAE.pth                                 tokenizer/
    models_t5_umt5-xxl-enc-bf16.pth                scheduler/    (ignored: we sample ourselves)
    google/umt5-xxl/         (tokenizer)

Every module is built on the `meta` device and its tensors are assigned straight from the file
(`load_state_dict(assign=True)`), one tensor converted at a time, so a 14B model is never held
twice in memory. Our DiT and VAE use Wan's math; only names change (interop/wan_dit_keys.py,
interop/wan_vae_keys.py). tests/test_wan_interop.py proves outputs equal diffusers' within 1e-4.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open

from kinetoscope.errors import UserError
from kinetoscope.interop import convert, wan_dit_keys, wan_vae_keys
from kinetoscope.models.text import T5TextEncoder

# Wan2.1's default negative prompt (its shared_config.sample_neg_prompt). Not used by default:
# the pipeline's unconditional branch is "" as in diffusers' WanPipeline; pass it yourself as
# null text if you want Wan's own sampling setup (see docs/wan.md).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
VAE_FILE = "Wan2.1_VAE.pth"
TOKENIZER_DIR = "google/umt5-xxl"
DIT_STEM = "diffusion_pytorch_model"


def wan_defaults(size: str = "480p"):
    """Returns PipelineDefaults for Wan2.1 T2V at "480p" (832x480) or "720p" (1280x720).

    81 frames at 16 fps (5.06 s), 50 steps, guidance 5.0, flow shift 3.0 at 480p and 5.0 at
    720p (the values diffusers' Wan docs and Wan's repo recommend). Euler: we do not implement
    Wan's UniPC solver; at 50 steps Euler on the same shifted grid is the plain flow-ODE solve.
    One window of 21 latent frames covers the whole default clip.
    """
    from kinetoscope.pipeline import PipelineDefaults

    sizes = {"480p": (832, 480, 3.0), "720p": (1280, 720, 5.0)}
    if size not in sizes:
        raise ValueError(f"size must be one of {sorted(sizes)}, got {size!r}")
    w, h, shift = sizes[size]
    return PipelineDefaults(
        width=w, height=h, fps=16.0, seconds=5.0, steps=50, guidance=5.0, shift=shift,
        sampler="euler", window=21, overlap=3,
    )  # fmt: skip


class WanT5(T5TextEncoder):
    """Returns (emb [B, 512, D] zero-padded, mask [B, 512] all True): UMT5 as Wan conditions.

    Wan's DiT attends to all 512 context positions, the zero padding included (zeros pass the
    text embedding MLP and become real keys), so the mask handed to the DiT must be all True
    for its output to equal Wan's. The padded rows of `emb` are still exactly zero.
    """

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        emb, mask = super().forward(texts)
        return emb, torch.ones_like(mask)


# ---- finding files --------------------------------------------------------------------------


def detect_layout(path: Path) -> str:
    """Returns "diffusers" or "original" for a Wan2.1 folder, else raises UserError."""
    if (path / "model_index.json").is_file():
        return "diffusers"
    if (path / VAE_FILE).is_file() or (path / T5_FILE).is_file() or _dit_files(path, False):
        return "original"
    raise UserError(
        f"{path}: not a Wan2.1 folder (no model_index.json, no {VAE_FILE}, "
        f"no {DIT_STEM}*.safetensors)"
    )


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{path.parent}: incomplete Wan2.1 folder: {path.name} ({what}) is missing")
    return path


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(_need(path, what).read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def _dit_files(folder: Path, required: bool = True) -> list[Path]:
    """Returns the DiT weight files of a folder: one file, index-listed shards, or .pth files."""
    index = folder / f"{DIT_STEM}.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, "shard index")["weight_map"]
        return [_need(folder / name, "a weight shard") for name in sorted(set(weight_map.values()))]
    single = folder / f"{DIT_STEM}.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(folder.glob(f"{DIT_STEM}-*.safetensors"))
    if shards:
        return shards
    skip = {VAE_FILE, T5_FILE}
    pth = sorted(p for p in folder.glob("*.pth") if p.name not in skip and "clip" not in p.name)
    if pth or not required:
        return pth
    raise UserError(
        f"{folder}: incomplete Wan2.1 folder: no transformer weights ({DIT_STEM}.safetensors, "
        f"its shards + {DIT_STEM}.safetensors.index.json, or a .pth)"
    )


def read_state_dict(
    files: list[Path], dtype: torch.dtype | None = None, device="cpu"
) -> dict[str, torch.Tensor]:
    """Returns the merged tensors of .safetensors / .pth files, each cast to dtype as it is read.

    safetensors tensors are read one by one (straight onto `device`); .pth files are memory-
    mapped, so a tensor only occupies memory once it is cast or moved.
    """
    out = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt", device=str(device)) as fh:
                    for k in fh.keys():  # noqa: SIM118 (a handle, not a dict)
                        t = fh.get_tensor(k)
                        out[k] = t if dtype is None or not t.is_floating_point() else t.to(dtype)
                continue
            state = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # truncated or foreign file: one line, not a traceback
            raise UserError(f"cannot read weights {f}: {str(e).splitlines()[0]}") from None
        for k, t in state.items():
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[k] = t.to(device)
    return out


def assign(module: torch.nn.Module, state: dict, what: str, where: Path) -> torch.nn.Module:
    """Returns the meta-built module with its tensors taken from `state`, checked by name/shape."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        show = lambda ks: ", ".join(ks[:4]) + (f", ... ({len(ks)} in all)" if len(ks) > 4 else "")
        raise UserError(
            f"{where}: the {what} weights do not fit a Wan2.1 text-to-video model "
            + (f"(missing {show(missing)}) " if missing else "")
            + (f"(unexpected {show(extra)}) " if extra else "")
            + "- an incomplete download or another model"
        )
    for k, v in own.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise UserError(
                f"{where}: {what} tensor {k} is {tuple(state[k].shape)} but its config says "
                f"{tuple(v.shape)}: config and weights are of different models"
            )
    module.load_state_dict(state, strict=True, assign=True)
    return module


# ---- the three modules ------------------------------------------------------------------------


def load_dit(path: Path, layout: str, dtype: torch.dtype | None, device="cpu"):
    """Returns our DiT with the folder's transformer weights (dtype None: as stored)."""
    from kinetoscope.models.dit import DiT

    folder = path / "transformer" if layout == "diffusers" else path
    config = _read_json(folder / "config.json", "transformer config")
    name = config.get("_class_name")
    try:
        if layout == "diffusers":
            if name != "WanTransformer3DModel":
                raise UserError(f"{folder}: transformer is a {name}, not WanTransformer3DModel")
            cfg = wan_dit_keys.config_from_diffusers(config)
            to_ours = wan_dit_keys.from_diffusers
        else:
            if name not in (None, "WanModel"):
                raise UserError(f"{folder / 'config.json'}: a {name}, not a Wan2.1 WanModel")
            cfg = wan_dit_keys.config_from_original(config)
            to_ours = wan_dit_keys.to_kinetoscope  # also takes ComfyUI-style diffusers files
        state = to_ours(read_state_dict(_dit_files(folder), dtype, device))
    except ValueError as e:  # image-to-video configs or keys
        raise UserError(f"{folder}: {e}") from None
    with torch.device("meta"):
        dit = DiT(cfg)
    return assign(dit, state, "transformer", folder)


def load_vae(path: Path, layout: str, dtype: torch.dtype | None, device="cpu"):
    """Returns our VAE with Wan2.1's VAE weights; latent mean/std from the config or preset."""
    from kinetoscope.models.vae import VAE

    if layout == "diffusers":
        folder = path / "vae"
        config = _read_json(folder / "config.json", "VAE config")
        if config.get("_class_name") != "AutoencoderKLWan":
            raise UserError(f"{folder}: VAE is a {config.get('_class_name')}, not AutoencoderKLWan")
        try:
            cfg = convert.vae_config_from_diffusers(config)
        except ValueError as e:
            raise UserError(f"{folder}: {e}") from None
        files = _dit_files(folder)  # same file naming as the transformer
    else:
        files = [_need(path / VAE_FILE, "the VAE")]
    state = wan_vae_keys.to_ours(read_state_dict(files, dtype, device))
    if layout != "diffusers":
        try:
            cfg = convert.vae_config_from_state(state)
        except (KeyError, ValueError) as e:
            raise UserError(f"{files[0]}: not a Wan2.1 VAE ({e})") from None
    z = cfg.z_dim
    for name, values in (("latents_mean", cfg.latents_mean), ("latents_std", cfg.latents_std)):
        default = 0.0 if name == "latents_mean" else 1.0
        state[name] = torch.tensor(values or (default,) * z, device=device).view(1, z, 1, 1, 1)
    with torch.device("meta"):
        vae = VAE(cfg)
    return assign(vae, state, "VAE", path).channels_last_()  # assign took the file's layout


def load_text(path: Path, layout: str, dtype: torch.dtype | None, device="cpu") -> WanT5:
    """Returns the UMT5 text encoder with Wan's tokenizer (dtype None: as stored)."""
    if layout == "diffusers":
        folder = _need(path / "text_encoder", "the text encoder")
        _need(folder / "config.json", "text encoder config")
        tokenizer = _need(path / "tokenizer", "the tokenizer")
        return WanT5.from_pretrained(folder, dtype=dtype or "auto", tokenizer_path=tokenizer)
    import transformers

    tokenizer_dir = _need(path / TOKENIZER_DIR, "the UMT5 tokenizer")
    file = path / T5_FILE
    if not file.is_file() and file.with_suffix(".safetensors").is_file():
        file = file.with_suffix(".safetensors")
    wan_state = read_state_dict([_need(file, "the UMT5 text encoder")], dtype, device)
    try:
        config = convert.t5_config_from_wan(wan_state)
        state = convert.t5_from_wan(wan_state)
    except (KeyError, ValueError) as e:
        raise UserError(f"{file}: not Wan's UMT5 encoder ({e})") from None
    with torch.device("meta"):
        model = transformers.UMT5EncoderModel(config)
    assign(model, state, "text encoder", file)
    model.tie_weights()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    return WanT5(model, tokenizer, max_len=512)


def load_pipeline(
    path: str | Path,
    device=None,
    dtype: torch.dtype | None = None,
    keep_dtype: bool = False,
    size: str = "480p",
):
    """Returns a Pipeline running the Wan2.1 text-to-video folder at `path`.

    dtype is the compute dtype (default bfloat16: autocast; float32: plain). The DiT and the
    text encoder are stored in it too (a 14B DiT is 28 GB in bf16, not 57 GB); the VAE stays
    float32. `keep_dtype` keeps every tensor as stored in the files (what `convert` uses, so
    weights round-trip bit for bit).
    """
    from kinetoscope.pipeline import Pipeline, default_device

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder")
    dtype = dtype or torch.bfloat16
    device = torch.device(device or default_device())
    layout = detect_layout(path)
    if layout == "diffusers":
        index = _read_json(path / "model_index.json", "pipeline index")
        kind = index.get("_class_name")
        if kind != "WanPipeline":
            what = "an image-to-video model" if "ImageToVideo" in str(kind) else f"a {kind}"
            raise UserError(f"{path} is {what}; only Wan2.1 text-to-video (WanPipeline) loads")
    else:
        config = _read_json(path / "config.json", "transformer config")
        if config.get("model_type", "t2v") != "t2v":
            raise UserError(
                f"{path} is a Wan2.1 {config['model_type']} model; only text-to-video (t2v) loads"
            )
    big = None if keep_dtype else dtype
    vae_dtype = None if keep_dtype else torch.float32
    # Check every file exists before reading gigabytes of any.
    _dit_files(path / "transformer" if layout == "diffusers" else path)
    if layout == "original":
        _need(path / VAE_FILE, "the VAE")
        _need(path / TOKENIZER_DIR, "the UMT5 tokenizer")
        if not (path / T5_FILE).with_suffix(".safetensors").is_file():
            _need(path / T5_FILE, "the UMT5 text encoder")
    load_device = device if device.type == "cuda" else "cpu"
    dit = load_dit(path, layout, big, load_device)
    vae = load_vae(path, layout, vae_dtype, load_device)
    text = load_text(path, layout, big, load_device)
    if text.dim != dit.cfg.text_dim:
        raise UserError(f"{path}: text encoder width {text.dim} != DiT text_dim {dit.cfg.text_dim}")
    name = {1536: "wan2.1-t2v-1.3b", 5120: "wan2.1-t2v-14b"}.get(dit.cfg.dim, path.name)
    defaults = wan_defaults(size)
    return Pipeline(vae, dit, text, defaults, device, dtype, name=name)


# ---- our own folder format with a UMT5 text encoder (used by pretrained.save / load_folder) ----


def save_text(text_encoder: WanT5, path: Path) -> dict:
    """Returns the config.json `text` entry after writing the encoder + tokenizer to path/text/."""
    text_encoder.model.save_pretrained(path / "text")
    text_encoder.tokenizer.save_pretrained(path / "text")
    return {"kind": "wan-umt5", "max_len": text_encoder.max_len}


def load_text_folder(path: Path, entry: dict, dtype: torch.dtype | None) -> WanT5:
    """Returns the UMT5 encoder a pipeline folder's `text` entry (kind "wan-umt5") describes."""
    folder = _need(path / "text", "the UMT5 text encoder")
    return WanT5.from_pretrained(folder, dtype=dtype or "auto", max_len=entry.get("max_len", 512))


def convert_folder(
    src: str | Path,
    out: str | Path,
    fmt: str = "kinetoscope",
    weights_dtype=None,
    name=None,
    vae: str | Path | None = None,
) -> Path:
    """Returns `out` holding the model at `src` rewritten as a kinetoscope or diffusers folder.

    `name` (default: the source's) is the model's name in the folder's config.json.
    `vae`: a VAE run or folder to use instead of the source's, whose encoder must be the
    source's exactly (a decoder fine-tuned with `model.freeze_encoder=true`).

    Tensors are kept in their stored dtype, so diffusers -> kinetoscope -> diffusers round-trips
    them exactly; `weights_dtype` (kinetoscope format) stores matrices and kernels in that dtype.
    """
    from kinetoscope.pretrained import load

    if fmt not in ("kinetoscope", "diffusers"):
        raise UserError(f"--format must be kinetoscope or diffusers, got {fmt!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; pick a new folder")
    src_path = Path(src)
    if src_path.is_dir() and (
        (src_path / "model_index.json").is_file() or (src_path / VAE_FILE).is_file()
    ):
        pipe = load_pipeline(src_path, device="cpu", dtype=torch.float32, keep_dtype=True)
    else:
        pipe = load(src, device="cpu", dtype=torch.float32)
    pipe.name = name or pipe.name
    if vae is not None:
        swap_decoder(pipe, vae)
    if fmt == "diffusers":
        try:
            return convert.save_diffusers(pipe, out)
        except ValueError as e:
            raise UserError(f"{src}: {e}") from None
    return pipe.save_pretrained(out, card=_card(pipe, src), weights_dtype=weights_dtype)


def swap_decoder(pipe, src: str | Path) -> None:
    """Puts the VAE at `src` (a run or a folder) into `pipe` if it encodes exactly as the pipe's
    own VAE does: the DiT learned those latents, so only the decoder may change (in its weights,
    or in its width: `VAEConfig.dec_dim_mult`)."""
    from kinetoscope.models.vae import VAE
    from kinetoscope.pretrained import vae_config, vae_weights

    if not Path(src).exists():
        raise UserError(f"--vae {src}: no such VAE run or folder")
    vae = VAE(replace(pipe.vae.cfg, dec_dim_mult=vae_config(src).dec_dim_mult))
    new, own = vae_weights(src), vae.state_dict()
    if new.keys() != own.keys() or any(new[k].shape != own[k].shape for k in own):
        raise UserError(f"--vae {src}: not the same VAE architecture as {pipe.name}'s")
    own = pipe.vae.state_dict()
    encodes = [k for k in own if k.startswith(("encoder.", "quant_conv.", "latents_"))]
    if any(not torch.equal(new[k].to(own[k].dtype), own[k]) for k in encodes):
        raise UserError(
            f"--vae {src}: its encoder is not the one {pipe.name}'s DiT was trained on; only a "
            "VAE trained from it with model.freeze_encoder=true keeps its latents"
        )
    vae.load_state_dict(new)
    param = next(pipe.vae.parameters())
    pipe.vae = vae.to(param.device, param.dtype).eval().requires_grad_(False)


def _card(pipe, src) -> str:
    """Returns a starting model card: what the model is, where it came from, its defaults."""
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    d = pipe.defaults
    shift = "by token count" if d.shift is None else f"{d.shift:g}"
    if isinstance(pipe.text_encoder, WanT5):
        origin = (
            f"Wan2.1 text-to-video weights converted from `{src}` by `kinetoscope convert`; the\n"
            "Wan2.1 license (Apache-2.0) and model card of the source apply.\n"
        )
        text = f"UMT5 encoder ({count(pipe.text_encoder) / 1e3:.2f} B parameters) in text/"
    else:
        origin = (
            f"A kinetoscope model written from `{src}` by `kinetoscope convert`; add how it was\n"
            "trained (data, commands, steps, wall time) and what it was measured to do.\n"
        )
        text = f"byte-level encoder, {count(pipe.text_encoder):.2f} M parameters"
    return (
        f"# {pipe.name}\n\n{origin}\n"
        f"- DiT: {count(pipe.dit):.2f} M parameters, {pipe.dit.cfg.num_layers} layers, "
        f"dim {pipe.dit.cfg.dim}\n"
        f"- VAE: causal 3D VAE, {count(pipe.vae):.2f} M parameters\n"
        f"- text: {text}\n"
        f"- defaults: {d.width}x{d.height}, {d.fps:g} fps, {d.seconds:g} s, {d.steps} steps "
        f"({d.sampler}, shift {shift}), guidance {d.guidance:g}\n"
    )
