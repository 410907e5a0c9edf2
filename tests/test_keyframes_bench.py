"""benchmarks/keyframes.py: one judged image per prompt, seeded by its index; the shape counts
over the one-object prompts; the grid of the first images."""

from __future__ import annotations

import numpy as np
from benchmark_scripts import load
from test_pipeline import tiny_pipeline  # tests/ is on sys.path under pytest

from kinetoscope.world.scene import Obj, Scene

kf = load("keyframes")


def test_each_prompt_gives_one_judged_image_seeded_by_its_index():
    pipe = tiny_pipeline()
    prompts = ["a red circle", "a blue square moving left"]
    records, images = kf.measure(pipe, prompts)
    assert [r["prompt"] for r in records] == prompts and [r["seed"] for r in records] == [0, 1]
    assert all(Scene.from_dict(r["seen"]) is not None for r in records)
    w, h = pipe.defaults.width, pipe.defaults.height
    assert [im.shape for im in images] == [(h, w, 3)] * 2
    _, again = kf.measure(pipe, prompts)
    assert all(np.array_equal(a, b) for a, b in zip(again, images))  # seeded: the same images


def test_summary_counts_right_shapes_and_missing_objects_over_one_object_prompts():
    rec = lambda prompt, *objs: {"prompt": prompt, "seen": Scene(objects=list(objs)).to_dict()}
    records = [
        rec("a red circle", Obj("circle", "red")),
        rec("a red square", Obj("circle", "red")),
        rec("a blue triangle", Obj("triangle", "green")),  # no blue object
        rec("a red circle and a blue square", Obj("circle", "red")),  # two objects: not counted
    ]
    assert kf.summary(kf.confusions(records, "shape")) == {
        "one_object_prompts": 3, "shape_right": 1, "no_object_of_the_colour": 1}  # fmt: skip


def test_grid_lays_out_up_to_24_images_six_a_row_enlarged():
    images = [np.full((4, 5, 3), i, np.uint8) for i in range(8)]
    g = kf.grid(images, per_row=6, scale=3)
    assert g.shape == (2 * 4 * 3, 6 * 5 * 3, 3)
    assert g[0, 0, 0] == 0 and g[12, 0, 0] == 6 and g[12, -1, 0] == 0  # blank fill
    assert kf.grid([images[0]] * 30).shape[0] == 4 * 4 * 3
