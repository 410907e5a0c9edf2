"""How much a model reads each attribute's words: its flow loss when those words are changed.

    python benchmarks/text_reliance.py [--model shapeworld-tiny] [--runs 48] [--seed 99]
                                       [--times 0.3 0.6 0.8 0.95] [--objects] [--threads N]
                                       [--json F]

Run i renders a one-object ShapeWorld scene whose object moves (seed (--seed, i), no held-out
combination) and measures the model's flow loss on its latents at each time t (one noise draw
per run, the same for every caption): with its detailed caption, with the caption of the same
scene after one attribute is changed to another value (colour, shape, motion, speed, camera,
environment), and with no caption. The table gives each loss over the true caption's: 1.00
means the model's prediction does not depend on those words at that noise level. Measured
twice: text to video (nothing given), and with the first frame given (image to video), where
the object's start is known, so its motion and speed words decide where it is in every later
frame and a model that reads them loses much more when they are wrong. A diagnostic of what
training has taught, seconds to run; adherence (`kinetoscope eval adherence`) is the measure.

With --objects the loss counts only where the object is (each latent position weighed by the
share of its pixels the object covers, the renderer's mask): a shape word changes a few
pixels of a clip, too few to move the whole clip's loss, but not of the object's.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from kinetoscope.diffusion.conditioning import FrameCondition
from kinetoscope.diffusion.flow import flow_loss, frame_noise
from kinetoscope.pipeline import Notice, Pipeline
from kinetoscope.world.captions import caption
from kinetoscope.world.render import render
from kinetoscope.world.scene import HELDOUT, Scene, sample_scene, swap

OBJECT_SWAPS = ("color", "shape", "motion", "speed")
SCENE_SWAPS = ("camera", "environment")
COLUMNS = (*OBJECT_SWAPS, *SCENE_SWAPS, "no caption")


def moving_scene(rng: np.random.Generator) -> Scene:
    """Returns a random one-object scene (no held-out combination) whose object moves."""
    while True:
        scene = sample_scene(rng, exclude=HELDOUT, num_objects=1)
        if scene.objects[0].motion != "still":
            return scene


@torch.no_grad()
def measure(
    pipe: Pipeline, runs: int, times: list[float], seed: int = 99, objects: bool = False
) -> dict:
    """Returns {mode: {t: {column: loss ratio}}} for mode "text" and "first frame"; with
    `objects`, of the loss over the object's latent positions only."""
    from kinetoscope.train.objects import latent_coverage

    d = pipe.defaults
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Notice)
        length = pipe.num_frames(None, None, d.fps)  # the default clip, 1 + 4k frames
    losses = {m: {t: [] for t in times} for m in ("text", "first frame")}  # a dict per run
    for i in tqdm(range(runs), desc="text reliance"):
        rng = np.random.default_rng([seed, i])
        scene = moving_scene(rng)
        video = render(scene, d.width, d.height, length, d.fps, seed=i, coverage=objects)
        video, cover = video if objects else (video, None)
        z = pipe.encode_frames(video.frames)
        weight = None  # with --objects: the object's share of each latent position
        if cover is not None:
            weight = latent_coverage(torch.from_numpy(cover.max(0))[None], tuple(z.shape[2:]))
        captions = {"true": caption(scene, "detailed", seed=i), "no caption": ""}
        for key in (*OBJECT_SWAPS, *SCENE_SWAPS):
            other = swap(scene, key, rng)
            captions[key] = None if other is None else caption(other, "detailed", seed=i)
        noise = frame_noise(z.shape, torch.Generator().manual_seed(i), pipe.defaults.noise_corr)
        first = FrameCondition.first_frame(z[:, :, :1], z.shape[2])  # as image to video
        with pipe._autocast():
            encoded = {k: pipe.text_encoder([c]) for k, c in captions.items() if c is not None}
            for mode, cond in (("text", None), ("first frame", first)):
                for t in times:
                    run = {}
                    for k, (ctx, mask) in encoded.items():
                        loss = flow_loss(
                            pipe.dit, z, torch.tensor([t]), noise, ctx, mask, cond, weight=weight
                        )
                        run[k] = loss.item()
                    losses[mode][t].append(run)
    out = {}
    for mode, by_t in losses.items():
        out[mode] = {}
        for t, per_run in by_t.items():
            out[mode][t] = {}
            for c in COLUMNS:  # ratio of means over the runs that have this swap
                have = [r for r in per_run if c in r]
                out[mode][t][c] = (
                    float(np.mean([r[c] for r in have]) / np.mean([r["true"] for r in have]))
                    if have
                    else None
                )
    return out


def rows(by_t: dict, columns) -> list[str]:
    """Returns the markdown table of {t: {column: value}}, a row per t (None shown as -)."""
    lines = ["| t | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for t, r in by_t.items():
        cells = ["-" if r[c] is None else f"{r[c]:.3f}" for c in columns]
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    return lines


def table(result: dict) -> str:
    lines = []
    for mode, by_t in result.items():
        lines += [f"\n{mode}: flow loss with the words changed / with the true caption\n"]
        lines += rows(by_t, COLUMNS)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapeworld-tiny")
    ap.add_argument("--runs", type=int, default=48)
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--times", type=float, nargs="+", default=[0.3, 0.6, 0.8, 0.95])
    ap.add_argument("--objects", action="store_true", help="count the loss on the object only")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    ap.add_argument("--json", help="write the ratios to this file")
    args = ap.parse_args()
    if args.runs < 1 or not all(0.0 < t <= 1.0 for t in args.times):
        ap.error("--runs must be >= 1 and every time in (0, 1]")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model)
    result = measure(pipe, args.runs, args.times, args.seed, args.objects)
    where = "on the object only" if args.objects else "over the clip"
    print(f"Model `{pipe.name}`, {args.runs} one-object scenes (seed {args.seed}), loss {where}:")
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
