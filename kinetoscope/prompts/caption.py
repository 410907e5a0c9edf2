"""Captioned data: re-captioning videos, captioned ShapeWorld clips, and the prompt sets.

Re-captioning (DALL-E 3 style) reads a video back into a scene with the judge and writes
the detailed training caption of what it saw. The prompt sets shipped in this folder
(`heldout.txt`, `short.txt`) are regenerated, byte for byte, by

    python -c "from kinetoscope.prompts.caption import write_prompt_sets; write_prompt_sets()"
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from kinetoscope.errors import UserError
from kinetoscope.world.captions import caption, describe
from kinetoscope.world.scene import HELDOUT, sample_heldout_scene, sample_scene

PROMPT_DIR = Path(__file__).parent


def caption_video(video, seed: int = 0) -> str:
    """Returns the detailed caption of what the judge reads in `video` (a Video)."""
    from kinetoscope.world.judge import judge

    return caption(judge(video), "detailed", seed)


def caption_files(paths: list[str], seed: int = 0) -> Iterator[dict]:
    """Yields {"path", "caption"} for each video file, in order."""
    from kinetoscope.video import Video

    for path in paths:
        yield {"path": str(path), "caption": caption_video(Video.read(path), seed)}


def write_world_samples(
    out_dir: str | os.PathLike,
    count: int,
    width: int = 64,
    height: int = 64,
    frames: int = 32,
    fps: float = 8.0,
    seed: int = 0,
    heldout: bool = False,
    progress: Callable | None = None,
) -> Path:
    """Returns the path of `captions.jsonl` after rendering `count` clips into `out_dir`.

    Each manifest line: {"path" (relative to out_dir), "short", "detailed", "scene"}.
    Training clips exclude the held-out combinations; `heldout=True` draws only those.
    Clip i depends only on (seed, i), so a larger count extends a smaller one.
    """
    from kinetoscope.world.render import render

    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if frames < 1 or fps <= 0:
        raise UserError(f"need at least 1 frame and fps > 0, got frames={frames} fps={fps}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}") from None
    indices = range(count) if progress is None else progress(range(count))
    manifest = out / "captions.jsonl"
    with open(manifest, "w") as f:
        for i in indices:
            rng = np.random.default_rng([seed, i])
            scene = sample_heldout_scene(rng) if heldout else sample_scene(rng, exclude=HELDOUT)
            try:
                video = render(scene, width, height, frames, fps, seed=seed * 100_003 + i)
            except ValueError as e:
                raise UserError(str(e)) from None
            name = f"{i:06d}.mp4"
            video.save(out / name)
            line = {
                "path": name,
                "short": caption(scene, "short", rng),
                "detailed": caption(scene, "detailed", rng),
                "scene": scene.to_dict(),
            }
            f.write(json.dumps(line) + "\n")
    return manifest


# ---------------------------------------------------------------- prompt sets


def heldout_prompts(n: int = 240, seed: int = 2024) -> list[str]:
    """Returns `n` distinct detailed captions of held-out scenes: every line states a
    held-out combination, and every attribute, so adherence is scored on all of them."""
    rng = np.random.default_rng(seed)
    return _distinct(lambda: describe(sample_heldout_scene(rng), "detailed", rng)[0], n)


def short_prompts(n: int = 120, seed: int = 7) -> list[str]:
    """Returns `n` distinct short user-style prompts of scenes outside the held-out set."""
    rng = np.random.default_rng(seed)
    return _distinct(lambda: caption(sample_scene(rng, exclude=HELDOUT), "short", rng), n)


def _distinct(make: Callable[[], str], n: int) -> list[str]:
    seen: dict[str, None] = {}  # insertion-ordered set
    for _ in range(100 * n):
        if len(seen) == n:
            return list(seen)
        seen.setdefault(make(), None)
    raise ValueError(f"could not draw {n} distinct prompts")


def write_prompt_sets(folder: str | os.PathLike = PROMPT_DIR) -> None:
    """Writes heldout.txt and short.txt (one prompt per line) into `folder`."""
    for name, lines in (("heldout.txt", heldout_prompts()), ("short.txt", short_prompts())):
        Path(folder, name).write_text("\n".join(lines) + "\n")


def load_prompts(name: str) -> list[str]:
    """Returns the prompts of a shipped set ("heldout" or "short") or of a text file."""
    path = PROMPT_DIR / f"{name}.txt" if name in ("heldout", "short") else Path(name)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read prompts from {path}: {e.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
