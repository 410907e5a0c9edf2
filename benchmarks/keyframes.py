"""What a model draws as an image: each prompt's keyframe, judged for its object's shape.

    python benchmarks/keyframes.py [--model shapeworld-tiny] [--prompts benchmarks/probe_world.txt]
                                   [--count N] [--steps S] [--guidance G] [--shift F]
                                   [--sampler euler] [--threads N] [--grid F.png] [--json F]

Text to video starts from a keyframe (latent frame 0 sampled alone, as an image, then the clip
with it given), so the shape a keyframe draws is the clip's. Prompt i is generated as one frame
(`Pipeline.generate(frames=1)`, the prompt as written, no expansion) with seed i, and judged;
over the prompts that state one object, the table counts the stated shape against the shape
seen on the object of the stated colour ("(none)": no object of that colour). An image is 64
DiT tokens at 64x64 against 576 for a clip, so sampler settings are tried here in seconds.
`--grid` writes the first 24 images, 6 a row, 3x enlarged.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import replace

import numpy as np
import torch
from confusion import NONE, confusions, extras, table
from tqdm.auto import tqdm

from kinetoscope.diffusion.sampling import SAMPLERS
from kinetoscope.pipeline import Notice, Pipeline
from kinetoscope.video import Video
from kinetoscope.world.judge import judge


def measure(pipe, prompts: list[str], steps=None, guidance=None) -> tuple[list[dict], list]:
    """Returns (records {"prompt", "seed", "seen"} as `eval adherence --json` keeps them, the
    images [H, W, 3] uint8), prompt i drawn with seed i."""
    records, images = [], []
    for i, prompt in enumerate(tqdm(prompts, desc="keyframes", unit="image")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Notice)
            v = pipe.generate(prompt, frames=1, steps=steps, guidance=guidance, seed=i,
                              expand=False, progress=False)  # fmt: skip
        records.append({"prompt": prompt, "seed": i, "seen": judge(v).to_dict()})
        images.append(v.frames[0])
    return records, images


def summary(counts) -> dict:
    """Returns from `confusions(records, "shape")` the shape counts over the one-object prompts:
    right, no object of the stated colour, and how many there were."""
    n = sum(counts.values())
    right = sum(v for (a, b), v in counts.items() if a == b)
    missing = sum(v for (_, b), v in counts.items() if b == NONE)
    return {"one_object_prompts": n, "shape_right": right, "no_object_of_the_colour": missing}


def grid(images: list[np.ndarray], per_row: int = 6, scale: int = 3) -> np.ndarray:
    """Returns up to 4 rows of `per_row` images side by side, each pixel `scale` x `scale`."""
    images = images[: 4 * per_row]
    blank = np.zeros_like(images[0])
    rows = [images[i : i + per_row] for i in range(0, len(images), per_row)]
    rows = [np.concatenate(r + [blank] * (per_row - len(r)), 1) for r in rows]
    return np.concatenate(rows, 0).repeat(scale, 0).repeat(scale, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapeworld-tiny")
    ap.add_argument("--prompts", default="benchmarks/probe_world.txt", help="one prompt a line")
    ap.add_argument("--count", type=int, default=None, help="the first N prompts (default all)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (model default)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance (model default)")
    ap.add_argument("--shift", type=float, default=None, help="sampling shift (model default)")
    ap.add_argument("--sampler", choices=SAMPLERS, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--grid", default=None, help="write the first 24 images here (.png)")
    ap.add_argument("--json", default=None, help="write the records and the counts here")
    args = ap.parse_args()
    if args.count is not None and args.count < 1:
        ap.error(f"--count must be >= 1, got {args.count}")
    try:
        with open(args.prompts) as f:
            prompts = [line.strip() for line in f if line.strip()]
    except OSError as e:
        ap.error(f"--prompts: {e}")
    prompts = prompts[: args.count]
    if not prompts:
        ap.error(f"--prompts: no prompt in {args.prompts}")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model)
    given = {k: getattr(args, k) for k in ("shift", "sampler") if getattr(args, k) is not None}
    try:  # PipelineDefaults checks them (shift > 0)
        pipe.defaults = replace(pipe.defaults, **given)
    except ValueError as e:  # its messages start with the field's name
        ap.error(f"--{e}")
    records, images = measure(pipe, prompts, args.steps, args.guidance)
    counts = confusions(records, "shape")
    s = summary(counts)
    print(table(counts, "shape") + "\n")
    print(f"shape right {s['shape_right']}/{s['one_object_prompts']}, no object of the stated "
          f"colour {s['no_object_of_the_colour']}")  # fmt: skip
    seen, _ = extras(records)
    print("objects seen per image: " + ", ".join(f"{n}: {v}" for n, v in sorted(seen.items())))
    if args.grid:
        Video(grid(images)[None]).save(args.grid)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": pipe.name, **vars(args), **s, "per_prompt": records}, f, indent=1)


if __name__ == "__main__":
    main()
