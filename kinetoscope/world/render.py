"""ShapeWorld renderer: a `Scene` becomes a `Video`, with numpy only.

World coordinates are square-pixel units in which the frame's *short* side is 1: a WxH frame
shows the stage [0, W/s] x [0, H/s] at t=0 (s = min(W, H) pixels per unit, y down). Positions
and speeds live in these units and in seconds, so a scene looks the same at any size and fps.
The background is a procedural texture (value noise hashed on a world-space lattice, so it
does not depend on the resolution) evaluated once per clip over every region the camera will
see, then bilinearly sampled per frame. Objects are signed-distance shapes with a 1-pixel
antialiased edge, evaluated only inside their own bounding box, drawn far to near.

The constants here are the world's physics; `judge.py` reads them to interpret what it sees.
"""

from __future__ import annotations

import numpy as np

from kinetoscope.video import Video
from kinetoscope.world.scene import OBJECT_KEYS, SCENE_KEYS, SHAPES, VOCAB, Obj, Scene

# Object colours: saturated and bright, far in RGB from every background (which are muted or,
# at night, dark), so a pixel's nearest palette colour tells the judge what it belongs to.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 30),
    "orange": (255, 135, 0),
    "yellow": (250, 230, 20),
    "green": (10, 200, 50),
    "cyan": (0, 215, 225),
    "blue": (35, 75, 250),
    "purple": (165, 45, 215),
    "white": (250, 250, 250),
}
RADIUS = {"small": 0.07, "large": 0.14}  # circle radius; other shapes have the same area
LINEAR_SPEED = {"slow": 0.1, "fast": 0.3}  # units/s for left/right/up/down
BOUNCE_PERIOD = {"slow": 2.0, "fast": 0.9}  # seconds between two ground contacts
BOUNCE_VX = {"slow": 0.05, "fast": 0.12}  # units/s sideways drift of a bouncing object
BOUNCE_HEIGHT = {"slow": 0.25, "fast": 0.35}  # units from the ground to the apex
GROUND = 0.88  # ground line as a fraction of the stage height
PAN_SPEED = 0.1  # units/s
ZOOM_RATE = 0.075  # 1/s: zoom factor exp(+-rate * t)
ZOOM_LIMIT = 2.0  # a zoom stops at 2x (or 1/2x) so long clips need a bounded texture
HORIZON = {"meadow": 0.35, "desert": 0.4, "snowfield": 0.38, "ocean": 0.33, "city": 0.86}
NIGHT_TINT = np.array([0.28, 0.32, 0.48], np.float32)

# Half extents (x, y) of each shape's bounding box, in units of the circle radius r. Square
# side and triangle side are chosen so all three shapes of one size have the same area.
SQUARE_HALF = np.sqrt(np.pi) / 2  # 0.886
TRI_HALF_SIDE = np.sqrt(np.pi / np.sqrt(3))  # 1.347
TRI_HALF_HEIGHT = TRI_HALF_SIDE * np.sqrt(3) / 2  # 1.166
EXTENT = {
    "circle": (1.0, 1.0),
    "square": (SQUARE_HALF, SQUARE_HALF),
    "triangle": (TRI_HALF_SIDE, TRI_HALF_HEIGHT),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


# ---------------------------------------------------------------- camera and object paths


def camera_path(camera: str, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (pan offset in units [T], zoom factor [T]) of the camera at times `t` seconds.

    Panning left moves the camera left, so the world slides right across the screen.
    """
    zero, one = np.zeros_like(t), np.ones_like(t)
    if camera in ("pan left", "pan right"):
        return (-1 if camera == "pan left" else 1) * PAN_SPEED * t, one
    if camera in ("zoom in", "zoom out"):
        rate = ZOOM_RATE if camera == "zoom in" else -ZOOM_RATE
        lim = np.log(ZOOM_LIMIT)
        return zero, np.exp(np.clip(rate * t, -lim, lim))
    return zero, one


def _wrap(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + np.mod(v - lo, hi - lo)


def _reflect(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Folds `v` into [lo, hi] like a ball bouncing between two walls."""
    span = hi - lo
    u = np.mod(v - lo, 2 * span)
    return lo + np.where(u > span, 2 * span - u, u)


def object_path(
    obj: Obj, t: np.ndarray, stage: tuple[float, float], pan: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Returns the world centre (x [T], y [T]) of an object's bounding box at times `t`.

    Left/right/up/down objects move at constant speed and wrap around the view: they leave
    one side completely before coming back on the other. Bouncing objects fall under gravity,
    bounce elastically on the ground and drift sideways between the walls. Walls move with a
    panning camera so objects stay in view.
    """
    sw, sh = stage
    r = RADIUS[obj.size]
    ex, ey = EXTENT[obj.shape][0] * r, EXTENT[obj.shape][1] * r
    x0, y0 = obj.x * sw, obj.y * sh
    if obj.motion in DIRECTIONS:
        dx, dy = DIRECTIONS[obj.motion]
        v = LINEAR_SPEED[obj.speed]
        x = _wrap(x0 + dx * v * t - pan, -ex, sw + ex) + pan
        y = _wrap(y0 + dy * v * t, -ey, sh + ey)
        return x, y
    if obj.motion == "bouncing":
        vx = BOUNCE_VX[obj.speed] * (1 if obj.x < 0.5 else -1)  # drift towards the middle
        x = _reflect(x0 + vx * t - pan, ex, sw - ex) + pan
        ground = GROUND * sh - ey
        rise = ground - y0  # start falling from y0, or from the apex when y0 is above it
        top = BOUNCE_HEIGHT[obj.speed]
        u0 = 0.5 + 0.5 * np.sqrt(1 - np.clip(rise / top, 0, 1))
        u = np.mod(t / BOUNCE_PERIOD[obj.speed] + u0, 1.0)
        return x, ground - top * 4 * u * (1 - u)
    return np.full_like(t, x0), np.full_like(t, y0)


# ---------------------------------------------------------------- background textures


def _hash(ix: np.ndarray, iy: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Returns a float32 in [0, 1) per integer lattice point, fixed for (seed, salt)."""
    h = ix.astype(np.int64) * 73856093 ^ iy.astype(np.int64) * 19349663
    h = h.astype(np.uint64) ^ np.uint64((seed * 83492791 + salt * 2654435761) % 2**63)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return ((h >> np.uint64(40)).astype(np.float32)) / np.float32(2**24)


def _noise(xs, ys, fx: float, fy: float, seed: int, salt: int) -> np.ndarray:
    """Returns smooth value noise in [0, 1] on the grid ys x xs: [ny, nx]."""
    gx, gy = xs * fx, ys * fy
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    tx, ty = gx - ix, gy - iy
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    lx = np.arange(ix.min(), ix.max() + 2)
    ly = np.arange(iy.min(), iy.max() + 2)
    lat = _hash(lx[None, :], ly[:, None], seed, salt)  # [nly, nlx]
    jy = iy - ly[0]
    rows = lat[jy] * (1 - ty)[:, None] + lat[jy + 1] * ty[:, None]  # [ny, nlx]
    jx = ix - lx[0]
    return (rows[:, jx] * (1 - tx) + rows[:, jx + 1] * tx).astype(np.float32)


def _fbm(xs, ys, freqs, seed: int, salt: int) -> np.ndarray:
    """Returns a sum of noise octaves (weights halve), centred on 0, roughly in [-1, 1]."""
    out, w, total = 0.0, 1.0, 0.0
    for i, f in enumerate(freqs):
        out = out + w * (_noise(xs, ys, f, f, seed, salt + i) - 0.5)
        total += w
        w *= 0.5
    return (2 * out / total).astype(np.float32)


def _mix(a, b, w) -> np.ndarray:
    """Returns a + (b - a) * w with colours a, b [3] and weights w [...]: [..., 3]."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * np.asarray(w, np.float32)[..., None]


def _sky(env: str, ys, nx: int, night: bool) -> np.ndarray:
    top, low = {
        "desert": ((95, 150, 215), (175, 185, 200)),
        "snowfield": ((150, 160, 180), (175, 180, 190)),
    }.get(env, ((80, 140, 215), (145, 180, 220)))
    if night:
        top, low = (8, 12, 35), (25, 32, 65)
    w = np.clip(ys / max(HORIZON[env], 0.4), 0, 1)
    return np.broadcast_to(_mix(top, low, w)[:, None], (len(ys), nx, 3))


def _stars(xs, ys, seed: int) -> np.ndarray:
    """Returns star brightness [ny, nx] in [0, 1]: a few small soft dots per unit square."""
    f = 10.0
    gx, gy = xs * f, ys * f
    ix, iy = np.floor(gx), np.floor(gy)
    cx = ix[None, :] + 0.2 + 0.6 * _hash(ix[None, :], iy[:, None], seed, 91)
    cy = iy[:, None] + 0.2 + 0.6 * _hash(ix[None, :], iy[:, None], seed, 92)
    on = _hash(ix[None, :], iy[:, None], seed, 93) < 0.35
    d = np.hypot(gx[None, :] - cx, gy[:, None] - cy) / f  # units
    return on * np.clip(1 - d / 0.012, 0, 1)


def background(env: str, time: str, xs: np.ndarray, ys: np.ndarray, seed: int) -> np.ndarray:
    """Returns the environment's colour at world points ys x xs: float32 [ny, nx, 3] in 0..255."""
    night = time == "night"
    ny, nx = len(ys), len(xs)
    sky = _sky(env, ys, nx, night)
    X, Y = xs[None, :], ys[:, None]
    salt = 10 * ENV_INDEX[env]
    px = float(abs(xs[1] - xs[0])) if nx > 1 else 1 / 64  # texel size: edges blur over it

    def soft(d):  # coverage of an edge at signed distance d (units, positive inside)
        return np.clip(np.asarray(d, np.float32) / px + 0.5, 0, 1)

    if env == "city":
        cell = xs * 6.0
        b = np.floor(cell)
        top = 0.12 + 0.25 * _hash(b, b * 0, seed, salt)  # building roof line [nx]
        tone = 95 + 55 * _hash(b, b * 0 + 1, seed, salt)
        inside = soft((0.42 - np.abs(cell - b - 0.5)) / 6.0)  # [nx]
        far = 60 + 10 * _hash(np.floor(xs * 14), xs * 0, seed, salt + 2)
        col = far + (tone - far) * inside
        img = np.broadcast_to(col[None, :, None], (ny, nx, 3)) * np.float32([1.0, 1.0, 1.06])
        wx, wy = cell * 3, ys * 12
        win = np.minimum(
            ((0.22 - np.abs(wx - np.floor(wx) - 0.5)) / 18.0)[None, :],
            ((0.22 - np.abs(wy - np.floor(wy) - 0.5)) / 12.0)[:, None],
        )
        win = soft(win) * inside[None, :] * soft(Y - top[None, :] - 0.03)  # [ny, nx]
        lit = _hash(np.floor(wx)[None, :], np.floor(wy)[:, None], seed, salt + 3) < 0.35
        img = img + (45 - img) * win[..., None]
        img = sky + (img - sky) * soft(Y - top[None, :])[..., None]
        lane = soft(0.006 - np.abs(Y - 0.93)) * soft((0.25 - np.abs(np.mod(X * 4, 1) - 0.5)) / 4)
        street = _mix((70, 70, 76), (200, 200, 190), lane)
        img = img + (street - img) * soft(Y - HORIZON["city"])[..., None]
        if night:
            img = img * NIGHT_TINT
            img = img + (np.float32([210, 170, 105]) - img) * (win * lit)[..., None]
            img = img + (top[None, :] > Y)[..., None] * 160 * _stars(xs, ys, seed)[..., None]
        return img.astype(np.float32)

    hz = HORIZON[env] + 0.03 * _fbm(xs, np.zeros(1), (2.0, 5.0), seed, salt + 5)[0]
    depth = np.clip((Y - hz[None, :]) / 0.6, 0, 1)  # 0 at the horizon, 1 near the viewer
    if env == "meadow":
        n = _fbm(xs, ys, (5.0, 13.0), seed, salt)
        blades = _noise(xs, ys, 24.0, 4.0, seed, salt + 3) - 0.5
        ground = _mix((85, 115, 45), (105, 135, 50), depth) + (24 * n + 22 * blades)[..., None]
    elif env == "desert":
        warp = _noise(xs, ys, 1.5, 3.0, seed, salt)
        dunes = np.sin(2 * np.pi * (Y * 6 + 1.4 * warp))
        fine = _fbm(xs, ys, (12.0,), seed, salt + 2)
        ground = _mix((205, 170, 112), (190, 150, 95), depth)
        ground = ground + (16 * dunes + 6 * fine)[..., None]
    elif env == "snowfield":
        n = _fbm(xs, ys, (4.0, 11.0), seed, salt)
        drifts = np.sin(2 * np.pi * (Y * 4 + 1.2 * _noise(xs, ys, 2.0, 2.0, seed, salt + 4)))
        ground = _mix((145, 162, 192), (160, 175, 205), depth)
        ground = ground + (12 * n + 8 * drifts)[..., None] * np.float32([1.0, 1.0, 0.7])
    elif env == "ocean":
        phase = 1.5 * _noise(xs, ys, 2.0, 6.0, seed, salt)
        crest = 0.5 + 0.5 * np.sin(2 * np.pi * (X * 5 + phase + Y * 14))
        ground = _mix((25, 70, 135), (45, 95, 150), depth)
        ground = ground + _mix((0, 0, 0), (40, 55, 45), crest**4)
    else:
        raise ValueError(f"environment={env!r} is not one of {VOCAB['environment']}")
    img = sky + (ground - sky) * soft(Y - hz[None, :])[..., None]
    if night:
        img = img * NIGHT_TINT
        img = img + (hz[None, :] > Y)[..., None] * 160 * _stars(xs, ys, seed)[..., None]
    return img.astype(np.float32)


ENV_INDEX = {e: i for i, e in enumerate(VOCAB["environment"])}


# ---------------------------------------------------------------- drawing


def shape_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Returns the signed distance in pixels to the shape's edge (negative inside)."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - SQUARE_HALF * r
    hs, hh = TRI_HALF_SIDE * r, TRI_HALF_HEIGHT * r  # apex up; the max of three edge planes
    norm = np.hypot(2 * hh, hs)
    side = (2 * hh * np.abs(dx) - hs * (dy + hh)) / norm
    return np.maximum(dy - hh, side)


def _check(scene: Scene, width: int, height: int, frames: int, fps: float) -> None:
    if not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise ValueError(f"width and height must be in 8..4096, got {width}x{height}")
    if frames < 1 or fps <= 0:
        raise ValueError(f"need frames >= 1 and fps > 0, got frames={frames} fps={fps}")
    scene.validate()
    for key in SCENE_KEYS:
        if getattr(scene, key) is None:
            raise ValueError(f"render needs a full scene, scene.{key} is None")
    for i, o in enumerate(scene.objects):
        for key in (*OBJECT_KEYS, "x", "y"):
            if getattr(o, key) is None:
                raise ValueError(f"render needs a full scene, objects[{i}].{key} is None")


def render(
    scene: Scene,
    width: int,
    height: int,
    frames: int,
    fps: float = 8.0,
    seed: int = 0,
    coverage: bool = False,
) -> Video | tuple[Video, np.ndarray]:
    """Returns the scene rendered as a Video of `frames` frames of width x height.

    Deterministic: the same arguments give the same pixels; `seed` only changes texture
    details. Raises ValueError on a partial scene or a bad size. With `coverage`, returns
    (video, float32 [len(SHAPES), T, H, W]): the share of each pixel that objects of each shape
    cover (their antialiased alpha, the largest where objects overlap); `.max(0)` is the mask
    of where the objects are.
    """
    _check(scene, width, height, frames, fps)
    s = float(min(width, height))  # pixels per world unit
    sw, sh = width / s, height / s
    t = np.arange(frames, dtype=np.float64) / fps
    pan, zoom = camera_path(scene.camera, t)

    # World coordinates of pixel centres at each frame: [T, W] and [T, H].
    u = (np.arange(width) + 0.5) / s - sw / 2
    v = (np.arange(height) + 0.5) / s - sh / 2
    wx = u[None, :] / zoom[:, None] + sw / 2 + pan[:, None]
    wy = v[None, :] / zoom[:, None] + sh / 2

    # One texture over everything the camera sees, with texels no larger than a pixel.
    texel = 1.0 / (s * zoom.max())
    x_lo, y_lo = wx.min() - 2 * texel, wy.min() - 2 * texel
    nx = int(np.ceil((wx.max() - x_lo) / texel)) + 3
    ny = int(np.ceil((wy.max() - y_lo) / texel)) + 3
    tex = background(
        scene.environment,
        scene.time,
        x_lo + texel * np.arange(nx),
        y_lo + texel * np.arange(ny),
        seed,
    )  # [ny, nx, 3]

    out = np.empty((frames, height, width, 3), np.float32)
    fx, fy = (wx - x_lo) / texel, (wy - y_lo) / texel
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    fx, fy = (fx - ix).astype(np.float32), (fy - iy).astype(np.float32)
    rows = None
    for k in range(frames):
        if k > 0 and scene.camera == "static":
            out[k] = out[0]
            continue
        if rows is None or scene.camera.startswith("zoom"):  # rows only change with zoom
            a, b = iy[k], fy[k][:, None, None]
            rows = tex[a] * (1 - b) + tex[a + 1] * b  # [H, nx, 3]
        a, b = ix[k], fx[k][None, :, None]
        out[k] = rows[:, a] * (1 - b) + rows[:, a + 1] * b

    stage = (sw, sh)
    cover = np.zeros((len(SHAPES), frames, height, width), np.float32) if coverage else None
    for obj in sorted(scene.objects, key=lambda o: o.depth or 0):
        color = np.asarray(PALETTE[obj.color], np.float32)
        ox, oy = object_path(obj, t, stage, pan)
        # Screen position (pixels) and radius of the object at each frame.
        cx = ((ox - sw / 2 - pan) * zoom + sw / 2) * s
        cy = ((oy - sh / 2) * zoom + sh / 2) * s
        rad = RADIUS[obj.size] * s * zoom
        ex, ey = EXTENT[obj.shape]
        for k in range(frames):
            rk = rad[k]
            x0, x1 = int(cx[k] - ex * rk - 1), int(np.ceil(cx[k] + ex * rk + 1))
            y0, y1 = int(cy[k] - ey * rk - 1), int(np.ceil(cy[k] + ey * rk + 1))
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
            if x0 >= x1 or y0 >= y1:
                continue
            dx = np.arange(x0, x1, dtype=np.float32) + 0.5 - np.float32(cx[k])
            dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - np.float32(cy[k])
            alpha = np.clip(0.5 - shape_distance(obj.shape, dx, dy, rk), 0, 1)[..., None]
            box = out[k, y0:y1, x0:x1]
            box += alpha * (color - box)
            if cover is not None:
                c = cover[SHAPES.index(obj.shape), k, y0:y1, x0:x1]
                np.maximum(c, alpha[..., 0], out=c)

    frames_u8 = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    video = Video(frames_u8, fps=fps, metadata={"scene": scene.to_dict(), "seed": seed})
    return (video, cover) if coverage else video
