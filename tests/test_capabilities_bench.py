"""benchmarks/capabilities.py on renders and a tiny random model: the seam and object checks
fail what is broken and pass what is continuous, and every command produces its figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from benchmark_scripts import load
from test_pipeline import tiny_pipeline  # tests/ is on sys.path under pytest

from kinetoscope.video import Video
from kinetoscope.world.render import render
from kinetoscope.world.scene import Obj, Scene

cb = load("capabilities")


def scene(color="red", shape="circle", motion="right", camera="static", speed="fast") -> Scene:
    """Returns a one-object scene with a large object well inside the frame at t = 0."""
    obj = Obj(shape, color, "large", motion, speed, x=0.3, y=0.45, depth=0)
    return Scene("meadow", "day", camera, [obj])


def clip(s: Scene, frames: int = 50, size: int = 64) -> np.ndarray:
    return render(s, size, size, frames, fps=8.0).frames


def spliced(a: np.ndarray, b: np.ndarray, at: int = 17) -> Video:
    return Video(np.concatenate([a[:at], b[at : 2 * at]]), 8.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


# ---- the checks themselves, on renders --------------------------------------------------------


def test_a_continuous_render_passes_its_seams():
    v = Video(clip(scene(camera="pan left", speed="slow")), 8.0)
    for s, ref in ((17, "before"), (12, "after")):
        r = cb.check_seam(v, s, ref)
        assert r["pass"], r["why"]
        assert r["objects"] == 1 and r["jumps"] == 1 and r["shapes"] == 1  # not vacuous


def test_a_jump_a_colour_change_and_a_shape_change_each_fail_a_seam():
    a = clip(scene(speed="slow"))
    skipped = Video(np.concatenate([a[:17], a[27:44]]), 8.0)  # 10 frames (1.25 s) left out
    r = cb.check_seam(skipped, 17)
    assert not r["pass"] and not r["position"] and r["colour"] and r["shape"], r
    r = cb.check_seam(spliced(a, clip(scene(color="blue", speed="slow"))), 17)
    assert not r["colour"] and r["position"], r
    r = cb.check_seam(spliced(a, clip(scene(shape="square", speed="slow"))), 17)
    assert not r["shape"] and r["colour"], r


def test_an_object_leaving_the_frame_is_not_a_vanishing():
    # fast to the right from x=0.3: leaves the 64x64 frame over frames ~16..22
    v = Video(clip(scene(), frames=40), 8.0)
    tr = cb.object_tracks(v.frames)["red"]
    gone = int(np.flatnonzero(tr.present[:-1] & ~tr.present[1:])[0]) + 1
    back = int(np.flatnonzero(~tr.present[:-1] & tr.present[1:])[0]) + 1  # wrapped around
    assert 12 < gone < back < 40
    for s in (gone, back):
        r = cb.check_seam(v, s)
        assert r["colour"], r["why"]


def test_keeps_objects_judges_every_window_against_the_first():
    good = Video(clip(scene(motion="still"), frames=80), 8.0)
    k = cb.keeps_objects(good)
    assert k["pass"] and k["windows"] == 3 and k["objects"] == 1  # 0-33, 33-66, 47-80
    bad = Video(np.concatenate([good.frames[:66], clip(scene("blue", motion="still"), 14)]), 8.0)
    k = cb.keeps_objects(bad)
    assert not k["pass"] and k["kept"] == 2 and k["colours_kept"] == 2
    assert not k["pass_consistent"] and k["consistent"] == 2  # blue is new
    empty = Scene("meadow", "day", "static", [])  # the object gone from the view
    left = Video(np.concatenate([good.frames[:47], clip(empty, 33)]), 8.0)
    k = cb.keeps_objects(left)
    assert not k["pass"] and k["pass_consistent"] and k["consistent"] == 3


def test_window_seams_are_where_the_pipeline_starts_each_window(pipe):
    lengths = []
    real = pipe.sample_latents
    pipe.sample_latents = lambda p, size, *a, **kw: (
        lengths.append(size[0]),
        real(p, size, *a, **kw),
    )[1]
    try:
        v = cb.call_pipe(pipe, "generate", "a red ball", frames=29)
    finally:
        del pipe.sample_latents
    d, tf = pipe.defaults, pipe.time_factor
    new = [1 + tf * (lengths[0] - 1)] + [tf * (n - d.overlap) for n in lengths[1:]]
    assert sum(new) == v.num_frames == 29
    assert cb.window_seams(pipe, 29) == list(np.cumsum(new)[:-1])
    assert len(cb.window_seams(pipe, 97)) > 3


# ---- the measurements on a tiny random model (figures mean nothing; the plumbing does) --------


def test_kept_and_seams_cover_every_capability(pipe):
    res = cb.measure_cases(pipe, runs=1, seed=0, kept=True, seams=True)
    assert set(res["kept"]) == set(cb.KEPT_CASES)
    for name, (fig,) in res["kept"].items():
        assert fig["pass"] and fig["psnr"] >= fig["roundtrip"], name  # spliced back unchanged
    seams = {k: len(v["model"]) for k, v in res["seams"].items()}
    assert seams["extend forward"] == seams["extend backward"] == seams["loop"] == 1
    assert seams["connect"] == 2 and seams["long video windows"] >= 3
    assert all(len(v["control"]) == len(v["model"]) for v in res["seams"].values())
    rows = cb.seams_markdown(res["seams"])
    assert len(rows) == 2 + len(res["seams"])


def test_perfect_seams_run_no_model_and_pass_continuous_renders(pipe):
    def no_model(*a, **kw):
        raise AssertionError("--perfect must not sample")

    pipe.sample_latents = no_model
    try:
        res = cb.measure_cases(pipe, runs=2, seed=0, kept=False, seams=True, perfect=True)
    finally:
        del pipe.sample_latents
    figs = [x for v in res["seams"].values() for x in v["model"]]
    assert len(figs) == 2 * 6 + 2 * len(cb.window_seams(pipe, 97))
    assert np.mean([x["pass"] for x in figs]) >= 0.9


def test_kept_fails_when_the_given_frames_are_changed(pipe):
    a = clip(scene(), frames=17, size=32)
    out = np.concatenate([a, a[-4:]])
    out[:17] = 255 - out[:17]
    case = cb.Case("extend forward", Video(out, 8.0), scene(), [(slice(0, 17), a)])
    assert not cb.kept_figures(pipe, case)["pass"]


def test_edit_runs_alternate_environment_and_time(pipe):
    figs = [cb.edit_run(pipe, i, seed=0) for i in range(2)]
    assert [f["attribute"] for f in figs] == ["environment", "time"]
    for f in figs:
        assert isinstance(f["found"], bool) and isinstance(f["motion"], bool)


def test_cli_writes_markdown_and_json_and_children_report_memory(pipe, tmp_path):
    model = pipe.save_pretrained(tmp_path / "tiny")
    md, js = tmp_path / "k.md", tmp_path / "k.json"
    assert cb.main(["kept", "--model", str(model), "--runs", "1", "--markdown", str(md),
                    "--json", str(js), "--threads", "1"]) == 0  # fmt: skip
    assert "### Given frames are kept" in md.read_text()
    assert set(json.loads(js.read_text())["kept"]) == set(cb.KEPT_CASES)
    ballast = np.ones(2**30 // 8)  # 1 GiB in this process must not show in the child's peak
    f = cb.run_child(model, "long", tmp_path / "l.mp4", (32, 32), seconds=2.0, threads=1)
    assert ballast.sum() > 0
    del ballast
    assert Video.read(tmp_path / "l.mp4").num_frames == 17
    assert f["wall_s"] > 0 and 1000 > f["peak_rss_mb"] >= f["rss_after_load_mb"] > 50
    f = cb.run_child(model, "image", tmp_path / "i.png", (96, 64), threads=1)  # refined path
    assert Video.read(tmp_path / "i.png").width == 96 and f["peak_rss_mb"] > 50


def test_long_judges_one_video_per_scene(pipe, tmp_path):
    model = str(pipe.save_pretrained(tmp_path / "tiny"))
    args = cb.parse_args(["long", "--model", model, "--minutes", "2", "--threads", "1"])
    res, rows = cb.cmd_long(model, args, lengths=(1.0, 2.0))
    assert [m["run"] for m in res["minutes"]] == [0, 1]
    assert res["minutes"][0]["keeps_objects"] == res["keeps_objects"]
    assert all(m["keeps_objects"]["windows"] == 1 for m in res["minutes"])  # 17 frames
    assert any(r.startswith("Over 2 videos of 2 s (the scenes of runs 0-1)") for r in rows)
    videos = []
    for run in (0, 1, 1):  # run i: its own scene and seed, the same each time
        out = tmp_path / f"{len(videos)}.mp4"
        kid = cb.parse_args(["_child", "--job", "long", "--model", model, "--out", str(out),
                             "--size", "32x32", "--seconds", "1", "--run", str(run)])  # fmt: skip
        cb.child(kid)
        videos.append(Video.read(out).frames)
    assert not np.array_equal(videos[0], videos[1]) and np.array_equal(videos[1], videos[2])
