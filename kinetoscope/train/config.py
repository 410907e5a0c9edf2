"""The training config: nested dataclasses, resolved as defaults <- yaml <- `a.b=c` overrides.

Every value is checked before any work starts, so a typo in a recipe fails in the first
second with a message naming the key, not after an hour of training. The resolved config
is written next to every checkpoint (`save_config`), so a run can always be reproduced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kinetoscope.errors import UserError
from kinetoscope.world.scene import OBJECT_KEYS


class ConfigError(UserError, ValueError):
    """A config key that does not exist, has the wrong type or an impossible value."""


@dataclass
class ModelConfig:
    # "vae": the video compression network; "text": the byte text encoder reading captions
    # (ShapeWorld); "dit": the denoiser with its text encoder
    stage: str = "dit"
    vae: str = "tiny"  # VAE preset name
    dit: str = "tiny"  # DiT preset name
    text: str = "tiny"  # text encoder preset name
    # dit stage: the frozen VAE: a vae run or checkpoint, a pipeline folder, or "shapeworld-tiny"
    vae_path: str | None = None
    text_path: str | None = None  # dit stage: start the text encoder from this text-stage run
    # Fine-tuning: start from this model instead of a fresh init; its presets must be this
    # recipe's. dit stage: the DiT and text encoder of a pipeline folder, "shapeworld-tiny" or a
    # dit run. vae stage: the VAE of any of those or of a vae run.
    init_from: str | None = None
    # vae stage, with init_from: train the decoder only. The encoder (and so the latents and
    # their normalisation) stays exactly as it was, so a DiT trained on them keeps working.
    freeze_encoder: bool = False


@dataclass
class DataConfig:
    source: str = "shapeworld"  # "shapeworld" (rendered on the fly) | "manifest" (real videos)
    path: str | None = None  # manifest: a folder of videos or a captions.jsonl
    # Buckets as [frames, height, width]; clips train at their own bucket's size. An empty
    # list means one video bucket [frames, height, width] plus an image bucket [1, height,
    # width] when image_share > 0.
    buckets: list[list[int]] = field(default_factory=list)
    frames: int = 33
    height: int = 64
    width: int = 64
    fps: float = 8.0
    image_share: float = 0.25  # share of batches that are 1-frame images (joint training)
    # shapeworld: share of clips that hold one object under a static camera (environment and
    # time still vary), so its look and motion are most of what the caption says
    simple_share: float = 0.0
    exclude_heldout: bool = True  # never train on ShapeWorld's held-out combinations
    num_workers: int = 2
    tokens_per_batch: int = 4096  # latent tokens per device per micro-batch (sets batch size)
    max_batch_size: int = 64  # cap for buckets with few tokens (images)
    latent_cache: str | None = None  # dit stage: read precomputed latents from this folder

    def bucket_list(self) -> list[list[int]]:
        """Returns the buckets as [frames, height, width], filling in the default ones."""
        if self.buckets:
            return [list(b) for b in self.buckets]
        out = [[self.frames, self.height, self.width]]
        if self.image_share > 0 and self.frames != 1:
            out.append([1, self.height, self.width])
        return out


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    warmup: int = 100  # linear warmup steps
    cosine: bool = True  # cosine decay to min_lr after warmup; constant lr if False
    min_lr: float = 3e-5
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step


@dataclass
class LoopConfig:  # the `train` section: the loop, its schedule and its outputs
    steps: int = 1000
    # Stop (with a checkpoint) after this step while the schedule still runs to `steps`: one
    # phase of a recipe in phases, then --resume with other data settings. None = `steps`.
    stop_at: int | None = None
    seed: int = 0
    bf16: bool = True
    ema_decay: float = 0.999  # 0 disables EMA
    grad_checkpoint: bool = False
    compile: bool = False
    text_dropout: float = 0.1  # share of captions replaced by "" for classifier-free guidance
    # Flow-time shift of the training times (and the trained model's sampling default);
    # None: flow.shift_for_tokens, which gives a small latent none (1.0).
    shift: float | None = None
    # dit stage: correlation of the noise between latent frames (flow.frame_noise; the trained
    # model's sampling default); 0 is independent noise per frame.
    noise_corr: float = 0.0
    mse_weight: float = 0.0  # vae stage: an MSE term beside L1, so small objects count
    kl_weight: float = 1e-6  # vae stage: the KL term towards N(0, 1), kept small (a soft prior)
    # dit stage: weight of a loss on the velocity error's change from one latent frame to the
    # next (flow.flow_loss), which stresses what moves over the background every frame shares.
    temporal_weight: float = 0.0
    # dit stage: weight of the text stage's reading loss (read_captions.py), kept on during the
    # dit stage through a linear head on the encoder's output, so that the encoder goes on
    # telling every word the world labels (shape, motion), not only those the flow loss rewards
    # (colour, environment). Needs the scenes: ShapeWorld clips rendered in the loop.
    read_weight: float = 0.0
    # dit stage: in the flow loss a latent position weighs 1 + this x the share of its pixels
    # the objects cover (the renderer's mask, averaged over the VAE's patch, the most of its
    # frames), so the objects (a few percent of the pixels) are not drowned out by the
    # background. Needs the masks: ShapeWorld clips rendered in the loop.
    object_weight: float = 0.0
    # dit stage: each one-object clip is rendered again with one of `pair_keys` changed (the
    # same seeds: only that attribute's pixels differ); the average of the two clips' latents,
    # noised as the clip is, goes through the model under each caption, and a term of this
    # weight asks the two predictions to differ as the two clips do, on the objects (their
    # masks). The noisy average shows where the object is but not which of the two it is, so
    # only the words can tell, and the noise both errors share cancels in the difference.
    # Needs the scenes and masks. The pairs' t is moved into [pair_t_min, 1] (t_min + (1 -
    # t_min) x the clip's t): at high t the noisy average looks like any clip, at low t it shows
    # two shapes at once, which sampling never does (on the bundled model, 0.5 did not give back
    # the object count the pairs cost; docs/training.md).
    pair_weight: float = 0.0
    pair_keys: list[str] = field(default_factory=lambda: ["shape"])
    pair_t_min: float = 0.0
    # dit stage: weight of a shape map read from the DiT's tokens after block `shape_block`
    # (a linear head, kept in the run's checkpoints, not exported): each token's share of
    # background and of each shape (the renderer's masks over the token's pixels): its soft
    # cross-entropy over the tokens, plus that of which shape over the objects' tokens, on the
    # frames not given (objects.shape_map_loss). REPA's idea with the world's labels for features:
    # at high t the noisy latents hardly show the shape, so the tokens must take it from the
    # words. Needs the masks: ShapeWorld clips rendered in the loop.
    shape_weight: float = 0.0
    shape_block: int = 2
    # Relative weight of each frame condition drawn for dit-stage samples (names as
    # diffusion/conditioning.py's KINDS; a kind left out of the mapping has weight 0): one
    # model learns text-to-video (none), image-to-video (first_frame), extension (prefix,
    # suffix) and connection (connect) together.
    conditions: dict[str, float] = field(
        default_factory=lambda: {
            "none": 0.4,
            "first_frame": 0.25,
            "prefix": 0.1,
            "suffix": 0.1,
            "connect": 0.1,
            "frames": 0.05,
        }
    )
    log_every: int = 10
    ckpt_every: int = 500
    sample_every: int = 500
    keep_last: int = 3
    out: str = "runs/default"


@dataclass
class DistConfig:
    mode: str = "none"  # "none" | "ddp" | "fsdp"
    backend: str | None = None  # None: nccl on CUDA, gloo on CPU


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    dist: DistConfig = field(default_factory=DistConfig)


CONDITION_NAMES = ("none", "first_frame", "prefix", "suffix", "connect", "frames")


# ---------------------------------------------------------------------------------------------
# Types: a value from yaml is checked (and converted where lossless) against the field's type.


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Returns `value` converted to type `tp`, or raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if tp is float:
        if isinstance(value, str):
            # yaml 1.1 reads `3e-4` (no dot) as a string; accept what Python reads as a float.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite float, got {value!r}")
            return value
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else typing.Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is typing.Any:
        return value
    raise TypeError(f"config type {tp} of {key} is not supported")  # a bug in this file


def _fields(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown key {key}{hint}")


def _all_keys() -> list[str]:
    keys = []
    for section, cls in _fields(TrainConfig).items():
        keys.append(section)
        keys += [f"{section}.{name}" for name in _fields(cls)]
    return keys


def _set(cfg: TrainConfig, dotted: str, value) -> None:
    """Sets the config value at `a.b` (or `a.b.c` inside a dict field), checking the type."""
    parts = dotted.split(".")
    sections = _fields(TrainConfig)
    if parts[0] not in sections:
        raise _unknown(dotted, _all_keys())
    if len(parts) == 1:
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted}: expected a mapping of keys, got {value!r}")
        for k, v in value.items():
            _set(cfg, f"{dotted}.{k}", v)
        return
    section = getattr(cfg, parts[0])
    names = _fields(type(section))
    if parts[1] not in names:
        raise _unknown(".".join(parts[:2]), _all_keys())
    tp = names[parts[1]]
    key = ".".join(parts[:2])
    if len(parts) == 2:
        setattr(section, parts[1], _coerce(value, tp, key))
    elif typing.get_origin(tp) is dict and len(parts) == 3:
        current = dict(getattr(section, parts[1]))
        current[parts[2]] = _coerce(value, typing.get_args(tp)[1], dotted)
        setattr(section, parts[1], current)
    else:
        raise _unknown(dotted, _all_keys())


# ---------------------------------------------------------------------------------------------
# Values: ranges and choices a run could not work with.


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(key: str, value, choices: tuple) -> None:
    _check(value in choices, f"{key} must be one of {choices}, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Raises ConfigError naming the first key whose value a run could not work with."""
    m, d, o, t, dist = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.dist
    _choice("model.stage", m.stage, ("vae", "text", "dit"))
    if m.stage == "text":
        _check(d.source == "shapeworld", "model.stage=text reads ShapeWorld captions: data.source")
    for key in ("vae", "dit", "text"):
        _check(bool(getattr(m, key)), f"model.{key} must name a preset, got ''")
    if m.init_from:
        _check(m.stage != "text", "model.init_from starts a dit or vae run, not a text run")
        _check(
            not m.text_path, "model.init_from brings its own text encoder: unset model.text_path"
        )
    if m.freeze_encoder:
        _check(m.stage == "vae", "model.freeze_encoder is for model.stage=vae")
        _check(bool(m.init_from), "model.freeze_encoder needs a trained VAE: set model.init_from")

    _choice("data.source", d.source, ("shapeworld", "manifest"))
    if d.source == "manifest":
        _check(bool(d.path), "data.path must name a folder or captions.jsonl when source=manifest")
    for name in ("frames", "height", "width", "tokens_per_batch", "max_batch_size"):
        v = getattr(d, name)
        _check(v > 0, f"data.{name} must be > 0, got {v}")
    _check(d.fps > 0, f"data.fps must be > 0, got {d.fps}")
    _check(0.0 <= d.image_share <= 1.0, f"data.image_share must be in [0, 1], got {d.image_share}")
    _check(
        0.0 <= d.simple_share <= 1.0, f"data.simple_share must be in [0, 1], got {d.simple_share}"
    )
    _check(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    for i, b in enumerate(d.bucket_list()):
        key = f"data.buckets[{i}]"
        _check(len(b) == 3, f"{key} must be [frames, height, width], got {b}")
        tkey, skey = (key, key) if d.buckets else ("data.frames", "data.height/width")
        frames, height, width = b
        # The causal VAE keeps frame 0 alone and compresses the rest 4x; a DiT patch is 2x2
        # latent pixels of an 8x VAE, so sizes step in 16s.
        _check(
            frames >= 1 and (frames - 1) % 4 == 0,
            f"{tkey}: frames must be 1 + 4k (1, 5, 9, ..., 33), got {frames}",
        )
        _check(
            height > 0 and width > 0 and height % 16 == 0 and width % 16 == 0,
            f"{skey}: height and width must be positive multiples of 16, got {height}x{width}",
        )
    if d.buckets and d.image_share > 0 and d.source == "shapeworld":
        _check(
            any(b[0] == 1 for b in d.buckets),
            f"data.image_share={d.image_share} needs an image bucket [1, H, W] in data.buckets",
        )

    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(0 <= o.min_lr <= o.lr, f"optim.min_lr must be in [0, optim.lr={o.lr}], got {o.min_lr}")
    for i, b in enumerate(o.betas):
        _check(0.0 <= b < 1.0, f"optim.betas[{i}] must be in [0, 1), got {b}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.warmup >= 0, f"optim.warmup must be >= 0, got {o.warmup}")
    _check(o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 disables), got {o.grad_clip}")
    _check(o.grad_accum >= 1, f"optim.grad_accum must be >= 1, got {o.grad_accum}")

    _check(t.steps > 0, f"train.steps must be > 0, got {t.steps}")
    _check(
        t.stop_at is None or 0 < t.stop_at <= t.steps,
        f"train.stop_at must be in [1, train.steps={t.steps}], got {t.stop_at}",
    )
    _check(0.0 <= t.ema_decay < 1.0, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    _check(
        0.0 <= t.text_dropout < 1.0, f"train.text_dropout must be in [0, 1), got {t.text_dropout}"
    )
    _check(t.shift is None or t.shift > 0, f"train.shift must be > 0 (or null), got {t.shift}")
    _check(0.0 <= t.noise_corr < 1.0, f"train.noise_corr must be in [0, 1), got {t.noise_corr}")
    _check(t.mse_weight >= 0.0, f"train.mse_weight must be >= 0, got {t.mse_weight}")
    _check(t.kl_weight >= 0.0, f"train.kl_weight must be >= 0, got {t.kl_weight}")
    _check(t.temporal_weight >= 0.0, f"train.temporal_weight must be >= 0, got {t.temporal_weight}")
    _check(t.read_weight >= 0.0, f"train.read_weight must be >= 0, got {t.read_weight}")
    _check(t.object_weight >= 0.0, f"train.object_weight must be >= 0, got {t.object_weight}")
    _check(t.pair_weight >= 0.0, f"train.pair_weight must be >= 0, got {t.pair_weight}")
    _check(bool(t.pair_keys) or not t.pair_weight, "train.pair_keys must name an attribute")
    _check(0.0 <= t.pair_t_min < 1.0, f"train.pair_t_min must be in [0, 1), got {t.pair_t_min}")
    _check(t.shape_weight >= 0.0, f"train.shape_weight must be >= 0, got {t.shape_weight}")
    _check(t.shape_block >= 0, f"train.shape_block must be >= 0, got {t.shape_block}")
    for name in t.pair_keys:
        _choice("train.pair_keys", name, OBJECT_KEYS)
    needs_scenes = (
        ("read_weight", "the scenes"),
        ("object_weight", "the object masks"),
        ("pair_weight", "the scenes and object masks"),
        ("shape_weight", "the object masks"),
    )
    for key, needs in needs_scenes:
        if getattr(t, key):
            _check(m.stage == "dit", f"train.{key} is for model.stage=dit")
            _check(
                d.source == "shapeworld" and not d.latent_cache,
                f"train.{key} needs {needs} of ShapeWorld clips rendered in the loop: "
                "set data.source=shapeworld and data.latent_cache=null",
            )
    for name, p in t.conditions.items():
        _choice(f"train.conditions.{name}", name, CONDITION_NAMES)
        _check(p >= 0.0, f"train.conditions.{name} must be >= 0, got {p}")
    total = sum(t.conditions.values())
    _check(total > 0, f"train.conditions needs a positive weight, got {t.conditions}")
    for name in ("log_every", "ckpt_every", "sample_every", "keep_last"):
        v = getattr(t, name)
        _check(v >= 1, f"train.{name} must be >= 1, got {v}")
    _check(bool(t.out), "train.out must name a folder, got ''")

    _choice("dist.mode", dist.mode, ("none", "ddp", "fsdp"))
    if dist.backend is not None:
        _choice("dist.backend", dist.backend, ("nccl", "gloo"))


# ---------------------------------------------------------------------------------------------
# Resolution and files.


def parse_override(text: str) -> tuple[str, object]:
    """Returns (key, value) from 'a.b=c', the value read as yaml so `3`, `true`, `[1, 2]` type."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override must look like section.key=value, got {text!r}")
    return key, yaml.safe_load(raw) if raw.strip() else ""


def resolve(data: dict | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Returns the validated config: dataclass defaults <- `data` (a yaml mapping) <- overrides."""
    cfg = TrainConfig()
    if data is not None:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {data!r}")
        for key, value in data.items():
            _set(cfg, str(key), value)
    for text in overrides:
        _set(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Returns the validated config from a yaml recipe (None: defaults only) and overrides."""
    data = None
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else "invalid yaml"
            raise ConfigError(f"{path} is not valid yaml: {first}") from None
    return resolve(data or {}, overrides)


def to_dict(cfg: TrainConfig) -> dict:
    """Returns the config as plain yaml-safe values (tuples become lists)."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Writes the resolved config as yaml; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
