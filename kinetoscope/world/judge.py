"""ShapeWorld judge: reads a video back into a `Scene`, and scores a video against a prompt.

The judge knows the world's palette and physics (`render.py`) but not the scene:
- objects: pixels near one of the 8 palette colours, cleaned by a 3x3 opening; one track per
  colour (a scene never repeats a colour). Shape by matching a soft colour map against the
  three antialiased templates, size from the area, both on the largest unoccluded views.
- camera: the background (objects masked out) of frames 8 apart is matched under a search
  over horizontal shifts (pan) and scales about the centre (zoom).
- motion: centroids are mapped back through the estimated camera into world units, then the
  median velocity and the sign pattern of vertical velocity say still/left/right/up/down/
  bouncing; the median speed says slow/fast.
- environment and time: the nearest reference in background colour statistics, references
  rendered once per frame size from the world itself.
"""

from __future__ import annotations

import functools

import numpy as np

from kinetoscope.video import Video
from kinetoscope.world import render as world
from kinetoscope.world.scene import COLORS, ENVIRONMENTS, OBJECT_KEYS, SHAPES, TIMES, Obj, Scene

PAL = np.array([world.PALETTE[c] for c in COLORS], np.float32)  # [8, 3]
COLOR_DISTANCE = 75.0  # RGB distance within which a pixel belongs to a palette colour
SOFT_IN, SOFT_OUT = 40.0, 110.0  # distances of full and of no membership in a soft mask
WORK_SIDE = 64  # videos are box-downsampled until their short side is below 2x this
GAP = 8  # frames between the two frames of a camera-motion match

# Decision thresholds in world units (the frame's short side is 1) and seconds.
SMALL_LARGE_AREA = 0.031  # between a small (0.0154) and a large (0.0616) object's area
STILL_SPEED = 0.045  # units/s; slow objects move at 0.1
LINEAR_FAST = 0.18  # between slow 0.1 and fast 0.3
BOUNCE_FAST = 0.45  # median |velocity| of a bouncing object: slow ~0.25, fast ~0.75
MAX_SPEED = 4.0  # units/s; faster steps are wrap-around jumps, not motion
PAN_MIN = 0.5 * world.PAN_SPEED  # units/s of background shift that count as a pan
ZOOM_MIN = 0.5 * world.ZOOM_RATE  # 1/s of log-scale change that count as a zoom


# ---------------------------------------------------------------- pixels


def _working(video: Video) -> np.ndarray:
    """Returns frames float32 [T, h, w, 3], box-downsampled by an integer factor."""
    f = video.frames
    k = min(video.height, video.width) // WORK_SIDE
    if k < 2:
        return f.astype(np.float32)
    t, h, w, _ = f.shape
    h, w = h // k * k, w // k * k
    f = f[:, :h, :w].astype(np.float32)
    return f.reshape(t, h // k, k, w // k, k, 3).mean(axis=(2, 4))


def _shift_or(m: np.ndarray, op) -> np.ndarray:
    """Returns op (OR or AND) of `m` [T, h, w] with its 8 neighbours (3x3 dilate or erode)."""
    pad = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=op is np.logical_and)
    h, w = m.shape[1:]
    out = m.copy()
    for dy in range(3):
        for dx in range(3):
            out = op(out, pad[:, dy : dy + h, dx : dx + w])
    return out


def _dilate(m: np.ndarray, n: int = 1) -> np.ndarray:
    for _ in range(n):
        m = _shift_or(m, np.logical_or)
    return m


def _labels(frames: np.ndarray) -> np.ndarray:
    """Returns the palette index of each pixel, -1 for background: int8 [T, h, w]."""
    r, g, b = frames[..., 0], frames[..., 1], frames[..., 2]
    best = np.full(r.shape, COLOR_DISTANCE**2, np.float32)
    out = np.full(r.shape, -1, np.int8)
    for i, (pr, pg, pb) in enumerate(PAL):
        d2 = (r - pr) ** 2 + (g - pg) ** 2 + (b - pb) ** 2
        closer = d2 < best
        best = np.where(closer, d2, best)
        out[closer] = i
    return out


# ---------------------------------------------------------------- camera


def _warp(img: np.ndarray, scales: np.ndarray, shifts: np.ndarray):
    """Returns img [h, w, C] sampled at c + scale * (p - c) + (shift, 0) for each of P
    (scale, shift) pairs, bilinearly: (warped [P, h, w, C], valid [P, h, w])."""
    h, w = img.shape[:2]
    ys = h / 2 + scales[:, None] * (np.arange(h) + 0.5 - h / 2) - 0.5  # [P, h]
    xs = w / 2 + scales[:, None] * (np.arange(w) + 0.5 - w / 2) + shifts[:, None] - 0.5
    valid = ((ys >= 0) & (ys <= h - 1))[:, :, None] & ((xs >= 0) & (xs <= w - 1))[:, None, :]
    y0 = np.minimum(np.maximum(np.floor(ys), 0), h - 2).astype(np.int64)
    x0 = np.minimum(np.maximum(np.floor(xs), 0), w - 2).astype(np.int64)
    fy = np.minimum(np.maximum(ys - y0, 0), 1)[:, :, None, None].astype(np.float32)
    fx = np.minimum(np.maximum(xs - x0, 0), 1)[:, None, :, None].astype(np.float32)
    y0, x0 = y0[:, :, None], x0[:, None, :]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    low = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + low * fy, valid


def _refine(costs: np.ndarray, grid: np.ndarray) -> float:
    """Returns the grid value at the minimum of `costs`, refined by a parabola through the
    minimum and its neighbours (the grid is evenly spaced)."""
    j = int(costs.argmin())
    if 0 < j < len(costs) - 1:
        a, b, c = costs[j - 1], costs[j], costs[j + 1]
        den = a - 2 * b + c
        if den > 0:
            return float(grid[j] + 0.5 * (a - c) / den * (grid[1] - grid[0]))
    return float(grid[j])


def _camera(frames: np.ndarray, objects: np.ndarray, fps: float) -> tuple[str, float, float]:
    """Returns (camera, pan px/frame, log-zoom per frame) from the background's motion.

    Pan and zoom rates are searched on a grid up to 2.5x the world's nominal rates; a move
    is kept only when it explains the background clearly better than a static camera.
    """
    t, h, w, _ = frames.shape
    if t < 2:
        return "static", 0.0, 0.0
    gap = min(GAP, t - 1)
    # Half resolution is plenty for a global motion and four times cheaper.
    h, w = h // 2, w // 2
    gray = frames[:, : 2 * h, : 2 * w].mean(-1).reshape(t, h, 2, w, 2).mean((2, 4))
    # Blur too: pixel noise left in would favour warps whose interpolation averages it away.
    pad = np.pad(gray, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gray = sum(pad[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    bg = ~_dilate(objects, 2)[:, : 2 * h, : 2 * w].reshape(t, h, 2, w, 2).any((2, 4))
    s = min(h, w)
    unit = np.linspace(-2.5, 2.5, 21)
    shifts = unit * world.PAN_SPEED * s * gap / fps  # px per gap
    logz = unit * world.ZOOM_RATE * gap / fps  # log-scale per gap
    scales = np.concatenate([np.ones_like(unit), np.exp(logz)])
    moves = np.concatenate([shifts, np.zeros_like(unit)])
    costs = np.zeros(len(moves))
    for i in range(0, t - gap, gap):
        b = np.stack([gray[i + gap], bg[i + gap]], -1).astype(np.float32)  # [h, w, 2]
        warped, valid = _warp(b, scales, moves)  # [P, h, w, 2]
        keep = valid & bg[i] & (warped[..., 1] > 0.99)
        err = (np.abs(warped[..., 0] - gray[i]) * keep).sum((1, 2))
        costs += np.where(keep.any((1, 2)), err / np.maximum(keep.sum((1, 2)), 1), 255.0)
    cost_shift, cost_scale = costs[: len(unit)], costs[len(unit) :]
    static = cost_shift[len(unit) // 2]
    pan = _refine(cost_shift, shifts) / gap  # px per frame
    zoom = _refine(cost_scale, logz) / gap  # log-scale per frame
    best_shift, best_scale = cost_shift.min(), cost_scale.min()
    pan_ok = abs(pan) * fps / s >= PAN_MIN and best_shift < 0.9 * static
    zoom_ok = abs(zoom) * fps >= ZOOM_MIN and best_scale < 0.9 * static
    if pan_ok and (not zoom_ok or best_shift <= best_scale):
        return ("pan left" if pan > 0 else "pan right"), 2 * pan, 0.0  # full-res px
    if zoom_ok:
        return ("zoom in" if zoom > 0 else "zoom out"), 0.0, zoom
    return "static", 0.0, 0.0


# ---------------------------------------------------------------- objects


def _tracks(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Returns {palette index: cleaned mask [T, h, w]} for colours seen often enough."""
    t, h, w = labels.shape
    s = min(h, w)
    min_area = 0.25 * np.pi * world.RADIUS["small"] ** 2 * s * s  # a quarter of a small one
    out = {}
    for c in np.unique(labels):
        if c < 0:
            continue
        m = labels == c
        core = _shift_or(_shift_or(m, np.logical_and), np.logical_or)  # 3x3 opening
        m &= _dilate(core)  # the opening's shape back, edge pixels included
        present = m.sum((1, 2)) >= min_area
        if present.sum() >= max(1, round(0.15 * t)):
            out[int(c)] = m & present[:, None, None]
    return out


def _shape_errors(rgb: np.ndarray, color: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Returns how badly each shape of SHAPES explains one view of an object [3].

    The view is a soft membership map (1 at the palette colour, 0 far from it) around the
    mask; each template is the antialiased shape with the same area and centroid, as the
    renderer draws it. Soft maps and whole templates use every pixel, so a few pixels lost to
    blur or compression do not flip the answer the way a thresholded outline does.
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, h)
    x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, w)
    box = rgb[y0:y1, x0:x1]
    d = np.sqrt(((box - color) ** 2).sum(-1))
    near = _dilate(mask[None, y0:y1, x0:x1], 1)[0]
    wgt = np.clip((SOFT_OUT - d) / (SOFT_OUT - SOFT_IN), 0, 1) * near  # [bh, bw]
    area = wgt.sum()
    gy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    gx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    cy, cx = (wgt * gy).sum() / area, (wgt * gx).sum() / area
    r = np.sqrt(area / np.pi)
    errs = []
    for shape in SHAPES:
        # The triangle's centroid sits a sixth of its height below its box centre.
        oy = -world.TRI_HALF_HEIGHT * r / 3 if shape == "triangle" else 0.0
        tmpl = np.clip(0.5 - world.shape_distance(shape, gx - cx, gy - cy - oy, r), 0, 1)
        errs.append(((wgt - tmpl) ** 2).sum() / area)
    return np.array(errs)


def _motion(pos: np.ndarray, frames: np.ndarray, fps: float) -> tuple[str, str, float]:
    """Returns (motion, speed, median speed in units/s) from world positions pos [N, 2]
    seen at frame indices [N]."""
    steps = np.diff(frames)
    v = np.diff(pos, axis=0) * fps / steps[:, None]  # units/s [N-1, 2]
    v = v[(steps <= 3) & (np.hypot(v[:, 0], v[:, 1]) < MAX_SPEED)]
    if len(v) == 0:
        return "still", "slow", 0.0
    speed = np.hypot(v[:, 0], v[:, 1])
    med = float(np.median(speed))
    vy = v[:, 1]
    rising, falling = np.mean(vy < -0.1), np.mean(vy > 0.1)
    if min(rising, falling) >= 0.15 and np.median(np.abs(vy)) > 0.12:
        return "bouncing", ("fast" if med > BOUNCE_FAST else "slow"), med
    if med < STILL_SPEED:
        return "still", "slow", med
    mx, my = np.median(v[:, 0]), np.median(vy)
    if abs(mx) >= abs(my):
        motion, along = ("right" if mx > 0 else "left"), np.abs(v[:, 0])
    else:
        motion, along = ("down" if my > 0 else "up"), np.abs(vy)
    return motion, ("fast" if np.median(along) > LINEAR_FAST else "slow"), med


def _read_object(
    frames: np.ndarray,
    color: str,
    mask: np.ndarray,
    others: np.ndarray,
    pan: float,
    zoom: float,
    fps: float,
) -> tuple[Obj, dict]:
    """Returns the object of `color` that its mask [T, h, w] shows, plus the features it
    used; `others` [T, h, w] marks the other objects' pixels."""
    t, h, w = mask.shape
    s = min(h, w)
    near_other = _dilate(others, 2)
    rows, cols = np.arange(h) + 0.5, np.arange(w) + 0.5
    seen, pos, areas, fills, asyms, inside, alone = [], [], [], [], [], [], []
    for k in np.flatnonzero(mask.any((1, 2))):
        m = mask[k]
        ys, xs = np.nonzero(m)
        cy, cx = rows[ys].mean(), cols[xs].mean()
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        bh, bw = y1 - y0 + 1, x1 - x0 + 1
        z = np.exp(zoom * k)
        # Back to the first frame's camera: p0 = c + (p - c - pan*k) / z, then to units.
        wx = (w / 2 + (cx - w / 2 - pan * k) / z) / s
        wy = (h / 2 + (cy - h / 2) / z) / s
        seen.append(k)
        pos.append((wx, wy))
        inside.append(y0 > 0 and x0 > 0 and y1 < h - 1 and x1 < w - 1)
        alone.append(not near_other[k][m].any())
        areas.append(len(ys) / (s * z) ** 2)
        fills.append(len(ys) / (bh * bw))
        asyms.append((cy - (y0 + y1 + 1) / 2) / bh)
    inside, alone = np.array(inside), np.array(alone)
    # A frame's edge or a nearer object moves the centroid and eats the shape: judge from
    # frames where the object is whole when there are enough, else from those inside.
    use = inside if inside.sum() >= 3 else np.ones_like(inside)
    if (use & alone).sum() >= max(3, 0.6 * use.sum()):
        use = use & alone
    motion, speed, med = _motion(np.array(pos)[use], np.array(seen)[use], fps)
    # Occlusion only removes pixels: the largest views show the shape best.
    pick = np.flatnonzero(inside & alone) if (inside & alone).any() else np.flatnonzero(use)
    pick = pick[np.argsort(np.array(areas)[pick])[-max(1, len(pick) // 3) :]]
    area = float(np.median(np.array(areas)[pick]))
    fill = float(np.median(np.array(fills)[pick]))
    asym = float(np.median(np.array(asyms)[pick]))
    rgb = np.asarray(world.PALETTE[color], np.float32)
    errs = np.median([_shape_errors(frames[seen[i]], rgb, mask[seen[i]]) for i in pick], 0)
    first = int(seen[0])
    ys, xs = np.nonzero(mask[first])
    obj = Obj(
        shape=SHAPES[int(errs.argmin())],
        size="large" if area > SMALL_LARGE_AREA else "small",
        motion=motion,
        speed=speed,
        x=float(cols[xs].mean() / w),
        y=float(rows[ys].mean() / h),
    )
    feats = {"area": area, "fill": fill, "asym": asym, "speed": med, "frames": len(seen)}
    feats.update({f"err_{k}": float(e) for k, e in zip(SHAPES, errs)})
    return obj, feats


# ---------------------------------------------------------------- environment and time


def _background_features(frames: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """Returns colour statistics of the background [8]: mean RGB of the top quarter and of
    the bottom 40% of rows, and the spread and horizontal detail of the bottom part."""
    t, h, w, _ = frames.shape
    idx = np.arange(0, t, max(1, t // 6))
    f, bg = frames[idx], ~_dilate(objects[idx], 1)
    top, low = slice(0, max(1, h // 4)), slice(h - max(1, int(0.4 * h)), h)
    gray = f[:, low].mean(-1)
    detail = np.abs(np.diff(gray, axis=2))[bg[:, low, 1:] & bg[:, low, :-1]]
    return np.concatenate(
        [
            f[:, top][bg[:, top]].mean(0) / 255 if bg[:, top].any() else np.zeros(3),
            f[:, low][bg[:, low]].mean(0) / 255 if bg[:, low].any() else np.zeros(3),
            [gray[bg[:, low]].std() / 255, detail.mean() / 255 if detail.size else 0.0],
        ]
    )


@functools.lru_cache(maxsize=16)
def _references(w: int, h: int) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Returns the (environment, time) classes and their background features [N, 8], from
    renders of empty scenes at this working size."""
    keys, feats = [], []
    for env in ENVIRONMENTS:
        for tod in TIMES:
            for seed in range(2):
                for cam in ("static", "zoom in", "zoom out"):
                    v = world.render(Scene(env, tod, cam, []), w, h, 33, seed=seed)
                    f = v.frames[::4].astype(np.float32)
                    keys.append((env, tod))
                    feats.append(_background_features(f, np.zeros(f.shape[:3], bool)))
    return keys, np.array(feats)


def _environment(frames: np.ndarray, objects: np.ndarray) -> tuple[str, str]:
    keys, refs = _references(frames.shape[2], frames.shape[1])
    f = _background_features(frames, objects)
    return keys[int(np.argmin(((refs - f) ** 2).sum(1)))]


# ---------------------------------------------------------------- judge and score


def judge(video: Video, details: dict | None = None) -> Scene:
    """Returns the full scene the judge reads from `video` (objects ordered by colour).

    Pass a dict as `details` to receive the features behind each decision.
    """
    frames = _working(video)
    labels = _labels(frames)
    tracks = _tracks(labels)
    anything = np.zeros(labels.shape, bool)
    for m in tracks.values():
        anything |= m
    camera, pan, zoom = _camera(frames, labels >= 0, video.fps)
    env, tod = _environment(frames, labels >= 0)
    objects = []
    feats = {}
    for c, m in tracks.items():
        obj, f = _read_object(frames, COLORS[c], m, anything & ~m, pan, zoom, video.fps)
        obj.color = COLORS[c]
        obj.depth = len(objects)
        objects.append(obj)
        feats[COLORS[c]] = f
    if details is not None:
        details.update(objects=feats, pan=pan, zoom=zoom)
    return Scene(environment=env, time=tod, camera=camera, objects=objects)


def _agreement(stated: Obj, seen: Obj) -> int:
    return sum(
        getattr(stated, k) is not None and getattr(stated, k) == getattr(seen, k)
        for k in OBJECT_KEYS
    )


def score(video: Video, prompt: str) -> dict:
    """Returns {attribute: agreement in [0, 1]} for each attribute the prompt states, plus
    'overall' (their mean; 0.0 when the prompt states nothing): `score_scene` of what the
    judge reads from `video`."""
    return score_scene(judge(video), prompt)


def score_scene(seen: Scene, prompt: str) -> dict:
    """Returns `score`'s figures for a scene the judge has already read. All values are floats.

    Prompt objects are matched one to one to judged objects: same colour first, then same
    shape, then the most agreeing attributes; an unmatched prompt object agrees on nothing.
    """
    from kinetoscope.world.captions import parse_prompt

    parsed = parse_prompt(prompt)
    stated = parsed.scene
    out: dict = {}
    for key in ("environment", "time", "camera"):
        if getattr(stated, key) is not None:
            out[key] = float(getattr(stated, key) == getattr(seen, key))
    free = list(range(len(seen.objects)))
    match: list[Obj | None] = [None] * len(stated.objects)
    for rule in ("color", "shape", None):
        for i, o in enumerate(stated.objects):
            if match[i] is not None or not free:
                continue
            cands = free
            if rule is not None:
                if getattr(o, rule) is None:
                    continue
                cands = [j for j in free if getattr(seen.objects[j], rule) == getattr(o, rule)]
            if cands:
                j = max(cands, key=lambda j: _agreement(o, seen.objects[j]))
                match[i] = seen.objects[j]
                free.remove(j)
    for key in OBJECT_KEYS:
        vals = [
            float(m is not None and getattr(m, key) == getattr(o, key))
            for o, m in zip(stated.objects, match)
            if getattr(o, key) is not None
        ]
        if vals:
            out[key] = float(np.mean(vals))
    if parsed.count is not None:
        out["count"] = float(parsed.count == len(seen.objects))
    out["overall"] = float(np.mean(list(out.values()))) if out else 0.0
    return out
