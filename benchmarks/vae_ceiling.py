"""What the judge reads through a VAE alone: the adherence ceiling the VAE leaves the DiT.

    python benchmarks/vae_ceiling.py [--model shapeworld-tiny] [--runs 100] [--seed 7]

Run i renders a held-out scene (seed (--seed, i)), round-trips its 33 frames through the VAE
(encode, decode chunk by chunk, bf16 autocast: `evaluate.reconstruct`, as the pipeline
decodes) and scores the result against the scene's short caption with the judge. No DiT is
involved, so an attribute the judge misses here is one no model on this VAE can show it.
--model takes what `kinetoscope eval vae` takes: a bundled name, a folder or a VAE run.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm.auto import tqdm

from kinetoscope.evaluate import adherence_table, reconstruct, summarise
from kinetoscope.pipeline import Pipeline
from kinetoscope.pretrained import load_vae_run
from kinetoscope.video import Video
from kinetoscope.world.captions import caption
from kinetoscope.world.judge import score
from kinetoscope.world.render import render
from kinetoscope.world.scene import sample_heldout_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapeworld-tiny")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_vae_run(args.model)
    vae = run[0] if run else Pipeline.from_pretrained(args.model).vae
    scores = []
    for i in tqdm(range(args.runs), desc="round trips", unit="clip"):
        scene = sample_heldout_scene(np.random.default_rng([args.seed, i]))
        clip = render(scene, 64, 64, 33, 8.0, seed=i).frames
        out = Video(reconstruct(vae, clip), fps=8.0)
        scores.append(score(out, caption(scene, "short", seed=i)))
    print(f"VAE of `{args.model}`, {args.runs} held-out scenes (seed {args.seed}), round trips:")
    print(adherence_table({**summarise(scores), "count": args.runs}))


if __name__ == "__main__":
    main()
