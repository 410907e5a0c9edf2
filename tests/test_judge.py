"""ShapeWorld judge: reads rendered scenes back, and scores videos against prompts."""

import importlib.util

import numpy as np
import pytest

from kinetoscope.video import Video
from kinetoscope.world.judge import judge, score
from kinetoscope.world.render import render
from kinetoscope.world.scene import CAMERAS, ENVIRONMENTS, OBJECT_KEYS, Obj, Scene

HAS_CAPTIONS = importlib.util.find_spec("kinetoscope.world.captions") is not None


def _objects_agree(truth: Scene, seen: Scene) -> None:
    assert sorted(o.color for o in seen.objects) == sorted(o.color for o in truth.objects)
    by_color = {o.color: o for o in seen.objects}
    for o in truth.objects:
        j = by_color[o.color]
        for key in OBJECT_KEYS:
            if key == "speed" and o.motion == "still":
                continue
            assert getattr(j, key) == getattr(o, key), (key, o, j)


# Objects placed apart so none hides another: the judge must then read every attribute.
SCENES = [
    Scene(
        "meadow",
        "day",
        "static",
        [
            Obj("circle", "red", "large", "right", "slow", 0.3, 0.35, 0),
            Obj("triangle", "cyan", "small", "bouncing", "fast", 0.75, 0.3, 1),
        ],
    ),
    Scene(
        "city",
        "night",
        "pan left",
        [
            Obj("square", "yellow", "small", "up", "fast", 0.25, 0.6, 0),
            Obj("circle", "purple", "large", "still", "slow", 0.7, 0.4, 1),
        ],
    ),
    Scene(
        "ocean",
        "night",
        "zoom in",
        [Obj("triangle", "white", "large", "left", "fast", 0.5, 0.45, 0)],
    ),
    Scene(
        "snowfield",
        "day",
        "zoom out",
        [
            Obj("square", "blue", "large", "down", "slow", 0.3, 0.3, 0),
            Obj("circle", "green", "small", "bouncing", "slow", 0.75, 0.4, 1),
        ],
    ),
    Scene(
        "desert",
        "day",
        "pan right",
        [
            Obj("triangle", "orange", "small", "still", "fast", 0.5, 0.5, 0),
            Obj("square", "white", "large", "left", "slow", 0.25, 0.3, 1),
        ],
    ),
]


@pytest.mark.parametrize("scene", SCENES, ids=[s.environment for s in SCENES])
def test_judge_reads_rendered_scenes(scene):
    seen = judge(render(scene, 64, 64, 33))
    assert (seen.environment, seen.time, seen.camera) == (
        scene.environment,
        scene.time,
        scene.camera,
    )
    _objects_agree(scene, seen)


def test_judge_at_another_size_and_aspect():
    scene = SCENES[0]
    for w, h in ((96, 64), (48, 80), (128, 128)):
        seen = judge(render(scene, w, h, 33))
        assert seen.camera == "static" and seen.environment == "meadow"
        _objects_agree(scene, seen)


def test_static_scene_reads_static_and_still():
    scene = Scene(
        "desert",
        "night",
        "static",
        [
            Obj("circle", "red", "small", "still", "slow", 0.3, 0.5, 0),
            Obj("square", "blue", "large", "still", "fast", 0.7, 0.5, 1),
        ],
    )
    seen = judge(render(scene, 64, 64, 33))
    assert seen.camera == "static"
    assert [o.motion for o in seen.objects] == ["still", "still"]


def test_every_camera_and_environment_is_read():
    for env, cam in zip(ENVIRONMENTS, CAMERAS):
        for tod in ("day", "night"):
            seen = judge(render(Scene(env, tod, cam, []), 64, 64, 33, seed=5))
            assert (seen.environment, seen.time, seen.camera) == (env, tod, cam)
            assert seen.objects == []


def test_judge_survives_noise():
    scene = SCENES[1]
    video = render(scene, 64, 64, 33)
    rng = np.random.default_rng(0)
    noisy = np.clip(video.frames + rng.normal(0, 10, video.frames.shape), 0, 255)
    seen = judge(Video(noisy.astype(np.uint8), video.fps))
    assert seen.camera == scene.camera
    _objects_agree(scene, seen)


def test_judge_tells_a_wrong_scene_apart():
    # Guards against a judge that always answers the same: change each attribute, read it.
    base = SCENES[0]
    for changed in (
        Scene("desert", "day", "static", base.objects),
        Scene("meadow", "night", "static", base.objects),
        Scene("meadow", "day", "pan right", base.objects),
    ):
        seen = judge(render(changed, 64, 64, 33))
        assert (seen.environment, seen.time, seen.camera) == (
            changed.environment,
            changed.time,
            changed.camera,
        )


def test_short_clip_and_single_frame():
    seen = judge(render(SCENES[0], 64, 64, 1))
    assert seen.camera == "static" and len(seen.objects) == 2
    assert all(o.motion == "still" for o in seen.objects)


@pytest.mark.skipif(not HAS_CAPTIONS, reason="kinetoscope.world.captions not written yet")
def test_score_against_own_caption_is_high_and_contradiction_low():
    from kinetoscope.world.captions import caption

    for scene in SCENES[:3]:
        video = render(scene, 64, 64, 33)
        for detail in ("short", "detailed"):
            own = score(video, caption(scene, detail=detail, seed=0))
            assert own["overall"] >= 0.95, (detail, own)
    video = render(SCENES[0], 64, 64, 33)
    bad = score(
        video, "a small blue square moves up fast in the snow at night, the camera zooms in"
    )
    assert bad["overall"] <= 0.3, bad
    for key in ("color", "shape", "size", "motion", "speed", "environment", "time", "camera"):
        assert key in bad
    assert bad["environment"] == 0.0 and bad["camera"] == 0.0


@pytest.mark.skipif(not HAS_CAPTIONS, reason="kinetoscope.world.captions not written yet")
def test_score_only_counts_stated_attributes():
    video = render(SCENES[0], 64, 64, 33)
    out = score(video, "a red ball")
    assert out["color"] == 1.0 and out["shape"] == 1.0
    assert "environment" not in out and "camera" not in out
    assert out["overall"] == pytest.approx(np.mean([v for k, v in out.items() if k in (
        "color", "shape", "count")]))  # fmt: skip
