"""Where in the noise range a model loses each attribute: adherence of SDEdit from renders.

    python benchmarks/noise_levels.py [--model shapeworld-tiny] [--runs 50]
                                      [--strengths 0.3 0.5 0.7 0.85 1.0] [--json F]

Run i renders a random ShapeWorld scene (seed (--seed, i), no held-out combination), noises
its latents to flow time s (SDEdit, `Pipeline.edit` at strength s) and lets the model denoise
them from there with the scene's detailed caption; the judge scores the result against the
scene. The model only does t < s, so an attribute right at s = 0.3 but wrong at s = 1 is lost
at high noise (where the layout and the motion are decided), one already wrong at s = 0.3 at
low noise (the details). s = 1 is plain generation from noise; s = 0 would be the VAE's own
ceiling. The same scenes and seeds at every strength.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from kinetoscope.evaluate import summarise
from kinetoscope.pipeline import Notice, Pipeline
from kinetoscope.video import Video
from kinetoscope.world.captions import caption
from kinetoscope.world.judge import score
from kinetoscope.world.render import render
from kinetoscope.world.scene import HELDOUT, sample_scene

SHOWN = ("color", "shape", "motion", "camera", "count", "environment", "time")


def measure(pipe, runs: int, strengths: list[float], seed: int = 0) -> dict:
    """Returns {strength: {"attributes": ..., "overall": ...}} over the same `runs` scenes."""
    d = pipe.defaults
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Notice)
        frames = pipe.num_frames(None, None, d.fps)  # the default length, 1 + 4k frames
    scenes = [sample_scene(np.random.default_rng([seed, i]), exclude=HELDOUT) for i in range(runs)]
    clips = [
        render(s, d.width, d.height, frames, d.fps, seed=i).frames for i, s in enumerate(scenes)
    ]
    out = {}
    for s in strengths:
        scores = []
        for i, (scene, clip) in enumerate(tqdm(list(zip(scenes, clips)), desc=f"s={s:g}")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Notice)
                v = pipe.edit(Video(clip, fps=d.fps), caption(scene, "detailed", seed=i),
                              strength=s, seed=i, expand=False, progress=False)  # fmt: skip
            scores.append(score(v, caption(scene, "short", seed=i)))
        out[s] = summarise(scores)
    return out


def table(result: dict) -> str:
    lines = ["| strength | overall | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 2) + "|"]
    for s, r in result.items():
        a = r["attributes"]
        cells = [
            "-" if a[k]["accuracy"] is None else f"{100 * a[k]['accuracy']:.0f}%" for k in SHOWN
        ]
        lines.append(f"| {s:g} | {100 * r['overall']:.1f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapeworld-tiny")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.85, 1.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.runs < 1 or not all(0.0 <= s <= 1.0 for s in args.strengths):
        ap.error("--runs must be >= 1 and every strength in [0, 1]")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model)
    result = measure(pipe, args.runs, args.strengths, args.seed)
    print(f"Model `{pipe.name}`, {args.runs} scenes (seed {args.seed}), SDEdit from renders:\n")
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(s): r for s, r in result.items()}, f, indent=2)


if __name__ == "__main__":
    main()
