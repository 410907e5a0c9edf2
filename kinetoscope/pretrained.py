"""Where a Pipeline's weights come from: the bundled folder format, training runs, Wan2.1.

A pipeline folder (what `Pipeline.save_pretrained` writes and what ships as
`kinetoscope/weights/shapeworld-tiny/`):

  config.json        {"format": "kinetoscope-pipeline", "version": 1, "name": ...,
                      "vae": VAEConfig, "dit": DiTConfig, "text": {"kind": "byte", "config":
                      ByteTextConfig}, "defaults": PipelineDefaults}  (every field written out)
  vae.safetensors    VAE state dict (with its latent mean / std buffers)
  dit.safetensors    DiT state dict
  text.safetensors   ByteTextEncoder state dict
  README.md          the model card

A training run (`kinetoscope train` with model.stage=dit) is read as it lies: the newest
`step_XXXXXX/` checkpoint, its EMA weights over the raw ones, its config.yaml for the presets,
and the VAE run its `model.vae_path` names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from kinetoscope.errors import UserError
from kinetoscope.files import save_tensors

FORMAT, VERSION = "kinetoscope-pipeline", 1
WEIGHTS = Path(__file__).parent / "weights"
BUNDLED = ("shapeworld-tiny",)


def load(name_or_path: str | Path, device=None, dtype: torch.dtype | None = None):
    """Returns a Pipeline from a bundled name, a pipeline folder, a training run or Wan2.1."""
    name = str(name_or_path)
    if name in BUNDLED:
        path = WEIGHTS / name
        if not (path / "config.json").is_file():
            raise UserError(
                f"bundled model {name} is not in this install yet; "
                "pass --model PATH to a trained run"
            )
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise UserError(
                f"model {name}: no such folder; pass 'shapeworld-tiny', a folder written by "
                "`kinetoscope train` or Pipeline.save_pretrained, or a Wan2.1 folder"
            )
        if not path.is_dir():
            raise UserError(f"model {name}: is a file; a model is a folder")
    dtype = dtype or torch.bfloat16
    if _is_pipeline(path):
        return load_folder(path, device, dtype)
    if (path / "model_index.json").is_file() or (path / "Wan2.1_VAE.pth").is_file():
        return load_wan(path, device, dtype)
    if (path / "state.pt").is_file() or any(path.glob("step_*/state.pt")):
        return load_run(path, device, dtype)
    raise UserError(
        f"{path}: not a model folder (no config.json of a saved pipeline, no step_XXXXXX/ "
        "checkpoints of a training run, no Wan2.1 files)"
    )


def _is_pipeline(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _build(cls, data: dict):
    """Returns the dataclass `cls` from a dict, ignoring keys this version does not know."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _read_weights(path: Path, device) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # a truncated or foreign file: one line, not a traceback
        raise UserError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from None


def load_weights(module: torch.nn.Module, state: dict, error: str) -> None:
    """load_state_dict (strict), raising `error` as a one-line UserError when the weights are
    another architecture's (missing, unexpected or differently shaped tensors)."""
    try:
        module.load_state_dict(state)
    except RuntimeError:
        raise UserError(error) from None


def load_folder(path: Path, device=None, dtype: torch.dtype = torch.bfloat16):
    """Returns the Pipeline of a folder written by `save`."""
    from kinetoscope.models.dit import DiT, DiTConfig
    from kinetoscope.models.text import ByteTextConfig, ByteTextEncoder
    from kinetoscope.models.vae import VAE, VAEConfig
    from kinetoscope.pipeline import Pipeline, PipelineDefaults

    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("version", 0) > VERSION:
        raise UserError(f"{path} was saved by a newer kinetoscope (format {cfg['version']})")
    if cfg["text"].get("kind") not in ("byte", "wan-umt5"):
        raise UserError(f"{path}: text encoder kind {cfg['text'].get('kind')!r} is not supported")
    # Built normally, not on `meta` + assign: that left the bundled model at 390 MiB resident
    # after loading against 293 MiB (measured), though it skips the random init.
    vae = VAE(_build(VAEConfig, cfg["vae"]))
    dit = DiT(_build(DiTConfig, cfg["dit"]))
    modules = [(vae, "vae"), (dit, "dit")]
    if cfg["text"]["kind"] == "wan-umt5":  # Wan2.1's UMT5 in text/ (kinetoscope.interop.wan)
        from kinetoscope.interop.wan import load_text_folder

        text = load_text_folder(path, cfg["text"], None)
    else:
        text = ByteTextEncoder(_build(ByteTextConfig, cfg["text"]["config"]))
        modules.append((text, "text"))
    for module, stem in modules:
        file = path / f"{stem}.safetensors"
        mismatch = f"{file}: its weights do not match the folder's config.json"
        load_weights(module, _read_weights(file, "cpu"), mismatch)
    defaults = _build(PipelineDefaults, cfg.get("defaults", {}))
    name = cfg.get("name") or path.name
    return Pipeline(vae, dit, text, defaults, device, dtype, name=name)


def save(
    pipe, path: str | Path, card: str | None = None, weights_dtype: torch.dtype | None = None
) -> Path:
    """Returns `path` holding the pipeline's weights, config.json and README.md model card.

    `weights_dtype` (e.g. bfloat16, to ship a model at half the size) stores weight matrices
    and kernels in that dtype; norms, biases and latent statistics stay float32. Loading casts
    them back into the float32 modules.
    """
    from kinetoscope.interop.wan import WanT5, save_text
    from kinetoscope.models.text import ByteTextEncoder

    wan = isinstance(pipe.text_encoder, WanT5)  # Wan2.1's UMT5: text/ as transformers saves it
    if not (wan or isinstance(pipe.text_encoder, ByteTextEncoder)):
        raise ValueError("save_pretrained stores ByteTextEncoder pipelines; T5 stays external")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    modules = ((pipe.vae, "vae"), (pipe.dit, "dit"), (pipe.text_encoder, "text"))
    for module, file in modules[:2] if wan else modules:
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        if weights_dtype is not None:  # matrices and kernels only, never buffers
            params = {k for k, p in module.named_parameters() if p.ndim >= 2}
            state = {k: v.to(weights_dtype) if k in params else v for k, v in state.items()}
        save_tensors(state, path / f"{file}.safetensors", metadata={"format": FORMAT})
    cfg = {
        "format": FORMAT,
        "version": VERSION,
        "name": pipe.name,
        "vae": asdict(pipe.vae.cfg),
        "dit": asdict(pipe.dit.cfg),
        "text": save_text(pipe.text_encoder, path)
        if wan
        else {"kind": "byte", "config": asdict(pipe.text_encoder.cfg)},
        "defaults": asdict(pipe.defaults),
    }
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (path / "README.md").write_text(card or _default_card(pipe))
    return path


def _default_card(pipe) -> str:
    count = lambda m: sum(p.numel() for p in m.parameters())
    d = pipe.defaults
    return (
        f"# {pipe.name}\n\n"
        "A kinetoscope pipeline folder (see kinetoscope/pretrained.py for the format).\n\n"
        f"- VAE: {count(pipe.vae) / 1e6:.2f} M parameters, {pipe.vae.cfg.z_dim} latent channels\n"
        f"- DiT: {count(pipe.dit) / 1e6:.2f} M parameters, {pipe.dit.cfg.num_layers} layers, "
        f"dim {pipe.dit.cfg.dim}\n"
        f"- text: byte-level encoder, {count(pipe.text_encoder) / 1e6:.2f} M parameters\n"
        f"- defaults: {d.width}x{d.height}, {d.fps:g} fps, {d.seconds:g} s, {d.steps} steps "
        f"({d.sampler}), guidance {d.guidance:g}\n\n"
        "Training data, commands, steps, wall time and measured figures: not written yet.\n"
    )


def _newest_checkpoint(path: Path):
    """Returns (checkpoint folder, its TrainConfig) of a run folder or a step folder, or None
    when there is no complete checkpoint with its config."""
    from kinetoscope.train.checkpoint import CONFIG_FILE, latest
    from kinetoscope.train.config import load_config

    ckpt = path if (path / "state.pt").is_file() else latest(path, clean=False)
    if ckpt is None or not (ckpt / CONFIG_FILE).is_file():
        return None
    return ckpt, load_config(ckpt / CONFIG_FILE)


def load_vae_run(path: str | Path, device=None):
    """Returns (VAE, name) of a vae-stage training run (newest checkpoint, EMA weights), or
    None when `path` is not a vae run, so `eval vae` can measure a VAE before any DiT exists."""
    from kinetoscope.train.trainer import load_frozen_vae

    path = Path(path)
    found = _newest_checkpoint(path) if path.is_dir() else None
    if found is None or found[1].model.stage != "vae":
        return None
    ckpt, cfg = found
    cfg.model.vae_path = str(ckpt)
    vae = load_frozen_vae(cfg, torch.device(device or "cpu"))
    return vae, f"{path.name}@{ckpt.name}"


def _pipeline_folder(path: str | Path) -> Path | None:
    """Returns the pipeline folder `path` names ('shapeworld-tiny' or a folder), else None."""
    folder = WEIGHTS / str(path) if str(path) in BUNDLED else Path(path)
    return folder if _is_pipeline(folder) else None


def vae_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Returns float32 VAE weights from a vae run or checkpoint (its EMA over the raw weights),
    a pipeline folder or a bundled name."""
    folder = _pipeline_folder(path)
    if folder is not None:
        return _float(_read_weights(folder / "vae.safetensors", "cpu"))
    return _checkpoint_weights(path)


def vae_config(path: str | Path):
    """Returns the VAEConfig of a pipeline folder, a bundled name or a vae run or checkpoint."""
    from kinetoscope.models.vae import PRESETS, VAEConfig

    folder = _pipeline_folder(path)
    if folder is not None:
        return _build(VAEConfig, json.loads((folder / "config.json").read_text())["vae"])
    found = _newest_checkpoint(Path(path)) if Path(path).is_dir() else None
    if found is None or found[1].model.stage != "vae":
        raise UserError(f"{path}: not a model folder or a vae run")
    return replace(PRESETS[found[1].model.vae])  # a copy: the preset stays as it is


def dit_text_weights(path: str | Path) -> tuple[dict, dict]:
    """Returns float32 (DiT, byte text encoder) weights of a pipeline folder, a bundled name or
    a dit run or checkpoint (EMA over raw): what `model.init_from` fine-tunes from."""
    folder = _pipeline_folder(path)
    if folder is not None:
        kind = json.loads((folder / "config.json").read_text())["text"].get("kind")
        if kind != "byte":
            raise UserError(f"{path}: its text encoder is {kind}; training needs the byte encoder")
        dit, text = (_read_weights(folder / f"{f}.safetensors", "cpu") for f in ("dit", "text"))
        return _float(dit), _float(text)
    if not Path(path).exists():
        raise UserError(f"{path}: no such model; pass 'shapeworld-tiny', a folder or a dit run")
    state = _checkpoint_weights(path)
    return _strip(state, "dit."), _strip(state, "text.")


def _checkpoint_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Returns a run's (newest) or a checkpoint's weights: its EMA over the raw ones."""
    from kinetoscope.train.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(path)
    return {**tensors["model"], **tensors.get("ema", {})}  # EMA holds parameters, not buffers


def _float(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_run(path: Path, device=None, dtype: torch.dtype = torch.bfloat16):
    """Returns the Pipeline of a dit training run: newest checkpoint, EMA weights."""
    from kinetoscope.models.dit import DiT
    from kinetoscope.models.text import ByteTextEncoder, byte_text_config
    from kinetoscope.models.vae import VAE
    from kinetoscope.pipeline import Pipeline, PipelineDefaults
    from kinetoscope.train.checkpoint import CONFIG_FILE
    from kinetoscope.train.trainer import dit_model_config

    found = _newest_checkpoint(path)
    if found is None:
        raise UserError(f"{path}: no complete checkpoint with a {CONFIG_FILE} in it")
    ckpt, cfg = found
    m = cfg.model
    if m.stage != "dit":
        raise UserError(
            f"{path} is a {m.stage} run; pass the dit run trained with model.{m.stage}_path={path}"
        )
    if not m.vae_path:
        raise UserError(f"{path}: its config has no model.vae_path, so no trained VAE to decode")
    vae_dir = m.vae_path if m.vae_path in BUNDLED else _find(Path(m.vae_path), path)
    if vae_dir is None:
        raise UserError(f"{path}: its VAE {m.vae_path} (model.vae_path) is not there")

    dit_state, text_state = dit_text_weights(ckpt)
    text = ByteTextEncoder(byte_text_config(m.text))
    dit = DiT(dit_model_config(cfg))
    text.load_state_dict(text_state)
    dit.load_state_dict(dit_state)
    vae = VAE.from_preset(m.vae)
    vae.load_state_dict(vae_weights(vae_dir))

    window = max(3, 1 + (cfg.data.frames - 1) // vae.cfg.time_factor)
    defaults = PipelineDefaults(
        width=cfg.data.width,
        height=cfg.data.height,
        fps=cfg.data.fps,
        window=window,
        overlap=min(3, (window - 1) // 2),
        shift=cfg.train.shift,  # sample with the times it trained on
        noise_corr=cfg.train.noise_corr,  # ... and the noise
        # A model trained to animate a given first frame makes text to video in two steps.
        keyframe=cfg.train.conditions.get("first_frame", 0.0) > 0,
        # ... and one trained to continue clips is guided by the frames it continues.
        guide_frames=cfg.train.conditions.get("prefix", 0.0) > 0,
    )
    return Pipeline(vae, dit, text, defaults, device, dtype, name=f"{path.name}@{ckpt.name}")


def _find(p: Path, run: Path) -> Path | None:
    """Returns the VAE run `p` as written (relative to where training ran, or to the run)."""
    for c in (p, run / p, run.parent / p, run.parent.parent / p):
        if c.exists():
            return c
    return None


def _strip(state: dict, prefix: str) -> dict:
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise UserError(f"checkpoint holds no {prefix.rstrip('.')} weights")
    return out


def load_wan(path: Path, device=None, dtype: torch.dtype = torch.bfloat16):
    """Returns a Pipeline of Wan2.1 weights via kinetoscope.interop.wan, when it exists."""
    import importlib

    try:
        wan = importlib.import_module("kinetoscope.interop.wan")
    except ModuleNotFoundError as e:
        if e.name != "kinetoscope.interop.wan":
            raise
        raise UserError(
            f"{path} looks like a Wan2.1 folder, but this version has no Wan2.1 loader yet"
        ) from None
    return wan.load_pipeline(path, device=device, dtype=dtype)
