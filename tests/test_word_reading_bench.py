"""benchmarks/word_reading.py: a share per attribute and time, exactly 0 for a model that does
not read its words, at most 1."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load
from test_pipeline import tiny_pipeline  # tests/ is on sys.path under pytest

wr = load("word_reading")


def test_measure_gives_a_share_per_attribute_and_time():
    result = wr.measure(tiny_pipeline(), runs=2, times=[0.5, 0.9], keys=("color", "shape"))
    assert set(result) == {0.5, 0.9}
    for shares in result.values():
        assert set(shares) == {"color", "shape"}
        assert all(np.isfinite(s) and s <= 1 for s in shares.values())


def test_a_model_deaf_to_its_words_explains_nothing():
    pipe = tiny_pipeline()
    pipe.dit = lambda x, t, context, mask: 0.5 * x  # the same prediction under any caption
    result = wr.measure(pipe, runs=2, times=[0.6], keys=("shape", "motion"))
    assert result[0.6] == {
        "shape": pytest.approx(0.0, abs=1e-6),
        "motion": pytest.approx(0.0, abs=1e-6),
    }
