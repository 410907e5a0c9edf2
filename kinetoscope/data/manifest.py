"""Real video files as training clips: a folder of videos or a `captions.jsonl` manifest.

Each clip is probed once at start (frames, fps, size), assigned a bucket, and read with
PyAV when its batch comes up: frames are picked at the target fps (temporal resampling by
index), then scaled to cover the bucket and center-cropped. A clip that cannot be read is
skipped and counted, never a crash: a bad file among a million should not end a week-long
run. A malformed manifest line, though, fails at start with its line number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kinetoscope.data.buckets import Bucket, assign_bucket, make_buckets
from kinetoscope.errors import UserError

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".png", ".jpg", ".jpeg")


@dataclass
class Entry:
    path: Path
    caption: str
    short: str | None = None


def read_manifest(path: str | Path) -> list[Entry]:
    """Returns the clips listed by a captions.jsonl, or found in a folder (captions from .txt)."""
    path = Path(path)
    if path.is_dir():
        if (path / "captions.jsonl").is_file():
            return read_manifest(path / "captions.jsonl")
        out = []
        for p in sorted(path.rglob("*")):
            if p.suffix.lower() in VIDEO_EXTS and p.is_file():
                txt = p.with_suffix(".txt")
                out.append(Entry(p, txt.read_text().strip() if txt.is_file() else ""))
        if not out:
            raise UserError(f"{path}: no video files ({', '.join(VIDEO_EXTS)}) in this folder")
        return out
    if not path.is_file():
        raise UserError(f"{path}: no such manifest or folder")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict) or "path" not in row:
            raise UserError(f"{path}:{n}: a line needs a 'path' key, got {line[:80]!r}")
        text = row.get("detailed", row.get("caption", row.get("short")))
        if not isinstance(text, str):
            raise UserError(f"{path}:{n}: a line needs 'caption' or 'detailed' text")
        clip = Path(row["path"])
        out.append(
            Entry(clip if clip.is_absolute() else path.parent / clip, text, row.get("short"))
        )
    if not out:
        raise UserError(f"{path}: the manifest lists no clips")
    return out


def available_frames(num_frames: int, src_fps: float, fps: float) -> int:
    """Returns how many frames at `fps` a clip of `num_frames` at `src_fps` spans."""
    return int(math.floor((num_frames - 1) * fps / src_fps + 1e-6)) + 1


def frame_indices(num_frames: int, src_fps: float, frames: int, fps: float, start: float) -> list:
    """Returns the source frame indices of `frames` frames at `fps` from time `start` (seconds)."""
    idx = [round((start + n / fps) * src_fps) for n in range(frames)]
    return [min(max(i, 0), num_frames - 1) for i in idx]


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.split("x"))
    return w, h


class ManifestClips(Dataset):
    """Map-style dataset of real clips; item i is {video [3,T,H,W], caption, path} or a skip.

    An item that fails to decode comes back as {"skipped": path, "reason": message};
    `collate` drops it from the batch and lists it, so the trainer can count and report.
    Clips that fail to probe, or that are shorter than every bucket of their aspect ratio,
    are left out at start and listed in `self.skipped`.
    """

    def __init__(self, path: str | Path, buckets: Sequence[Bucket], fps: float, seed: int = 0):
        from kinetoscope.video import probe

        self.buckets, self.fps, self.seed = list(buckets), fps, seed
        self.entries: list[Entry] = []
        self.info: list[tuple[int, float, int, int]] = []  # frames, fps, width, height
        self.assignments: list[int] = []
        self.skipped: list[tuple[str, str]] = []
        for e in read_manifest(path):
            try:
                p = probe(e.path)
            except UserError as err:
                self.skipped.append((str(e.path), str(err)))
                continue
            w, h = _size(p["size"])
            n = available_frames(p["frames"], p["fps"], fps)
            b = assign_bucket(n, h, w, self.buckets)
            if b is None:
                self.skipped.append((str(e.path), f"{n} frames at {fps} fps fit no bucket"))
                continue
            self.entries.append(e)
            self.info.append((p["frames"], p["fps"], w, h))
            self.assignments.append(b)
        if not self.entries:
            raise UserError(f"{path}: no usable clip; skipped: {self.skipped[:3]}")

    @classmethod
    def from_config(cls, cfg):
        """Returns the dataset a TrainConfig with data.source=manifest describes."""
        return cls(
            cfg.data.path, make_buckets(cfg.data.bucket_list()), cfg.data.fps, cfg.train.seed
        )

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        from kinetoscope.video import Video

        e, b = self.entries[i], self.buckets[self.assignments[i]]
        try:
            v = Video.read(e.path)
        except UserError as err:
            return {"skipped": str(e.path), "reason": str(err)}
        # Any start that keeps the whole window inside the clip; fixed per (seed, clip).
        span = (v.num_frames - 1) / v.fps - (b.frames - 1) / self.fps
        rng = np.random.default_rng([self.seed, i])
        start = float(rng.uniform(0, span)) if span > 0 else 0.0
        idx = frame_indices(v.num_frames, v.fps, b.frames, self.fps, start)
        v = Video(v.frames[idx], self.fps).fit(b.width, b.height)
        return {"video": v.to_tensor(), "caption": e.caption, "path": str(e.path)}


def collate(samples: list[dict]) -> dict:
    """Returns a batch {video [B,3,T,H,W] or None, caption, path, skipped [(path, reason)]}."""
    good = [s for s in samples if "video" in s]
    return {
        "video": torch.stack([s["video"] for s in good]) if good else None,
        "caption": [s["caption"] for s in good],
        "path": [s["path"] for s in good],
        "skipped": [(s["skipped"], s["reason"]) for s in samples if "skipped" in s],
    }
