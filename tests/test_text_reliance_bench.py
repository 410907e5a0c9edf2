"""benchmarks/text_reliance.py: a swap changes exactly the attribute it names and never makes a
held-out combination; the measure gives a ratio per attribute, time and mode."""

from __future__ import annotations

import numpy as np
from benchmark_scripts import load
from test_pipeline import tiny_pipeline  # tests/ is on sys.path under pytest

from kinetoscope.world.scene import HELDOUT, OBJECT_KEYS, SCENE_KEYS, Obj, Scene, is_excluded

tr = load("text_reliance")


def test_a_swap_changes_only_its_attribute_and_avoids_heldout():
    for i in range(40):
        rng = np.random.default_rng(i)
        scene = tr.moving_scene(rng)
        assert scene.objects[0].motion != "still" and len(scene.objects) == 1
        for key in (*tr.OBJECT_SWAPS, *tr.SCENE_SWAPS):
            other = tr.swapped(scene, key, rng)
            assert other is not None and not is_excluded(other, HELDOUT)
            a, b = scene.objects[0], other.objects[0]
            changed = [k for k in OBJECT_KEYS if getattr(a, k) != getattr(b, k)]
            changed += [k for k in SCENE_KEYS if getattr(scene, k) != getattr(other, k)]
            assert changed == [key]
    # A cyan object can never be swapped to moving up (held out): another motion is chosen.
    cyan = Scene("meadow", "day", "static", [Obj("circle", "cyan", "large", "left", "slow")])
    for i in range(20):
        assert tr.swapped(cyan, "motion", np.random.default_rng(i)).objects[0].motion != "up"


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
