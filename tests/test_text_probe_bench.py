"""benchmarks/text_probe.py: the probe reads what the features carry and no more; labels skip
what a caption does not state; the measure scores every attribute on captions it did not fit."""

from __future__ import annotations

import torch
from benchmark_scripts import load
from test_pipeline import tiny_pipeline  # tests/ is on sys.path under pytest

from kinetoscope.world.scene import Obj, Scene

tp = load("text_probe")


def test_the_probe_reads_a_feature_that_tells_the_class_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    x = torch.randn(400, 16, generator=g)
    told = x.clone()
    told[:, :4] += 6 * torch.nn.functional.one_hot(y, 4)  # four features tell the class
    assert tp.probe(told[:300], y[:300], told[300:], y[300:], 4) > 0.95
    assert tp.probe(x[:300], y[:300], x[300:], y[300:], 4) < 0.45  # chance: 0.25


def test_labels_follow_the_vocabulary_and_skip_a_still_objects_speed():
    still = Scene("desert", "night", "pan left", [Obj("square", "red", "small", "still", "fast")])
    assert tp.label(still, "speed") is None
    assert tp.label(still, "motion") == tp.VOCAB["motion"].index("still")
    assert tp.label(still, "camera") == tp.VOCAB["camera"].index("pan left")
    moving = Scene("desert", "night", "static", [Obj("square", "red", "small", "left", "fast")])
    assert tp.label(moving, "speed") == tp.VOCAB["speed"].index("fast")


def test_measure_scores_every_attribute_on_held_apart_captions():
    result = tp.measure(tiny_pipeline(), fit=30, test=12, seed=1)
    assert set(result) == set(tp.ATTRIBUTES)
    for key, r in result.items():
        assert 0.0 <= r["probe"] <= 1.0 and 0.0 < r["commonest"] <= 1.0
        assert r["test"] <= 12 and (key == "speed" or r["test"] == 12)
