"""ShapeWorld benchmark: render speed and how often the judge reads each attribute right.

    python benchmarks/world.py --scenes 1000 [--markdown docs/world_table.md]

Columns: clean 64x64 clips, other sizes and aspects, then 64x64 clips degraded by Gaussian
noise (sigma 10/255), a Gaussian blur (sigma 1) and H.264 at a low bitrate. Each clip is the
standard 4 s at 8 fps (33 frames). Objects are matched to the true ones by colour, then by
nearest starting position; a true object the judge did not find counts as wrong on every
object attribute. Speed is scored only for moving objects (a still object's speed is not
visible).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import statistics
import time

import av
import numpy as np

from kinetoscope.video import Video
from kinetoscope.world.judge import judge
from kinetoscope.world.render import render
from kinetoscope.world.scene import OBJECT_KEYS, SCENE_KEYS, Scene, sample_scene

FRAMES, FPS = 33, 8.0
SIZES = ((96, 64), (48, 80), (128, 128), (160, 96))
H264_KBPS = 40  # for 64x64 at 8 fps: about 1.2 bits per pixel, visibly blocky
ROWS = (*SCENE_KEYS, "count", *OBJECT_KEYS)


def add_noise(video: Video, sigma: float = 10.0, seed: int = 0) -> Video:
    """Returns the video plus Gaussian noise of `sigma` (in 0..255 levels), clipped."""
    rng = np.random.default_rng(seed)
    f = video.frames.astype(np.float32) + rng.normal(0, sigma, video.frames.shape)
    return Video(np.clip(f + 0.5, 0, 255).astype(np.uint8), video.fps)


def blur(video: Video, sigma: float = 1.0) -> Video:
    """Returns the video blurred by a separable Gaussian of `sigma` pixels (edges repeated)."""
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    f = video.frames.astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        p = np.pad(f, pad, mode="edge")
        n = f.shape[axis]
        f = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return Video(np.clip(f + 0.5, 0, 255).astype(np.uint8), video.fps)


def h264(video: Video, kbps: float = H264_KBPS) -> tuple[Video, float]:
    """Returns (the video after an H.264 round trip at `kbps`, the achieved kbps)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=int(video.fps))
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        stream.bit_rate = int(kbps * 1000)
        for f in video.frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    size = buf.tell()
    buf.seek(0)
    with av.open(buf) as inp:
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    return Video(np.stack(frames), video.fps), size * 8 / 1000 / video.duration


def compare(truth: Scene, seen: Scene) -> dict[str, list[bool]]:
    """Returns {attribute: [correct?, ...]}, one entry per scene key and per true object."""
    out: dict[str, list[bool]] = {k: [] for k in ROWS}
    for key in SCENE_KEYS:
        out[key].append(getattr(truth, key) == getattr(seen, key))
    out["count"].append(len(truth.objects) == len(seen.objects))
    free = list(seen.objects)
    match = {}
    for i, o in enumerate(truth.objects):
        same = [s for s in free if s.color == o.color]
        if same:
            match[i] = same[0]
            free.remove(same[0])
    for i, o in enumerate(truth.objects):
        if i not in match and free:
            best = min(free, key=lambda s: (s.x - o.x) ** 2 + (s.y - o.y) ** 2)
            match[i] = best
            free.remove(best)
    for i, o in enumerate(truth.objects):
        m = match.get(i)
        for key in OBJECT_KEYS:
            if key == "speed" and o.motion == "still":
                continue
            out[key].append(m is not None and getattr(m, key) == getattr(o, key))
    return out


def _degrade(video: Video, name: str | None, i: int) -> tuple[Video, float | None]:
    """Returns (the degraded video, achieved kbps for H.264 else None)."""
    if name == "noise":
        return add_noise(video, 10.0, seed=i), None
    if name == "blur":
        return blur(video, 1.0), None
    if name == "h264":
        return h264(video)
    return video, None


def _run(job: tuple) -> tuple[dict[str, list[bool]], list[float]]:
    """Renders, degrades and judges a chunk of (index, scene, size) in one process."""
    items, degrade = job
    tally: dict[str, list[bool]] = {k: [] for k in ROWS}
    kbps = []
    for i, scene, (w, h) in items:
        video, rate = _degrade(render(scene, w, h, FRAMES, FPS, seed=i), degrade, i)
        if rate is not None:
            kbps.append(rate)
        for key, vals in compare(scene, judge(video)).items():
            tally[key] += vals
    return tally, kbps


def evaluate(
    n: int, size: tuple[int, int] | None, degrade: str | None, seed: int, workers: int = 1
) -> tuple[dict[str, float], list[float]]:
    """Returns ({attribute: accuracy}, H.264 kbps seen) over `n` random scenes (size None:
    cycle SIZES)."""
    rng = np.random.default_rng(seed)
    items = [(i, sample_scene(rng), size or SIZES[i % len(SIZES)]) for i in range(n)]
    jobs = [(items[k::workers], degrade) for k in range(workers)]
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            parts = pool.map(_run, jobs)
    else:
        parts = [_run(jobs[0])]
    tally = {k: sum((p[0][k] for p in parts), []) for k in ROWS}
    return {k: float(np.mean(v)) for k, v in tally.items()}, sum((p[1] for p in parts), [])


def render_speed(runs: int, seed: int = 0) -> dict[str, float]:
    """Returns median milliseconds of render and judge of a 64x64, 33-frame clip over random
    scenes, as wall time and as this process's CPU time (which other jobs on a shared
    machine do not inflate)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(runs)]
    judge(render(scenes[0], 64, 64, FRAMES))  # builds the judge's reference table once
    times: dict[str, list[float]] = {"render": [], "render_cpu": [], "judge": [], "judge_cpu": []}
    for s in scenes:
        w0, c0 = time.perf_counter(), time.process_time()
        video = render(s, 64, 64, FRAMES, FPS)
        w1, c1 = time.perf_counter(), time.process_time()
        judge(video)
        times["render"].append(w1 - w0)
        times["render_cpu"].append(c1 - c0)
        times["judge"].append(time.perf_counter() - w1)
        times["judge_cpu"].append(time.process_time() - c1)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=1000, help="scenes per 64x64 column")
    p.add_argument("--sizes", type=int, default=None, help="scenes at other sizes (scenes/5)")
    p.add_argument("--speed-runs", type=int, default=200)
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--workers", type=int, default=1, help="processes for the accuracy runs")
    args = p.parse_args()

    ms = render_speed(args.speed_runs)
    speed = (
        f"render 64x64, 33 frames: {ms['render']:.1f} ms wall, {ms['render_cpu']:.1f} ms CPU; "
        f"judge: {ms['judge']:.1f} ms wall, {ms['judge_cpu']:.1f} ms CPU "
        f"(medians over {args.speed_runs} random scenes)"
    )
    print(speed)
    if args.scenes == 0:  # speed only
        return
    n, n_sizes = args.scenes, args.sizes or max(1, args.scenes // 5)
    columns = {
        "clean 64x64": (n, (64, 64), None),
        "other sizes": (n_sizes, None, None),
        "noise 10/255": (n, (64, 64), "noise"),
        "blur sigma 1": (n, (64, 64), "blur"),
        f"h264 {H264_KBPS} kbps": (n, (64, 64), "h264"),
    }
    results, kbps_seen = {}, []
    for name, (count, size, degrade) in columns.items():
        t0 = time.perf_counter()
        results[name], kbps = evaluate(count, size, degrade, args.seed, args.workers)
        kbps_seen += kbps
        print(f"  {name}: {count} scenes in {time.perf_counter() - t0:.0f} s", flush=True)
    head = "| attribute | " + " | ".join(f"{k} (n={v[0]})" for k, v in columns.items()) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 1)]
    for key in ROWS:
        cells = " | ".join(f"{100 * results[c][key]:.1f}%" for c in columns)
        lines.append(f"| {key} | {cells} |")
    sizes = ", ".join(f"{w}x{h}" for w, h in SIZES)
    notes = [
        speed,
        f"other sizes cycle {sizes}; H.264 achieved {np.mean(kbps_seen):.0f} kbps on average",
    ]
    table = "\n".join(lines + [""] + notes)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
