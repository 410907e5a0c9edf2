"""Timing on this machine: a default generation split into its stages, and world rendering.

The split times the pipeline's own stage methods while `Pipeline.generate` runs as it always
does (nothing is re-implemented here): `encode_prompt` (expansion + text encoder) is "text",
`sample_latents` (the DiT sampler loop) is "sampling", the reads of `decode_chunks` (causal VAE
decode to uint8) are "decoding", and `encode_frames` (re-encoding a window's known frames; only
videos longer than one window) is "vae encode". What is left of the wall time is "other".
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from kinetoscope.errors import UserError
from kinetoscope.pipeline import Notice

PROMPT = "a red ball bouncing in the snow"
STAGES = {"encode_prompt": "text", "sample_latents": "sampling", "decode_chunks": "decoding",
          "encode_frames": "vae encode"}  # fmt: skip
PARTS = ("text", "sampling", "decoding", "vae encode", "other", "total")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)


@contextmanager
def timed_stages(pipe, timings: dict[str, float]):
    """Adds the seconds spent in each stage of `pipe` to `timings` while the block runs.

    The stage methods are wrapped on this instance only and restored afterwards.
    """

    def timed(fn, part):
        def run(*args, **kw):
            _sync(pipe.device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                _sync(pipe.device)
                timings[part] = timings.get(part, 0.0) + time.perf_counter() - t0

        return run

    def timed_gen(fn, part):  # a generator's work happens on each next(), not on the call
        def run(*args, **kw) -> Iterator:
            it = timed(fn, part)(*args, **kw)
            while True:
                item = timed(next, part)(it, None)
                if item is None:
                    return
                yield item

        return run

    own = {name: vars(pipe)[name] for name in STAGES if name in vars(pipe)}  # when nested
    for name, part in STAGES.items():
        wrap = timed_gen if name == "decode_chunks" else timed
        setattr(pipe, name, wrap(getattr(pipe, name), part))
    try:
        yield timings
    finally:
        for name in STAGES:
            delattr(pipe, name)  # back to the class's methods, or to what was there before
            if name in own:
                setattr(pipe, name, own[name])


def bench_generate(
    pipe,
    prompt: str = PROMPT,
    seconds: float | None = None,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    fps: float | None = None,
    seed: int = 0,
    expand: bool = True,
    repeat: int = 3,
) -> dict:
    """Returns {"median": {part: seconds}, "runs": [...], "video": {...}, "machine": {...},
    "last_video": Video} for `repeat` timed generations after one untimed warm-up."""
    if repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {repeat}")
    kw = dict(seconds=seconds, frames=frames, size=size, steps=steps, guidance=guidance,
              fps=fps, seed=seed, expand=expand, progress=False)  # fmt: skip
    runs = []
    with warnings.catch_warnings():  # rounding notices: the table prints the frames made
        warnings.simplefilter("ignore", Notice)
        video = pipe.generate(prompt, **kw)  # warm-up: first-call allocation, kernel choice
        for _ in range(repeat):
            t: dict[str, float] = {}
            with timed_stages(pipe, t):
                _sync(pipe.device)
                t0 = time.perf_counter()
                video = pipe.generate(prompt, **kw)
                _sync(pipe.device)
                total = time.perf_counter() - t0
            runs.append({p: t.get(p, 0.0) for p in PARTS[:4]} | {"total": total})
            runs[-1]["other"] = total - sum(t.values())
    d = pipe.defaults
    latents = 1 + (video.num_frames - 1) // pipe.time_factor
    return {
        "model": pipe.name,
        "prompt": prompt,
        "expanded_prompt": video.metadata.get("expanded_prompt"),
        "video": {
            "width": video.width,
            "height": video.height,
            "frames": video.num_frames,
            "fps": video.fps,
            "seconds": round(video.duration, 3),
            "steps": steps or d.steps,
            "sampler": d.sampler,
            "keyframe": d.keyframe,
            "guide_frames": d.guide_frames,  # applies to windows after the first
            "windows": 1 + max(0, -(-(latents - d.window) // (d.window - d.overlap))),
        },  # fmt: skip
        "repeat": repeat,
        "median": {p: statistics.median(r[p] for r in runs) for p in PARTS},
        "runs": runs,
        "machine": machine(pipe.device),
        "last_video": video,
    }


def bench_render(
    width: int = 64, height: int = 64, frames: int = 33, fps: float = 8.0, repeat: int = 8,
    seed: int = 0,
) -> dict:  # fmt: skip
    """Returns {"median": seconds per clip, "runs": [...]} rendering `repeat` random scenes."""
    import numpy as np

    from kinetoscope.world.render import render
    from kinetoscope.world.scene import sample_scene

    if repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {repeat}")
    scenes = [sample_scene(np.random.default_rng([seed, i])) for i in range(repeat)]
    try:
        render(scenes[0], width, height, frames, fps)  # warm-up
        runs = []
        for i, scene in enumerate(scenes):
            t0 = time.perf_counter()
            render(scene, width, height, frames, fps, seed=i)
            runs.append(time.perf_counter() - t0)
    except ValueError as e:
        raise UserError(str(e)) from None
    return {"size": [width, height], "frames": frames, "fps": fps, "repeat": repeat,
            "median": statistics.median(runs), "runs": runs,
            "machine": machine(torch.device("cpu"))}  # fmt: skip


def machine(device: torch.device) -> dict:
    """Returns what the timings depend on: threads, cores, CPU model and vector ISA, device."""
    info = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": _cpu_model(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def generate_table(result: dict) -> str:
    """Returns the median seconds per part (and share of the total) and the machine."""
    v, med, m = result["video"], result["median"], result["machine"]
    lines = [
        f"{result['model']}: {v['width']}x{v['height']}, {v['frames']} frames "
        f"({v['seconds']:g} s at {v['fps']:g} fps), {v['steps']} steps {v['sampler']}"
        f"{', keyframe first' if v['keyframe'] else ''}"
        f"{', later windows frame-guided' if v['windows'] > 1 and v['guide_frames'] else ''}; "
        f"median of {result['repeat']} after 1 warm-up",
        f"{'part':<12}{'seconds':>9}{'share':>8}",
    ]
    for part in PARTS:
        if part == "vae encode" and not any(r[part] for r in result["runs"]):
            continue  # one window: nothing re-encoded
        share = "" if part == "total" else f"{100 * med[part] / med['total']:.0f}%"
        lines.append(f"{part:<12}{med[part]:>9.3f}{share:>8}")
    lines.append(machine_line(m))
    return "\n".join(lines)


def machine_line(m: dict) -> str:
    gpu = f", gpu: {m['gpu']}" if "gpu" in m else ""
    return (
        f"device {m['device']}{gpu}; torch threads {m['torch_threads']}, os.cpu_count "
        f"{m['cpu_count']}, cpu capability {m['cpu_capability']}; {m['cpu']}; torch {m['torch']}"
    )
