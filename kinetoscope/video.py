"""The Video type and all file I/O (PyAV)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Video:
    """Frames `uint8 [T, H, W, 3]` plus `fps`; a still image is a 1-frame video."""

    frames: np.ndarray
    fps: float = 8.0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = self.frames
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {f.dtype} {list(f.shape)}")

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps
