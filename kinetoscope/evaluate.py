"""Measuring a model: prompt adherence judged on ShapeWorld, and VAE reconstruction.

Adherence: one video per prompt (prompt i gets seed + i, so a run is reproducible and a
smaller count is a prefix of a larger one), each read back by the judge and scored against
the prompt *as the user wrote it*: expansion may help or hurt, but the model is held to what
was asked. An attribute's accuracy is the mean agreement over the prompts that state it.

Reconstruction: held-out ShapeWorld scenes (combinations training never draws) rendered at
the model's size, put through the VAE exactly as generation does (bf16 autocast, decoded one
latent frame at a time) and compared in uint8 pixels, as a user sees them.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from kinetoscope.errors import UserError
from kinetoscope.pipeline import Notice
from kinetoscope.video import Video

# Every attribute `judge.score` can report, in the order tables print them.
ATTRIBUTES = ("color", "shape", "size", "motion", "speed", "camera", "environment", "time",
              "count")  # fmt: skip
LABELS = {"time": "day/night", "count": "object count"}


def check_count(count: int | None, available: int | None = None) -> None:
    """Raises UserError unless `count` is None or in 1..available."""
    if count is None:
        return
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if available is not None and count > available:
        raise UserError(f"--count {count} is more than the {available} prompts given")


# ---------------------------------------------------------------- adherence


def eval_adherence(
    pipe,
    prompts: list[str],
    expand: bool = True,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    count: int | None = None,
    progress: bool = True,
) -> dict:
    """Returns {"attributes": {name: {"accuracy", "n"}}, "overall", "per_prompt", ...} for
    one video per prompt (the first `count`, default all), prompt i generated with seed + i.
    Each of per_prompt holds the prompt, its expansion, the seed, the scores and what the
    judge saw (`seen`, a scene dict: for confusions such as which shape is drawn for which).

    `accuracy` is None where no prompt states the attribute (n = 0); `overall` is the mean
    over prompts of the judge's per-prompt overall score.
    """
    from kinetoscope.world.judge import judge, score_scene

    check_count(count, len(prompts))
    prompts = list(prompts[:count] if count else prompts)
    if not prompts:
        raise UserError("no prompts to evaluate")
    per_prompt = []
    start = time.perf_counter()
    for i, prompt in enumerate(tqdm(prompts, desc="adherence", unit="video", disable=not progress)):
        with warnings.catch_warnings():  # the defaults' rounding notice, once per video
            warnings.simplefilter("ignore", Notice)
            video = pipe.generate(prompt, steps=steps, guidance=guidance, seed=seed + i,
                                  expand=expand, progress=False)  # fmt: skip
        expanded = video.metadata.get("expanded_prompt")
        seen = judge(video)
        scores = score_scene(seen, prompt)  # against what the user asked, not the expansion
        per_prompt.append({"prompt": prompt, "expanded_prompt": expanded, "seed": seed + i,
                           "scores": scores, "seen": seen.to_dict()})  # fmt: skip
    d = pipe.defaults
    return {
        "model": pipe.name,
        "expand": expand,
        "seed": seed,
        "count": len(prompts),
        "steps": steps or d.steps,
        "guidance": d.guidance if guidance is None else guidance,
        "keyframe": d.keyframe,
        "size": [video.width, video.height],
        "frames": video.num_frames,
        "fps": video.fps,
        **summarise([p["scores"] for p in per_prompt]),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "per_prompt": per_prompt,
    }


def summarise(scores: list[dict]) -> dict:
    """Returns {"attributes": {attribute: {"accuracy": mean agreement or None, "n": prompts
    stating it}}, "overall": mean of the overall scores} of the judge's per-video `scores`."""
    attributes = {}
    for key in ATTRIBUTES:
        vals = [s[key] for s in scores if key in s]
        attributes[key] = {"accuracy": float(np.mean(vals)) if vals else None, "n": len(vals)}
    return {"attributes": attributes, "overall": float(np.mean([s["overall"] for s in scores]))}


def adherence_table(result: dict) -> str:
    """Returns the per-attribute accuracies and the overall score as a text table."""
    lines = [f"{'attribute':<14}{'accuracy':>9}{'n':>6}"]
    for key, r in result["attributes"].items():
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        lines.append(f"{LABELS.get(key, key):<14}{acc:>9}{r['n']:>6}")
    lines.append(f"{'overall':<14}{100 * result['overall']:>8.1f}%{result['count']:>6}")
    return "\n".join(lines)


# ---------------------------------------------------------------- reconstruction


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray, dtype: torch.dtype = torch.bfloat16) -> np.ndarray:
    """Returns uint8 `[T, H, W, 3]`: `frames` encoded and decoded one latent frame at a time,
    under autocast to `dtype` (float32: plain), as the pipeline generates."""
    device = next(vae.parameters()).device
    cast = nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)
    x = Video(np.ascontiguousarray(frames)).to_tensor()[None].to(device)  # [1, 3, T, H, W]
    with cast:
        z = vae.encode(x).float()  # [1, C, 1 + (T-1)/4, H/8, W/8]
        chunks = [c[0].float().cpu() for c in vae.decode_chunks(z)]  # [3, t, H, W] each
    return Video.from_tensor(torch.cat(chunks, dim=1)).frames


def eval_vae(
    vae,
    count: int = 64,
    seed: int = 0,
    width: int = 64,
    height: int = 64,
    frames: int = 33,
    fps: float = 8.0,
    dtype: torch.dtype = torch.bfloat16,
    progress: bool = True,
) -> dict:
    """Returns {"psnr", "ssim" (means), "psnr_min", "count", ...} of the VAE's round trip on
    `count` held-out ShapeWorld clips; clip i depends only on (seed, i)."""
    from kinetoscope.metrics import psnr, ssim
    from kinetoscope.world.render import render
    from kinetoscope.world.scene import sample_heldout_scene

    check_count(count)
    tf, sf = vae.cfg.time_factor, vae.cfg.space_factor
    if frames < 1 or (frames - 1) % tf:
        raise UserError(f"the VAE takes 1 + {tf}k frames, got {frames}")
    if width % sf or height % sf or width < sf or height < sf:
        raise UserError(f"size must be multiples of {sf}, got {width}x{height}")
    p, s = [], []
    start = time.perf_counter()
    for i in tqdm(range(count), desc="vae", unit="clip", disable=not progress):
        scene = sample_heldout_scene(np.random.default_rng([seed, i]))
        clip = render(scene, width, height, frames, fps, seed=seed * 100_003 + i).frames
        out = reconstruct(vae, clip, dtype)
        p.append(psnr(clip, out))
        s.append(ssim(clip, out))
    return {
        "count": count,
        "seed": seed,
        "size": [width, height],
        "frames": frames,
        "fps": fps,
        "dtype": str(dtype).removeprefix("torch."),
        "psnr": float(np.mean(p)),
        "psnr_min": float(np.min(p)),
        "ssim": float(np.mean(s)),
        "ssim_min": float(np.min(s)),
        "wall_seconds": round(time.perf_counter() - start, 2),
    }


def vae_table(result: dict) -> str:
    """Returns mean and worst PSNR / SSIM as a text table."""
    fmt = lambda v: "inf" if math.isinf(v) else f"{v:.2f}"
    return "\n".join([
        f"{'metric':<10}{'mean':>8}{'worst':>8}",
        f"{'PSNR (dB)':<10}{fmt(result['psnr']):>8}{fmt(result['psnr_min']):>8}",
        f"{'SSIM':<10}{result['ssim']:>8.4f}{result['ssim_min']:>8.4f}",
    ])  # fmt: skip
