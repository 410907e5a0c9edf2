"""What a model's text encoder tells apart: a linear probe of each attribute on its output.

    python benchmarks/text_probe.py [--model shapeworld-tiny] [--train 900] [--test 300]
                                    [--seed 5] [--threads N] [--json F]

Draws one-object ShapeWorld scenes (no held-out combination; scene i from seed (--seed, i)),
encodes each one's detailed caption with the model's text encoder, and pools the output as
the text stage's reading head does (mean and max over the caption's bytes). For each attribute
a logistic regression is fitted on the first --train captions and scored on the next --test,
which it never saw: the share it reads right, beside the share of the commonest value (what
a probe that reads nothing gets). Speed is probed on moving objects only (a still object's
caption states none). The DiT reads the encoder's output token by token, not pooled, so a low
score here says the words are hard to get at, not that the DiT cannot; a diagnostic of what
the encoder carries, seconds to run. `text_reliance.py` says what the DiT uses.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from tqdm.auto import tqdm

from kinetoscope.models.layers import pool_text
from kinetoscope.pipeline import Pipeline
from kinetoscope.world.captions import caption
from kinetoscope.world.scene import HELDOUT, OBJECT_KEYS, SCENE_KEYS, VOCAB, Scene, sample_scene

ATTRIBUTES = (*OBJECT_KEYS, *SCENE_KEYS)


def label(scene: Scene, key: str) -> int | None:
    """Returns the index of the scene's (its one object's) value of `key` in VOCAB, or None
    where the caption does not state it (the speed of a still object)."""
    if key == "speed" and scene.objects[0].motion == "still":
        return None
    holder = scene.objects[0] if key in OBJECT_KEYS else scene
    return VOCAB[key].index(getattr(holder, key))


@torch.no_grad()
def features(pipe: Pipeline, n: int, seed: int) -> tuple[torch.Tensor, list[Scene]]:
    """Returns the pooled text features [n, 2D] of n one-object scenes' captions, and the scenes."""
    rows, scenes = [], []
    for i in tqdm(range(n), desc="encode captions"):
        scene = sample_scene(np.random.default_rng([seed, i]), exclude=HELDOUT, num_objects=1)
        with pipe._autocast():
            h, mask = pipe.text_encoder([caption(scene, "detailed", seed=i)])
        rows.append(pool_text(h, mask)[0])
        scenes.append(scene)
    return torch.stack(rows), scenes


def probe(x_fit, y_fit, x_test, y_test, classes: int, iters: int = 300) -> float:
    """Returns the test accuracy of a logistic regression fitted on (x_fit, y_fit) (features
    standardised by the fit set's statistics, L2 1e-3, Adam)."""
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    x_fit, x_test = (x_fit - mean) / std, (x_test - mean) / std
    g = torch.Generator().manual_seed(0)
    w = (0.01 * torch.randn(x_fit.shape[1], classes, generator=g)).requires_grad_()
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    with torch.enable_grad():
        for _ in range(iters):
            loss = torch.nn.functional.cross_entropy(x_fit @ w + b, y_fit)
            loss = loss + 1e-3 * w.square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return ((x_test @ w + b).argmax(1) == y_test).float().mean().item()


def measure(pipe: Pipeline, fit: int, test: int, seed: int = 5) -> dict[str, dict]:
    """Returns {attribute: {probe, commonest, classes, test}}: accuracies on the test captions."""
    x, scenes = features(pipe, fit + test, seed)
    out = {}
    for key in ATTRIBUTES:
        labels = [label(s, key) for s in scenes]
        keep = torch.tensor([y is not None for y in labels])
        y = torch.tensor([-1 if v is None else v for v in labels])
        is_fit = torch.arange(len(scenes)) < fit
        a, b = keep & is_fit, keep & ~is_fit
        classes = len(VOCAB[key])
        counts = torch.bincount(y[b], minlength=classes)
        out[key] = {
            "probe": probe(x[a], y[a], x[b], y[b], classes),
            "commonest": (counts.max() / counts.sum()).item(),
            "classes": classes,
            "test": int(b.sum()),
        }
    return out


def table(result: dict) -> str:
    lines = ["| attribute | probe | commonest value | values | test captions |", "|---" * 5 + "|"]
    for key, r in result.items():
        lines.append(
            f"| {key} | {r['probe']:.1%} | {r['commonest']:.1%} | {r['classes']} | {r['test']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapeworld-tiny")
    ap.add_argument("--train", type=int, default=900, help="captions the probes are fitted on")
    ap.add_argument("--test", type=int, default=300, help="other captions they are scored on")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    ap.add_argument("--json", help="write the accuracies to this file")
    args = ap.parse_args()
    if args.train < 10 or args.test < 10:
        ap.error("--train and --test must be >= 10")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model)
    result = measure(pipe, args.train, args.test, args.seed)
    print(f"Model `{pipe.name}`: linear probes on the text encoder's pooled output")
    print(f"({args.train} captions to fit, {args.test} others to score; seed {args.seed}):\n")
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
