"""How well a model tells one value of an attribute from another by its words alone.

    python benchmarks/word_reading.py [--model shapeworld-tiny] [--runs 24] [--seed 77]
                                      [--keys color shape motion speed size]
                                      [--times 0.3 0.6 0.8 0.95] [--threads N] [--json F]

Run i renders a one-object ShapeWorld scene whose object moves (seed (--seed, i), no held-out
combination) and, for each attribute, its twin: the same scene and render seed with that
attribute changed (`scene.swap`, its own seed per attribute, so --keys does not change the
twins), so the two clips differ only where the object differs. The
average of the two clips' latents, noised at time t (one noise draw per run), shows where the
object is but not which of the two it is; the model predicts the velocity under each clip's
detailed caption. A model that reads the word makes the two predictions differ as the two
clips do. The table gives, on the objects (the union of the two masks on the latent grid), the
share of the clips' difference the predictions' difference explains: 1 - sum |(v_a - v_b) -
(z_b - z_a)|^2 / sum |z_b - z_a|^2 over the runs. 1 is a perfect reader; 0 a model whose
prediction does not depend on those words; below 0, one that moves the wrong way.

Unlike `text_reliance.py`, nothing in the noisy input tells the two apart, so this measures
the words alone at every t. A diagnostic of what training taught, a minute to run; adherence
(`kinetoscope eval adherence`) is the measure.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch
from text_reliance import moving_scene, rows
from tqdm.auto import tqdm

from kinetoscope.diffusion.conditioning import frame_timesteps
from kinetoscope.diffusion.flow import frame_noise
from kinetoscope.pipeline import Notice, Pipeline
from kinetoscope.world.captions import caption
from kinetoscope.world.render import render
from kinetoscope.world.scene import swap

KEYS = ("color", "shape", "motion", "speed", "size")


@torch.no_grad()
def measure(
    pipe: Pipeline, runs: int, times: list[float], keys=KEYS, seed: int = 77
) -> dict[float, dict[str, float | None]]:
    """Returns {t: {key: share of the twins' difference explained}} (None: no twin drawn)."""
    from kinetoscope.train.objects import latent_coverage

    d = pipe.defaults
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Notice)
        length = pipe.num_frames(None, None, d.fps)  # the default clip, 1 + 4k frames
    miss = {t: {k: 0.0 for k in keys} for t in times}  # sum |pred - want|^2 on the objects
    total = {k: 0.0 for k in keys}  # sum |want|^2 on the objects (the same at every t)
    for i in tqdm(range(runs), desc="word reading"):
        rng = np.random.default_rng([seed, i])
        scene = moving_scene(rng)
        video, cover = render(scene, d.width, d.height, length, d.fps, seed=i, coverage=True)
        z = pipe.encode_frames(video.frames)
        grid = tuple(z.shape[2:])
        noise = frame_noise(z.shape, torch.Generator().manual_seed(i), pipe.defaults.noise_corr)
        for key in keys:
            other = swap(scene, key, np.random.default_rng([seed, i, KEYS.index(key)]))
            if other is None:
                continue
            twin, twin_cover = render(other, d.width, d.height, length, d.fps, i, coverage=True)
            z2 = pipe.encode_frames(twin.frames)
            both = (cover.max(0), twin_cover.max(0))  # any shape's
            masks = [latent_coverage(torch.from_numpy(c)[None], grid) for c in both]
            w = torch.maximum(*masks)  # [1, 1, t, h, w]
            want = (z2 - z).float()  # v_a - v_b should be (eps - z) - (eps - z2)
            total[key] += float((want.square() * w).sum())
            captions = [caption(scene, "detailed", seed=i), caption(other, "detailed", seed=i)]
            mid = (z + z2) / 2
            with pipe._autocast():
                ids, mask = pipe.text_encoder(captions)
                for t in times:
                    x_t = ((1 - t) * mid + t * noise).expand(2, *z.shape[1:])
                    v = pipe.dit(x_t, frame_timesteps(torch.tensor([t, t]), z.shape[2]), ids, mask)
                    pred = (v[:1] - v[1:]).float()  # the same input: v_a - v_b
                    miss[t][key] += float(((pred - want).square() * w).sum())
    return {t: {k: 1 - miss[t][k] / total[k] if total[k] else None for k in keys} for t in times}


def table(result: dict) -> str:
    return "\n".join(rows(result, list(next(iter(result.values())))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapeworld-tiny")
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--keys", nargs="+", default=list(KEYS), choices=KEYS)
    ap.add_argument("--times", type=float, nargs="+", default=[0.3, 0.6, 0.8, 0.95])
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    ap.add_argument("--json", help="write the shares to this file")
    args = ap.parse_args()
    if args.runs < 1 or not all(0.0 < t <= 1.0 for t in args.times):
        ap.error("--runs must be >= 1 and every time in (0, 1]")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model)
    result = measure(pipe, args.runs, args.times, args.keys, args.seed)
    print(f"Model `{pipe.name}`, {args.runs} one-object scenes (seed {args.seed}): share of the")
    print("twins' difference on the objects that the words alone explain (1 = all, 0 = none)")
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
