"""ShapeWorld renderer: determinism, size independence, distinct environments, physics."""

import numpy as np
import pytest

from kinetoscope.world.render import PALETTE, render
from kinetoscope.world.scene import ENVIRONMENTS, SHAPES, Obj, Scene, sample_scene


def _scene(**kw) -> Scene:
    base = dict(environment="meadow", time="day", camera="static")
    obj = dict(shape="circle", color="red", size="large", motion="still", speed="slow")
    obj.update({k: kw.pop(k) for k in list(kw) if k in obj or k in ("x", "y")})
    base.update(kw)
    return Scene(**base, objects=[Obj(**{"x": 0.5, "y": 0.5, "depth": 0, **obj})])


def test_video_shape_and_metadata():
    scene = sample_scene(np.random.default_rng(0))
    v = render(scene, 96, 64, 9, fps=12.0)
    assert v.frames.shape == (9, 64, 96, 3) and v.frames.dtype == np.uint8
    assert v.fps == 12.0
    assert v.metadata["scene"] == scene.to_dict()


def test_deterministic_and_seed_only_changes_texture():
    scene = sample_scene(np.random.default_rng(1))
    a = render(scene, 64, 64, 5, seed=3).frames
    b = render(scene, 64, 64, 5, seed=3).frames
    c = render(scene, 64, 64, 5, seed=4).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # The object itself is drawn identically whatever the seed.
    one = _scene(environment="city")
    d, e = render(one, 64, 64, 1, seed=0).frames[0], render(one, 64, 64, 1, seed=9).frames[0]
    assert np.array_equal(d[28:36, 28:36], e[28:36, 28:36])


@pytest.mark.parametrize("camera", ["static", "pan left", "zoom in"])
def test_same_content_at_two_sizes(camera):
    scene = sample_scene(np.random.default_rng(2), num_objects=3)
    scene.camera = camera
    small = render(scene, 64, 64, 9).frames.astype(np.float32)
    big = render(scene, 128, 128, 9).frames.astype(np.float32)
    down = big.reshape(9, 64, 2, 64, 2, 3).mean((2, 4))
    assert np.abs(small - down).mean() < 4.0  # levels out of 255
    assert np.percentile(np.abs(small - down), 99) < 60


def test_same_content_at_two_frame_rates():
    scene = sample_scene(np.random.default_rng(3), num_objects=2)
    a = render(scene, 64, 64, 9, fps=8.0).frames
    b = render(scene, 64, 64, 17, fps=16.0).frames
    assert np.array_equal(a, b[::2])  # positions are functions of seconds, not frames


def test_every_environment_and_time_looks_different():
    means = {}
    for env in ENVIRONMENTS:
        for tod in ("day", "night"):
            f = render(Scene(env, tod, "static", []), 64, 64, 1).frames[0].astype(np.float32)
            means[env, tod] = f[32:].reshape(-1, 3).mean(0)  # the ground half
    keys = list(means)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert np.linalg.norm(means[a] - means[b]) > 8, (a, b)
    for env in ENVIRONMENTS:
        assert means[env, "night"].sum() < 0.6 * means[env, "day"].sum()


def test_objects_keep_their_colour_at_night():
    for tod in ("day", "night"):
        f = render(_scene(time=tod, color="purple"), 64, 64, 1).frames[0]
        assert np.array_equal(f[32, 32], PALETTE["purple"])


def test_sizes_in_pixels_at_64():
    for size, lo, hi in (("small", 7, 11), ("large", 15, 21)):
        f = render(_scene(size=size, environment="ocean"), 64, 64, 1).frames[0]
        red = (np.abs(f.astype(int) - PALETTE["red"]).sum(-1) < 60)[32]
        assert lo <= red.sum() <= hi, (size, red.sum())


def test_camera_moves_background():
    def bg(camera):
        return render(Scene("desert", "day", camera, []), 64, 64, 11).frames.astype(np.float32)

    static = bg("static")
    assert np.array_equal(static[0], static[-1])
    pan = bg("pan left")
    # Panning left slides the world right: the last frame is the first shifted right.
    shift = 8  # PAN_SPEED 0.1 units/s * 64 px/unit * 1.25 s (frame 10 at 8 fps)
    moved = np.abs(pan[-1][:, shift:] - pan[0][:, :-shift]).mean()
    assert moved < 3 and moved < 0.4 * np.abs(pan[-1] - pan[0]).mean()
    zoom = bg("zoom in")
    assert np.abs(zoom[0] - static[0]).mean() < 2  # zoom starts from the static view
    assert np.abs(zoom[-1] - zoom[0]).mean() > 4


def test_motion_directions_and_speeds():
    def centre(**kw):
        f = render(_scene(environment="ocean", **kw), 64, 64, 9).frames.astype(int)
        m = np.abs(f - PALETTE["red"]).sum(-1) < 60
        ys, xs = np.nonzero(m[-1])
        y0, x0 = np.nonzero(m[0])
        return xs.mean() - x0.mean(), ys.mean() - y0.mean()

    dx, dy = centre(motion="right", speed="slow")
    assert 5 < dx < 8 and abs(dy) < 0.5  # 0.1 units/s for 1 s at 64 px per unit
    dx, dy = centre(motion="left", speed="fast")
    assert -21 < dx < -17 and abs(dy) < 0.5
    dx, dy = centre(motion="up", speed="slow")
    assert -8 < dy < -5
    assert centre(motion="still") == (0, 0)


def test_bouncing_stays_above_ground_and_reverses():
    scene = _scene(motion="bouncing", speed="fast", y=0.3, environment="ocean")
    f = render(scene, 64, 64, 33).frames.astype(int)
    m = np.abs(f - PALETTE["red"]).sum(-1) < 60
    ys = np.array([np.nonzero(k)[0].mean() for k in m])
    assert ys.max() < 0.88 * 64  # the ground line
    vy = np.diff(ys)
    assert (vy > 1).any() and (vy < -1).any()


def test_bad_arguments_raise():
    scene = sample_scene(np.random.default_rng(0))
    with pytest.raises(ValueError, match="width and height"):
        render(scene, 0, 64, 5)
    with pytest.raises(ValueError, match="frames"):
        render(scene, 64, 64, 0)
    partial = Scene(environment="meadow", time="day", camera=None, objects=[])
    with pytest.raises(ValueError, match="camera"):
        render(partial, 64, 64, 5)


@pytest.mark.parametrize(
    "size", [(32, 32), (48, 80), (320, 180), pytest.param((2048, 2048), marks=pytest.mark.slow)]
)
def test_large_and_odd_sizes_render(size):
    scene = sample_scene(np.random.default_rng(4), num_objects=3)
    for w, h in (size,):
        v = render(scene, w, h, 2)
        assert v.frames.shape == (2, h, w, 3)


def test_coverage_marks_exactly_the_pixels_objects_change():
    scene = _scene(motion="right", speed="fast")
    video, by_shape = render(scene, 48, 32, 5, seed=2, coverage=True)
    assert by_shape.shape == (3, 5, 32, 48) and by_shape.dtype == np.float32
    cover = by_shape.max(0)
    own = SHAPES.index(scene.objects[0].shape)  # the one object's shape, and no other
    assert by_shape[own].max() == 1.0 and np.delete(by_shape, own, 0).max() == 0
    assert cover.min() >= 0 and cover.max() == 1.0
    assert np.array_equal(video.frames, render(scene, 48, 32, 5, seed=2).frames)
    empty = Scene(environment="meadow", time="day", camera="static", objects=[])
    bare = render(empty, 48, 32, 5, seed=2).frames.astype(int)
    changed = np.abs(video.frames.astype(int) - bare).max(-1) > 0
    assert np.array_equal(changed, cover > 0.002)  # alpha below half a level rounds away
    assert not render(empty, 48, 32, 5, coverage=True)[1].any()
    assert not np.array_equal(cover[0], cover[-1])  # the mask moves with the object
