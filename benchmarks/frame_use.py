"""How much a model uses the other frames: the flow loss of one latent frame given its
neighbours clean, against the same frame's loss when no frame is given.

    python benchmarks/frame_use.py [--model shapeworld-tiny ...] [--clips 24] [--json F]

Clip i renders a ShapeWorld scene of one moving object under a static camera (seed (--seed, i),
no held-out combination) with its detailed caption. The middle latent frame is noised to flow
time t with fixed noise; "alone": every frame is noised to t and the loss is read on that frame;
"given": every other frame is given clean (the `frames` condition the model trained with). The
object's place in the middle frame follows from the frames either side, so a model that binds
frames through attention does far better given them (a ratio well under 1); one that draws each
frame on its own does about as well alone. The same clips, noise and t for every model given.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch
from text_reliance import moving_scene as one_moving_object  # a sibling: benchmarks/ is on sys.path

from kinetoscope.diffusion.conditioning import FrameCondition
from kinetoscope.diffusion.flow import flow_loss, frame_noise
from kinetoscope.pipeline import Notice, Pipeline
from kinetoscope.world.captions import caption
from kinetoscope.world.render import render
from kinetoscope.world.scene import Scene


def moving_scene(rng: np.random.Generator) -> Scene:
    """Returns text_reliance's scene of one moving object (no held-out combination) under a
    static camera."""
    scene = one_moving_object(rng)
    scene.camera = "static"
    return scene


def clips(pipe: Pipeline, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Returns the latents [n, C, T, h, w] and detailed captions of n one-object moving clips."""
    d = pipe.defaults
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Notice)
        frames = pipe.num_frames(None, None, d.fps)  # the default length, 1 + 4k frames
    latents, captions = [], []
    for i in range(n):
        scene = moving_scene(np.random.default_rng([seed, i]))
        video = render(scene, d.width, d.height, frames, d.fps, seed=i)
        latents.append(pipe.encode_frames(video.frames))
        captions.append(caption(scene, "detailed", seed=i))
    return torch.cat(latents), captions


@torch.no_grad()
def measure(pipe: Pipeline, x0: torch.Tensor, captions, times, seed: int = 0) -> dict:
    """Returns {t: {"alone", "given", "ratio"}}: mean squared velocity error on the middle frame."""
    b, _, frames, _, _ = x0.shape
    mid = frames // 2
    noise = frame_noise(x0.shape, torch.Generator().manual_seed(seed), pipe.defaults.noise_corr)
    with pipe._autocast():
        ctx, mask = pipe.text_encoder(captions)
    known = torch.ones(b, frames, dtype=torch.bool)
    known[:, mid] = False
    out = {}
    for t in times:
        tt = torch.full((b,), t)
        with pipe._autocast():
            v = pipe.dit(x0 * (1 - t) + noise * t, tt, ctx, mask).float()
            given = flow_loss(pipe.dit, x0, tt, noise, ctx, mask, FrameCondition(known, x0))
        alone = (v - (noise - x0))[:, :, mid].square().mean().item()
        out[t] = {"alone": alone, "given": given.item(), "ratio": given.item() / alone}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", default=["shapeworld-tiny"])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--times", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.clips < 1 or not all(0.0 < t <= 1.0 for t in args.times):
        ap.error("--clips must be >= 1 and every time in (0, 1]")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    print(f"{args.clips} clips (seed {args.seed}), loss on the middle latent frame:\n")
    print("| model | t | alone | given the other frames | ratio |\n|---|---|---|---|---|")
    for name in args.model:
        pipe = Pipeline.from_pretrained(name)
        x0, captions = clips(pipe, args.clips, args.seed)
        r = results[name] = measure(pipe, x0, captions, args.times, args.seed)
        for t, m in r.items():
            print(f"| {name} | {t:g} | {m['alone']:.4f} | {m['given']:.4f} | {m['ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {n: {str(t): m for t, m in r.items()} for n, r in results.items()}, f, indent=2
            )


if __name__ == "__main__":
    main()
