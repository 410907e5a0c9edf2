"""benchmarks/text_reliance.py: its scenes have one moving object; the measure gives a ratio per
attribute, time and mode."""

from __future__ import annotations

import numpy as np
from benchmark_scripts import load
from test_pipeline import tiny_pipeline  # tests/ is on sys.path under pytest

tr = load("text_reliance")


def test_moving_scenes_have_one_moving_object():
    for i in range(40):
        scene = tr.moving_scene(np.random.default_rng(i))
        assert scene.objects[0].motion != "still" and len(scene.objects) == 1


def test_measure_gives_a_ratio_per_attribute_time_and_mode():
    result = tr.measure(tiny_pipeline(), runs=2, times=[0.5, 0.9], seed=3)
    assert set(result) == {"text", "first frame"}
    for by_t in result.values():
        assert set(by_t) == {0.5, 0.9}
        for ratios in by_t.values():
            assert set(ratios) == set(tr.COLUMNS)
            assert all(r > 0 and np.isfinite(r) for r in ratios.values())


def test_objects_only_counts_the_loss_where_the_object_is():
    pipe = tiny_pipeline()
    clip = tr.measure(pipe, runs=2, times=[0.5], seed=3)
    obj = tr.measure(pipe, runs=2, times=[0.5], seed=3, objects=True)
    assert set(obj["text"][0.5]) == set(tr.COLUMNS)
    assert all(r > 0 and np.isfinite(r) for r in obj["text"][0.5].values())
    assert obj["text"][0.5]["color"] != clip["text"][0.5]["color"]  # another loss, not a copy
