"""Shared fixtures: small synthetic videos written in a few milliseconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kinetoscope.video import Video


@pytest.fixture(scope="module")
def one_thread():
    """Runs a test module on one torch thread, then restores the count.

    Tiny tensors gain nothing from threads, and on a busy 2-core machine a second OpenMP
    thread spin-waits for a core: tiny convs ran 30x slower with 2 threads than with 1.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synthetic_frames(t: int = 8, h: int = 48, w: int = 64) -> np.ndarray:
    """Returns uint8 [T, H, W, 3]: a smooth gradient with a bright square moving right."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = 40 + 150 * x / max(w - 1, 1)
        frames[i, ..., 1] = 40 + 150 * y / max(h - 1, 1)
        frames[i, ..., 2] = 90
        left = 4 + 3 * i
        frames[i, h // 4 : h // 4 + h // 3, left : left + w // 4] = (230, 220, 40)
    return frames


@pytest.fixture
def make_video():
    """Returns a factory `make_video(t=8, h=48, w=64, fps=8.0) -> Video`."""

    def make(t: int = 8, h: int = 48, w: int = 64, fps: float = 8.0) -> Video:
        return Video(synthetic_frames(t, h, w), fps=fps)

    return make


@pytest.fixture
def small_mp4(tmp_path, make_video):
    """Returns the path of an 8-frame 64x48 8 fps mp4."""
    return make_video().save(tmp_path / "small.mp4")


# The CLI exactly as `kinetoscope` runs it, with a ~60k-parameter VAE preset registered first,
# so a real training process steps in well under a second on a busy CPU.
MICRO_CLI = """import sys
from kinetoscope.models import dit as D, text as T, vae as V
V.PRESETS["micro"] = V.VAEConfig(dim=8, dim_mult=(1, 1, 1, 1), z_dim=4)
D.PRESETS["micro"] = D.DiTConfig(in_channels=4, out_channels=4, dim=32, ffn_dim=64, num_layers=2,
                                 num_heads=2, text_dim=32, freq_dim=32)
T.BYTE_PRESETS["micro"] = T.ByteTextConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64)
from kinetoscope.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def micro_cli(tmp_path):
    """Returns a script running `kinetoscope` with `micro` VAE, DiT and text presets (python or
    torchrun)."""
    script = tmp_path / "micro_cli.py"
    script.write_text(MICRO_CLI)
    return script
