"""The bundled default model: it ships inside the package, loads by name and generates."""

import json

import pytest
import torch

from kinetoscope.pipeline import Pipeline
from kinetoscope.pretrained import WEIGHTS

FOLDER = WEIGHTS / "shapeworld-tiny"


def test_the_bundled_weights_fit_the_budget_and_have_a_card():
    files = {p.name: p.stat().st_size for p in FOLDER.iterdir()}
    weights = {f"{m}.safetensors" for m in ("vae", "dit", "text")}
    assert set(files) == {"config.json", "README.md", *weights}
    assert sum(files.values()) <= 40 * 1000**2
    card = (FOLDER / "README.md").read_text()
    for section in ("## Architecture and size", "## Data", "## Training", "## Measured"):
        assert section in card
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["name"] == "shapeworld-tiny"
    assert config["defaults"]["shift"] == 3.0  # the shift it trained with


@pytest.fixture(scope="module")
def bundled():
    return Pipeline.from_pretrained("shapeworld-tiny", device="cpu")


def test_the_bundled_model_generates_the_default_clip(bundled):
    v = bundled.generate("a red ball bouncing in the snow", steps=2, seed=0, progress=False)
    assert (v.num_frames, v.width, v.height, v.fps) == (33, 64, 64, 8.0)
    assert v.metadata["model"] == "shapeworld-tiny"
    assert v.metadata["prompt"] == "a red ball bouncing in the snow"
    assert "snow" in v.metadata["expanded_prompt"] and len(v.metadata["expanded_prompt"]) > 40


def test_the_bundled_model_is_deterministic_by_seed(bundled):
    a, b, c = (
        bundled.generate("a blue square", frames=5, steps=2, seed=s, progress=False)
        for s in (1, 1, 2)
    )
    assert (a.frames == b.frames).all()
    assert (a.frames != c.frames).any()


def test_the_bundled_model_fits_the_recipe_it_fine_tunes_with():
    """configs/shapeworld-tiny-dit.yaml with model.init_from=shapeworld-tiny and
    model.vae_path=shapeworld-tiny loads every weight strictly (docs/training.md)."""
    from pathlib import Path

    from kinetoscope.pretrained import dit_text_weights
    from kinetoscope.train.config import load_config
    from kinetoscope.train.trainer import load_frozen_vae, make_model_fn

    recipe = Path(__file__).parents[1] / "configs" / "shapeworld-tiny-dit.yaml"
    cfg = load_config(recipe, ["model.vae_path=shapeworld-tiny", "model.text_path=null",
                               "model.init_from=shapeworld-tiny"])  # fmt: skip
    load_frozen_vae(cfg, torch.device("cpu"))
    model = make_model_fn(cfg)()
    dit, text = dit_text_weights("shapeworld-tiny")
    model.dit.load_state_dict(dit)
    model.text.load_state_dict(text)
