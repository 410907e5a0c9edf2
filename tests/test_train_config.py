"""The training config: defaults <- yaml <- overrides, and bad values named before any work."""

from pathlib import Path

import pytest
import yaml

from kinetoscope.errors import UserError
from kinetoscope.train.config import ConfigError, load_config, resolve, save_config, to_dict

RECIPES = Path(__file__).resolve().parents[1] / "configs"


def test_overrides_apply_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\ntrain:\n  steps: 50\n")
    cfg = load_config(
        path,
        [
            "train.steps=7",
            "optim.lr=2.5e-4",
            "train.bf16=false",
            "data.buckets=[[17, 32, 48], [1, 32, 48]]",
            "optim.betas=[0.8, 0.9]",
            "model.vae_path=runs/v",
            "train.conditions.connect=0.5",
        ],
    )
    # Overrides beat yaml, which beats defaults; types come out as the fields declare.
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.optim.lr == 2.5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.bf16 is False
    assert cfg.data.buckets == [[17, 32, 48], [1, 32, 48]]
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.vae_path == "runs/v"
    assert cfg.train.conditions["connect"] == 0.5
    assert cfg.train.conditions["none"] == 0.4  # other kinds keep their defaults
    # yaml 1.1 reads "1e-3" as a string; a float field still gets a float.
    assert load_config(path).optim.lr == 1e-3


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
        ("train.steps=0", "train.steps must be > 0, got 0"),
        ("data.fsp=8", "unknown key data.fsp (did you mean data.fps?)"),
        ("trian.steps=3", "unknown key trian.steps (did you mean train.steps?)"),
        ("train.steps=2.5", "train.steps: expected int, got 2.5"),
        ("train.bf16=3", "train.bf16: expected bool"),
        ("data.frames=32", "data.frames: frames must be 1 + 4k"),
        ("data.buckets=[[33, 60, 64]]", "data.buckets[0]: height and width must be"),
        ("dist.mode=zero3", "dist.mode must be one of"),
        ("model.stage=gan", "model.stage must be one of"),
        ("optim.betas=[0.9, 1.5]", "optim.betas[1] must be in [0, 1)"),
        ("optim.betas=[0.9]", "optim.betas: expected 2 values"),
        ("train.conditions.zoom=0.1", "train.conditions.zoom must be one of"),
        ("train.ema_decay=1.0", "train.ema_decay must be in [0, 1)"),
        ("train.shift=0", "train.shift must be > 0 (or null)"),
        ("train.noise_corr=1", "train.noise_corr must be in [0, 1)"),
        ("train.kl_weight=-1", "train.kl_weight must be >= 0"),
        ("train.temporal_weight=-1", "train.temporal_weight must be >= 0"),
        ("train.read_weight=-1", "train.read_weight must be >= 0"),
        ("train.object_weight=-1", "train.object_weight must be >= 0"),
        ("train.pair_weight=-1", "train.pair_weight must be >= 0"),
        ("train.pair_keys=[environment]", "train.pair_keys must be one of"),
        ("train.pair_keys=shape", "train.pair_keys: expected list"),
        ("train.pair_t_min=1", "train.pair_t_min must be in [0, 1)"),
        ("data.source=manifest", "data.path must name a folder"),
        ("optim.min_lr=1.0", "optim.min_lr must be in [0, optim.lr="),
        ("data.buckets=[[33, 64, 64]]", "data.image_share=0.25 needs an image bucket"),
        ("train.conditions={}", "train.conditions needs a positive weight"),
        ("steps=3", "unknown key steps"),
        ("train.steps", "override must look like section.key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        resolve({}, [override])
    assert message in str(e.value)
    # The CLI shows UserError as one line; tests and library callers can catch ValueError.
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)


def test_bad_yaml_file_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\n  warmpu: 10\n")
    with pytest.raises(ConfigError, match=r"unknown key optim.warmpu \(did you mean optim.warmup"):
        load_config(path)
    path.write_text("optim: 3\n")
    with pytest.raises(ConfigError, match="optim: expected a mapping"):
        load_config(path)
    path.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_resolves_to_the_same(tmp_path):
    cfg = resolve({"train": {"steps": 3}}, ["optim.betas=[0.5, 0.6]", "data.image_share=0.5"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text())["optim"]["betas"] == [0.5, 0.6]
    assert load_config(path) == cfg
    assert to_dict(load_config(path)) == to_dict(cfg)


@pytest.mark.parametrize("name", ["shapeworld-tiny-vae.yaml", "shapeworld-tiny-dit.yaml"])
def test_recipes_resolve(name):  # (and the text recipe below, which has no video)
    cfg = load_config(RECIPES / name)
    assert cfg.model.stage in name
    assert [33, 64, 64] in cfg.data.bucket_list() and [1, 64, 64] in cfg.data.bucket_list()
    assert cfg.data.fps == 8.0 and cfg.model.vae == "tiny"


def test_text_recipe_resolves():
    cfg = load_config(RECIPES / "shapeworld-tiny-text.yaml")
    assert cfg.model.stage == "text" and cfg.data.source == "shapeworld"
    assert cfg.data.exclude_heldout
    with pytest.raises(ConfigError, match="model.stage=text reads ShapeWorld captions"):
        resolve({}, ["model.stage=text", "data.source=manifest", "data.path=clips"])


def test_default_buckets_follow_frames_and_size():
    cfg = resolve({}, ["data.frames=17", "data.height=32", "data.width=48"])
    assert cfg.data.bucket_list() == [[17, 32, 48], [1, 32, 48]]
    cfg = resolve({}, ["data.image_share=0"])
    assert cfg.data.bucket_list() == [[33, 64, 64]]
