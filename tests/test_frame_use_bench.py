"""benchmarks/frame_use.py: one moving object per clip, and the two losses are read on the same
middle frame with the same noise (a model that ignores its input scores a ratio of exactly 1)."""

from __future__ import annotations

import numpy as np
import torch
from benchmark_scripts import load
from test_pipeline import tiny_pipeline  # tests/ is on sys.path under pytest

from kinetoscope.world.scene import HELDOUT, is_excluded

fu = load("frame_use")


class Zero(torch.nn.Module):
    """A DiT that predicts velocity 0 whatever it is given."""

    def forward(self, x, t, context, mask=None):
        return torch.zeros_like(x)


def test_clips_hold_one_moving_object_and_the_losses_share_frame_and_noise():
    pipe = tiny_pipeline()
    x0, captions = fu.clips(pipe, 3, seed=2)
    assert x0.shape[:3] == (3, pipe.dit.cfg.in_channels, 3) and len(captions) == 3
    for i in range(30):
        scene = fu.moving_scene(np.random.default_rng([2, i]))
        assert len(scene.objects) == 1 and scene.objects[0].motion != "still"
        assert scene.camera == "static" and not is_excluded(scene, HELDOUT)
    result = fu.measure(pipe, x0, captions, [0.5, 0.9])
    assert set(result) == {0.5, 0.9}
    assert all(np.isfinite(m["ratio"]) and m["ratio"] > 0 for m in result.values())

    pipe.dit = Zero()  # the error is noise - x0 on the middle frame, alone or given the rest
    for m in fu.measure(pipe, x0, captions, [0.5]).values():
        assert m["ratio"] == 1.0
