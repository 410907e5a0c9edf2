"""Measures Sora's capabilities on a model: given frames kept, seams, one minute, edit, image.

    python benchmarks/capabilities.py kept  [--model shapeworld-tiny] [--runs 50]
    python benchmarks/capabilities.py seams [--runs 50]
    python benchmarks/capabilities.py long [--minutes 10]    # 4 s, 15 s, 60 s at 64x64, 8 fps
    python benchmarks/capabilities.py edit  [--runs 50]
    python benchmarks/capabilities.py image [--size 2048x2048]
    python benchmarks/capabilities.py all   [--markdown docs/capabilities_results.md] [--json F]

Every input is a ShapeWorld clip rendered from a random scene with no held-out combination
(run i draws its scene from seed (--seed, i)), prompted with the scene's detailed caption
(the kind the model was trained on, so prompts are not expanded). docs/capabilities.md
defines each figure; in short:

- kept: PSNR of the output's given frames against the input frames, next to the PSNR of a
  plain VAE round trip of the same frames; a run passes when it is >= round trip - 1 dB.
- seams: at each seam, the judge's per-colour object tracks are read on the frames either
  side; a seam passes when no object jumps further than 2x its per-frame speed, none vanishes
  or appears away from the frame's edge or another object, and the judge gives every object
  the same shape before and after. The same test on continuous renders (no model) is the
  control: how often the judge itself fails a seam that is perfect.
- long: wall time and peak RSS of generate_to_file in a fresh process, and whether the
  one-minute video keeps its objects' colours and shapes (each 33-frame window vs the first).
- edit: the judge finds the edited environment / time, and the objects' motion unchanged.
- image: wall time and peak RSS of one large image in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kinetoscope.longvideo import known_frames
from kinetoscope.metrics import psnr
from kinetoscope.pipeline import Notice, Pipeline
from kinetoscope.video import Video
from kinetoscope.world import judge as J
from kinetoscope.world.captions import caption
from kinetoscope.world.render import render
from kinetoscope.world.scene import ENVIRONMENTS, HELDOUT, TIMES, sample_scene

CLIP = 17  # frames of a given clip (1 + 4k: the VAE's own length rule, 2 s at 8 fps)
NEW = 16  # frames an extension or a connection adds (4 latent frames, 2 s at 8 fps)
SPAN = 17  # frames judged on each side of a seam
LONG_SEAM_SECONDS = 12.0  # a video of several sliding windows, for the window seams
FLOOR_STEP = 1 / 64  # units per frame: the slowest "speed" a jump is measured against
WHOLE_MIN = 3  # frames an object must be seen whole on each side to compare its shape
KEPT_MARGIN_DB = 1.0
WINDOW = 33  # frames per judged window of a long video (the training clip length)


# ---- inputs -----------------------------------------------------------------------------------


def scene_for(seed: int, i: int):
    """Returns run i's random full scene, no object under a HELDOUT rule."""
    return sample_scene(np.random.default_rng((seed, i)), exclude=HELDOUT)


def prompt_for(scene, i: int) -> str:
    return caption(scene, "detailed", seed=i)


def clip_for(pipe: Pipeline, scene, frames: int) -> Video:
    d = pipe.defaults
    return render(scene, d.width, d.height, frames, fps=d.fps)


def call_pipe(pipe: Pipeline, method: str, *args, seed: int = 0, **kw) -> Video:
    """Returns pipe.method(*args) without progress bars, prompt expansion or notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Notice)
        return getattr(pipe, method)(*args, seed=seed, progress=False, expand=False, **kw)


def roundtrip(pipe: Pipeline, frames: np.ndarray) -> np.ndarray:
    """Returns uint8 frames `[T, H, W, 3]` after VAE encode + decode (T must be 1 + 4k)."""
    z = pipe.encode_frames(frames)
    return np.concatenate(list(pipe.decode_chunks(z)))[: len(frames)]


# ---- the cases: one output per capability per run ---------------------------------------------


@dataclass
class Case:
    """One capability's output, its given frames and its seams (frame index, reference side).

    A seam at s lies between frames s-1 and s; the reference side ('before' or 'after') is the
    one the model was given, whose motion the new frames must continue.
    """

    name: str
    video: Video
    scene: object
    given: list[tuple[slice, np.ndarray]] = field(default_factory=list)
    seams: list[tuple[int, str]] = field(default_factory=list)


def window_seams(pipe: Pipeline, num_frames: int) -> list[int]:
    """Returns the frame indices where each sliding window of a generated video starts adding
    frames (longvideo.roll's schedule: the first window from nothing, later ones on a prefix)."""
    d, tf = pipe.defaults, pipe.time_factor
    remaining = 1 + (num_frames - 1) // tf
    n = min(d.window, remaining)
    pos, remaining, seams = 1 + tf * (n - 1), remaining - n, []
    while remaining > 0:
        seams.append(pos)
        k = 1 + (known_frames(pos, d.overlap, tf) - 1) // tf
        n = min(d.window - k, remaining)
        pos, remaining = pos + tf * n, remaining - n
    return seams


def make_cases(
    pipe: Pipeline, i: int, seed: int, names: tuple[str, ...], perfect: bool = False
) -> list[Case]:
    """Returns run i's outputs for the capabilities in `names` (animate, extend forward,
    extend backward, connect, loop, long), all from one scene and its caption.

    The clip A is the scene's first CLIP frames, B its frames after a NEW-frame gap, so a
    connection has a true middle to invent; extend backward is given B. With `perfect`, no
    model runs: each output is a continuous render of the scene as long as the model's
    (what a perfect model would give), to measure the seam test's own false failures.
    """
    scene, fps = scene_for(seed, i), pipe.defaults.fps
    prompt = prompt_for(scene, i)
    full = clip_for(pipe, scene, 2 * CLIP + NEW).frames
    a, b = full[:CLIP], full[-CLIP:]
    sec = NEW / fps

    def call(method, length, *args, **kw) -> Video:
        if perfect:
            return Video(clip_for(pipe, scene, length).frames, fps)
        return call_pipe(pipe, method, *args, seed=i, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Notice)
        long_frames = pipe.num_frames(LONG_SEAM_SECONDS, None, fps)
    out = []
    if "animate" in names:
        v = call("animate", CLIP, a[0], prompt, frames=CLIP)
        out.append(Case("animate", v, scene, [(slice(0, 1), a[:1])]))
    if "extend forward" in names:
        v = call("extend", CLIP + NEW, Video(a, fps), prompt, seconds=sec)
        out.append(Case("extend forward", v, scene, [(slice(0, CLIP), a)], [(CLIP, "before")]))
    if "extend backward" in names:
        v = call("extend", NEW + CLIP, Video(b, fps), prompt, seconds=sec, direction="backward")
        s = v.num_frames - CLIP
        out.append(Case("extend backward", v, scene, [(slice(s, None), b)], [(s, "after")]))
    if "connect" in names:
        v = call("connect", 2 * CLIP + NEW, Video(a, fps), Video(b, fps), prompt, seconds=sec)
        s = v.num_frames - CLIP
        given = [(slice(0, CLIP), a), (slice(s, None), b)]
        out.append(Case("connect", v, scene, given, [(CLIP, "before"), (s, "after")]))
    if "loop" in names:
        v = call("loop", CLIP + NEW, prompt, video=Video(a, fps), transition=sec)
        # The loop's own seam (its end flowing into its start) becomes a seam by rolling it.
        rolled = v if perfect else Video(np.concatenate([v.frames[CLIP:], v.frames[:CLIP]]), fps)
        seams = [(v.num_frames - CLIP, "after")]
        out.append(Case("loop", v, scene, [(slice(0, CLIP), a)], [(CLIP, "before")]))
        out.append(Case("loop (end to start)", rolled, scene, [], seams))
    if "long" in names:
        v = call("generate", long_frames, prompt, frames=long_frames)
        seams = [(s, "before") for s in window_seams(pipe, v.num_frames)]
        out.append(Case("long video windows", v, scene, [], seams))
    return out


# ---- kept -------------------------------------------------------------------------------------


def kept_figures(pipe: Pipeline, case: Case) -> dict | None:
    """Returns {psnr, roundtrip, pass} for a case's given frames, or None if it has none."""
    if not case.given:
        return None
    got = np.concatenate([case.video.frames[s] for s, _ in case.given])
    want = np.concatenate([f for _, f in case.given])
    rt = np.concatenate([roundtrip(pipe, f) for _, f in case.given])
    p, r = psnr(got, want), psnr(rt, want)
    return {"psnr": p, "roundtrip": r, "pass": bool(p >= r - KEPT_MARGIN_DB)}


# ---- seams ------------------------------------------------------------------------------------


@dataclass
class Track:
    """One colour's object frame by frame, as the judge's pixel rules see it."""

    present: np.ndarray  # [T] bool
    inside: np.ndarray  # [T] bool: clear of the frame's edges
    alone: np.ndarray  # [T] bool: clear of every other object
    area: np.ndarray  # [T] pixels
    pos: np.ndarray  # [T, 2] centre (x, y) in units (short side 1), nan where absent

    def clean(self, a: int, b: int) -> bool:
        """True when frames a and b both show the object whole (inside the frame, clear of
        other objects) with areas within 20% of each other: an edge or an occlusion moves an
        object's centre without any motion."""
        ok = self.inside[[a, b]].all() and self.alone[[a, b]].all()
        return bool(ok) and min(self.area[a], self.area[b]) >= 0.8 * max(self.area[a], self.area[b])

    def excused(self, k: int, lo: int, hi: int) -> bool:
        """True when frame k may be the last (or first) in which the object is seen: it shows
        under half its median area over frames [lo, hi), or under 3/4 of it at the frame's
        edge, so it is passing behind a nearer object or leaving the frame (both take several
        frames at the world's speeds; the judge drops views under a quarter of a small object)."""
        median = float(np.median(self.area[lo:hi][self.present[lo:hi]]))
        return self.area[k] < (0.5 if self.inside[k] else 0.75) * median


def object_tracks(frames: np.ndarray) -> dict[str, Track]:
    """Returns the judge's per-colour object tracks of uint8 frames `[T, H, W, 3]`, read with
    the judge's own pixel rules (palette labels, 3x3 opening, minimum area, one per colour)."""
    work = J._working(Video(frames))
    masks = J._tracks(J._labels(work))
    t, h, w = work.shape[:3]
    s = min(h, w)
    anything = np.zeros((t, h, w), bool)
    for m in masks.values():
        anything |= m
    out = {}
    for c, m in masks.items():
        near_other = J._dilate(anything & ~m, 2)
        tr = Track(
            m.any((1, 2)),
            np.zeros(t, bool),
            np.zeros(t, bool),
            m.sum((1, 2)),
            np.full((t, 2), np.nan),
        )
        for k in np.flatnonzero(tr.present):
            ys, xs = np.nonzero(m[k])
            tr.pos[k] = ((xs.mean() + 0.5) / s, (ys.mean() + 0.5) / s)
            tr.inside[k] = ys.min() > 0 and xs.min() > 0 and ys.max() < h - 1 and xs.max() < w - 1
            tr.alone[k] = not near_other[k][m[k]].any()
        out[J.COLORS[c]] = tr
    return out


def _speed(tr: Track, lo: int, hi: int) -> float | None:
    """Returns the 90th percentile of per-frame steps between clean frame pairs in [lo, hi),
    or None with fewer than 2 steps (a bouncing object's speed varies: the median would fail
    honest seams at the bottom of a bounce)."""
    k = [k for k in range(lo, hi - 1) if tr.clean(k, k + 1)]
    if len(k) < 2:
        return None
    k = np.array(k)
    return float(np.percentile(np.linalg.norm(tr.pos[k + 1] - tr.pos[k], axis=1), 90))


def check_seam(video: Video, s: int, ref: str = "before", span: int = SPAN) -> dict:
    """Returns whether the objects continue across the seam between frames s-1 and s.

    {'pass', 'position', 'colour', 'shape' (each True when nothing of its kind failed),
    'objects', 'jumps', 'shapes' (how many were checked), 'why' (the failures)}. Presence and
    positions come from the judge's tracks over frames s-span .. s+span, shapes from judging
    each side on its own; `ref` is the side whose speed a jump is measured against.
    """
    lo, hi = max(0, s - span), min(video.num_frames, s + span)
    seg, j = video.frames[lo:hi], s - lo
    if not (1 <= j < len(seg)):
        raise ValueError(f"seam {s} needs frames on both sides in a {video.num_frames}-frame video")
    tracks = object_tracks(seg)
    sides = [(0, j), (j, len(seg))] if ref == "before" else [(j, len(seg)), (0, j)]
    why, jumps, shapes = [], 0, 0
    for c, tr in tracks.items():
        # A colour seen on one side of the seam and not the other: an object changed colour,
        # vanished or appeared, unless it was leaving the frame or going behind another.
        for a, b, side, word in (
            (j - 1, j, (0, j), "vanished"),
            (j, j - 1, (j, len(seg)), "appeared"),
        ):
            if tr.present[a] and not tr.present[b] and not tr.excused(a, *side):
                why.append(f"colour: {c} {word} at the seam")
        if tr.clean(j - 1, j):
            speed = _speed(tr, *sides[0])
            speed = _speed(tr, *sides[1]) if speed is None else speed
            if speed is not None:
                jumps += 1
                jump = float(np.linalg.norm(tr.pos[j] - tr.pos[j - 1]))
                allowed = 2 * max(speed, FLOOR_STEP)
                if jump > allowed:
                    why.append(f"position: {c} jumped {jump:.3f} > {allowed:.3f} units")
    before = {o.color: o.shape for o in J.judge(Video(seg[:j], video.fps)).objects}
    after = {o.color: o.shape for o in J.judge(Video(seg[j:], video.fps)).objects}
    for c in before.keys() & after.keys() & tracks.keys():
        whole = tracks[c].inside & tracks[c].alone
        if whole[:j].sum() >= WHOLE_MIN and whole[j:].sum() >= WHOLE_MIN:
            shapes += 1
            if before[c] != after[c]:
                why.append(f"shape: {c} {before[c]} became {after[c]}")
    kinds = {k: not any(y.startswith(k) for y in why) for k in ("position", "colour", "shape")}
    return {
        "pass": not why,
        **kinds,
        "objects": len(tracks),
        "jumps": jumps,
        "shapes": shapes,
        "why": why,
    }


def seam_figures(case: Case, control: bool = False) -> list[dict]:
    """Returns check_seam for each seam of the case; with `control`, for the same seams of a
    continuous render of the case's scene (what a perfect model would give)."""
    v = case.video
    if control:
        d = v.height, v.width
        v = render(case.scene, d[1], d[0], v.num_frames, fps=v.fps)
    return [check_seam(v, s, ref) for s, ref in case.seams]


# ---- long videos and images in a fresh process ------------------------------------------------


def peak_rss_mb() -> float:
    """Returns this process's peak resident set size in MiB: VmHWM of /proc/self/status.

    Not getrusage's ru_maxrss: Linux carries the parent's peak over into a child across
    fork + exec, so a child started by a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> dict:
    """Runs one timed job in this (fresh) process; returns its time and memory figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    loaded = peak_rss_mb()
    scene = scene_for(args.seed, args.run)
    prompt = prompt_for(scene, args.run)
    kw = dict(size=args.size, seed=args.seed + args.run, expand=False, progress=False)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Notice)
        if args.job == "long":
            pipe.generate_to_file(args.out, prompt, seconds=args.seconds, fps=8.0, **kw)
        else:
            pipe.image(prompt, **kw).save(args.out)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": loaded}


def run_child(
    model: str, job: str, out: Path, size, seconds=0.0, seed=0, threads=0, device=None, run=0
):
    """Returns the figures of a job run by `child` in a fresh Python process (run i: the
    scene of (seed, i), generated with seed + i)."""
    opts = dict(job=job, model=model, out=out, size=f"{size[0]}x{size[1]}", seconds=seconds,
                seed=seed, threads=threads, device=device, run=run)  # fmt: skip
    cmd = [sys.executable, __file__, "_child"]
    for k, v in opts.items():
        cmd += [] if v is None else [f"--{k}", str(v)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{job} child failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def keeps_objects(video: Video, window: int = WINDOW) -> dict:
    """Returns how many `window`-frame windows show the first window's colours and shapes
    (windows back to back; the last one ends at the last frame, so every frame is judged).

    "kept" asks for exactly the first window's colours, each with its shape; "consistent"
    only that nothing new is seen (no other colour, no other shape for a colour), so an object
    may leave the view, as a camera that pans or zooms for a minute makes real ones do.
    """
    window = min(window, video.num_frames)
    starts = list(range(0, video.num_frames - window + 1, window))
    if starts[-1] + window < video.num_frames:
        starts.append(video.num_frames - window)
    seen = [{o.color: o.shape for o in J.judge(video.trim(k, k + window)).objects} for k in starts]
    colours = [w.keys() == seen[0].keys() for w in seen]
    shapes = [all(w.get(c) == s for c, s in seen[0].items()) for w in seen]
    ok = [a and b for a, b in zip(colours, shapes)]
    consistent = [all(seen[0].get(c) == s for c, s in w.items()) for w in seen]
    return {
        "windows": len(seen),
        "colours_kept": sum(colours),
        "shapes_kept": sum(shapes),
        "kept": sum(ok),
        "pass": bool(seen[0]) and all(ok),
        "consistent": sum(consistent),
        "pass_consistent": bool(seen[0]) and all(consistent),
        "objects": len(seen[0]),
    }


# ---- edit -------------------------------------------------------------------------------------


def edit_run(
    pipe: Pipeline, i: int, seed: int, strength: float = 0.6, invert: bool = False
) -> dict:
    """Returns what the judge reads after editing run i's clip: even runs change the
    environment, odd runs the time of day; the prompt is the edited scene's caption."""
    scene = scene_for(seed, i)
    clip = clip_for(pipe, scene, WINDOW)
    rng = np.random.default_rng((seed, i, 1))
    key = "environment" if i % 2 == 0 else "time"
    options = [
        v for v in (ENVIRONMENTS if key == "environment" else TIMES) if v != getattr(scene, key)
    ]
    new = str(rng.choice(options))
    target = type(scene).from_dict({**scene.to_dict(), key: new})
    out = call_pipe(pipe, "edit", clip, prompt_for(target, i), strength=strength, seed=i,
                    invert=invert)  # fmt: skip
    was, now = J.judge(clip), J.judge(out)
    motions = {o.color: o.motion for o in now.objects}
    return {
        "attribute": key,
        "new": new,
        "found": getattr(now, key) == new,
        "motion": all(motions.get(o.color) == o.motion for o in was.objects),
        "colours": {o.color for o in was.objects} == set(motions),
        "judge_on_input": getattr(was, key) == getattr(scene, key),
    }


# ---- the commands -----------------------------------------------------------------------------

SEAM_CASES = ("extend forward", "extend backward", "connect", "loop", "long")
KEPT_CASES = ("animate", "extend forward", "extend backward", "connect")


def _share(xs) -> str:
    xs = list(xs)
    return f"{sum(xs)}/{len(xs)} ({100 * sum(xs) / len(xs):.0f}%)" if xs else "n/a"


def _db(x: float) -> str:
    return "identical (inf)" if x == float("inf") else f"{x:.2f} dB"


def measure_cases(
    pipe: Pipeline, runs: int, seed: int, kept: bool, seams: bool, perfect: bool = False
) -> dict:
    """Returns {'kept': {capability: [figures per run]}, 'seams': {capability: {'model':
    [per seam], 'control': [per seam]}}} over `runs` runs, each output made once for both."""
    names = set(KEPT_CASES if kept else ()) | set(SEAM_CASES if seams else ())
    res: dict = {"kept": {}, "seams": {}}
    for i in tqdm(range(runs), desc="capability runs", unit="run"):
        for case in make_cases(pipe, i, seed, tuple(names), perfect):
            if kept and case.name in KEPT_CASES:
                res["kept"].setdefault(case.name, []).append(kept_figures(pipe, case))
            if seams and case.seams:
                s = res["seams"].setdefault(case.name, {"model": [], "control": []})
                s["model"] += seam_figures(case)
                s["control"] += (
                    s["model"][-len(case.seams) :]
                    if perfect
                    else (seam_figures(case, control=True))
                )
    return res


def kept_markdown(kept: dict) -> list[str]:
    rows = [
        "| capability | given frames PSNR (median) | VAE round trip (median) | "
        f"runs >= round trip - {KEPT_MARGIN_DB:g} dB |",
        "|---|---|---|---|",
    ]
    for name, figs in kept.items():
        p = float(np.median([f["psnr"] for f in figs]))
        r = float(np.median([f["roundtrip"] for f in figs]))
        rows.append(f"| {name} | {_db(p)} | {_db(r)} | {_share(f['pass'] for f in figs)} |")
    return rows


def seams_markdown(seams: dict) -> list[str]:
    """Returns table rows; shares are over the seams where the judge tracks at least one
    object (a seam with nothing on it cannot show continuity), their count in column 2."""
    rows = [
        "| seams of | seams (with objects) | pass (goal >= 90%) | position ok | colour ok | "
        "shape ok | jumps / shapes checked | control: renders pass |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in seams.items():
        m = [x for x in s["model"] if x["objects"]]
        c = [x for x in s["control"] if x["objects"]]
        rows.append(
            f"| {name} | {len(s['model'])} ({len(m)}) | {_share(x['pass'] for x in m)} | "
            f"{_share(x['position'] for x in m)} | {_share(x['colour'] for x in m)} | "
            f"{_share(x['shape'] for x in m)} | {sum(x['jumps'] for x in m)} / "
            f"{sum(x['shapes'] for x in m)} | {_share(x['pass'] for x in c)} |"
        )
    return rows


def _child_opts(args) -> dict:
    return dict(seed=args.seed, threads=args.threads, device=args.device)


def cmd_long(pipe_name: str, args, lengths=(4.0, 15.0, 60.0)) -> tuple[dict, list[str]]:
    res, rows = (
        {},
        ["| length | wall time | peak RSS | RSS after loading the model |", "|---|---|---|---|"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        for sec in lengths:
            out = Path(tmp) / f"long_{sec:g}s.mp4"
            f = run_child(pipe_name, "long", out, (64, 64), sec, **_child_opts(args))
            res[f"{sec:g}s"] = f
            rows.append(
                f"| {sec:g} s ({1 + round(sec * 8)} frames, 64x64) | {f['wall_s']:.2f} s"
                f" | {f['peak_rss_mb']:.0f} MiB | {f['rss_after_load_mb']:.0f} MiB |"
            )
        minutes = [(out, f)]  # the longest, then more scenes of that length
        for i in tqdm(range(1, args.minutes), desc="more long videos", unit="video"):
            o = Path(tmp) / f"long_{i}.mp4"
            opts = dict(_child_opts(args), run=i)
            minutes.append((o, run_child(pipe_name, "long", o, (64, 64), lengths[-1], **opts)))
        judged = []
        for i, (o, f) in enumerate(minutes):
            v = Video.read(o)
            c = keeps_objects(render(scene_for(args.seed, i), 64, 64, v.num_frames, fps=8.0))
            judged.append({"run": i, **f, "keeps_objects": keeps_objects(v), "control": c})
    k, c = judged[0]["keeps_objects"], judged[0]["control"]
    res["keeps_objects"], res["control"], res["minutes"] = k, c, judged
    rows += [
        "",
        f"{lengths[-1]:g} s video, {k['objects']} objects in its first window: "
        f"{k['kept']}/{k['windows']} windows of {WINDOW} frames keep the first window's "
        f"colours and shapes (colours {k['colours_kept']}, shapes {k['shapes_kept']}); "
        f"control (the scene rendered, no model): {c['kept']}/{c['windows']}. "
        f"Pass: {'yes' if k['pass'] else 'no'} (every window, and at least one object).",
    ]
    if len(judged) > 1:
        ks = [j["keeps_objects"] for j in judged]
        seen = [x for x in ks if x["objects"]]  # a first window with an object to keep
        keys = ("kept", "windows", "colours_kept", "shapes_kept", "consistent")
        tot = {key: sum(x[key] for x in seen) for key in keys}
        peak = max(j["peak_rss_mb"] for j in judged)
        rows += [
            "",
            f"Over {len(judged)} videos of {lengths[-1]:g} s (the scenes of runs 0-"
            f"{len(judged) - 1}): {sum(x['pass'] for x in ks)}/{len(ks)} pass; {len(seen)} show "
            f"an object in their first window, and of their windows {tot['kept']}/"
            f"{tot['windows']} keep its colours and shapes (colours {tot['colours_kept']}, "
            f"shapes {tot['shapes_kept']}); control: "
            f"{sum(j['control']['pass'] for j in judged)}/{len(judged)} pass. "
            f"Consistent (nothing new seen, objects may leave the view): "
            f"{sum(x['pass_consistent'] for x in ks)}/{len(ks)} pass, windows "
            f"{tot['consistent']}/{tot['windows']}; control: "
            f"{sum(j['control']['pass_consistent'] for j in judged)}/{len(judged)} pass. "
            f"Peak RSS of the {len(judged)}: at most {peak:.0f} MiB.",
        ]
    return res, rows


def cmd_edit(pipe: Pipeline, args) -> tuple[dict, list[str]]:
    """Edits the same clips twice: from random noise (SDEdit, the default) and from each
    clip's inversion (`edit --invert`)."""
    rows = [
        f"| edited (strength {args.strength:g}) | noise | runs | new attribute found (goal >= "
        "80%) | motion unchanged (goal >= 80%) | colours kept | judge right on the input |",
        "|---|---|---|---|---|---|---|",
    ]
    res = {}
    for noise, invert in (("random", False), ("inverted", True)):
        runs = tqdm(range(args.runs), desc=f"edit runs, {noise} noise", unit="run")
        figs = res[noise] = [edit_run(pipe, i, args.seed, args.strength, invert) for i in runs]
        groups = [(k, [x for x in figs if x["attribute"] == k]) for k in ("environment", "time")]
        for key, f in [*groups, ("both", figs)]:
            cols = (
                _share(x[c] for x in f) for c in ("found", "motion", "colours", "judge_on_input")
            )
            rows += [f"| {key} | {noise} | {len(f)} | {' | '.join(cols)} |"] if f else []
    return res, rows


def cmd_image(pipe_name: str, args) -> tuple[dict, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        f = run_child(pipe_name, "image", Path(tmp) / "image.png", args.size, **_child_opts(args))
    w, h = args.size
    rows = [
        "| image | wall time | peak RSS | RSS after loading the model |",
        "|---|---|---|---|",
        f"| {w}x{h} | {f['wall_s']:.2f} s | {f['peak_rss_mb']:.0f} MiB "
        f"| {f['rss_after_load_mb']:.0f} MiB |",
    ]
    return f, rows


def run(args: argparse.Namespace, pipe: Pipeline | None = None) -> tuple[dict, str]:
    """Returns (figures as a dict, the markdown block) for the command in `args`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cmd = args.command
    todo = ("kept", "seams", "long", "edit", "image") if cmd == "all" else (cmd,)
    needs_pipe = {"kept", "seams", "edit"} & set(todo)
    if pipe is None and needs_pipe:
        pipe = Pipeline.from_pretrained(args.model, device=args.device)
    d = pipe.defaults if pipe is not None else None
    head = f"Model `{args.model}`, seed {args.seed}, {args.runs} runs, torch {torch.__version__}"
    head += f", {torch.get_num_threads()} threads"
    if d is not None:
        head += f", {d.width}x{d.height} at {d.fps:g} fps, {d.steps} steps, guidance {d.guidance:g}"
        head += f", sampler {d.sampler}, window {d.window} overlap {d.overlap} latent frames"
        head += f", keyframe {'on' if d.keyframe else 'off'}"
        head += f", guide_frames {'on' if d.guide_frames else 'off'}"
    res: dict = {"model": str(args.model), "seed": args.seed, "runs": args.runs}
    if d is not None:
        res |= {"keyframe": d.keyframe, "guide_frames": d.guide_frames}
    md = ["## Capability figures", "", head + "."]
    t0 = time.perf_counter()
    if {"kept", "seams"} & set(todo):
        if args.perfect and todo != ("seams",):
            raise SystemExit("--perfect goes with `seams` only (it replaces the model's outputs)")
        c = measure_cases(pipe, args.runs, args.seed, "kept" in todo, "seams" in todo, args.perfect)
        if "kept" in todo:
            res["kept"] = c["kept"]
            md += ["", "### Given frames are kept", "", *kept_markdown(c["kept"])]
        if "seams" in todo:
            res["seams"] = c["seams"]
            title = "Seams are continuous"
            title += " (--perfect: continuous renders, no model)" if args.perfect else ""
            md += ["", f"### {title}", "", *seams_markdown(c["seams"])]
    if "long" in todo:
        res["long"], rows = cmd_long(args.model, args)
        md += ["", "### One-minute video (fresh process each)", "", *rows]
    if "edit" in todo:
        res["edit"], rows = cmd_edit(pipe, args)
        md += ["", "### Editing environment / time of day", "", *rows]
    if "image" in todo:
        res["image"], rows = cmd_image(args.model, args)
        md += ["", "### Large image (fresh process)", "", *rows]
    res["total_s"] = time.perf_counter() - t0
    md += ["", f"Measured in {res['total_s']:.0f} s with `python {' '.join(sys.argv)}`."]
    return res, "\n".join(md) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    from kinetoscope.cli import parse_size

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("kept", "seams", "long", "edit", "image", "all", "_child"))
    p.add_argument("--model", default="shapeworld-tiny")
    p.add_argument("--runs", type=int, default=50, help="runs per capability (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--minutes",
        type=int,
        default=10,
        help="long only: videos of the longest length, one scene each, judged (default 10)",
    )
    p.add_argument("--strength", type=float, default=0.6, help="edit strength (default 0.6)")
    p.add_argument("--size", type=parse_size, default=(2048, 2048), help="image size WxH")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--perfect",
        action="store_true",
        help="seams only: continuous renders in place of the model's outputs (the control)",
    )
    p.add_argument("--markdown", type=Path, help="also write the markdown block here")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--job", choices=("long", "image"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "_child":
        print(json.dumps(child(args)))
        return 0
    res, md = run(args)
    print(md)
    print(json.dumps(res, indent=1, default=str))
    if args.markdown:
        args.markdown.write_text(md)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
