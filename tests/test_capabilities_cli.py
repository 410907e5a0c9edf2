"""The capability subcommands end to end on a tiny random model: files written, and every bad
input refused with exit 2, one line on stderr and no output file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_pipeline import tiny_pipeline  # tests/ is on sys.path under pytest

from kinetoscope.cli import main
from kinetoscope.video import Video


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_pipeline().save_pretrained(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    return str(Video(frames, 8.0).save(tmp_path_factory.mktemp("in") / "clip.mp4"))


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_writes_the_video_and_prints_the_expanded_prompt(capsys, tmp_path, model):
    out = tmp_path / "a.mp4"
    rc, stdout, _ = run(capsys, "generate", "a red ball", "--model", model, "--steps", "2",
                        "--frames", "9", "--out", out)  # fmt: skip
    assert rc == 0
    v = Video.read(out)
    assert (v.num_frames, v.width, v.height) == (9, 32, 32)
    expanded = stdout.splitlines()[0]
    assert expanded.startswith("prompt: ") and len(expanded) > len("prompt: a red ball")


def test_keyframe_flag_reaches_the_pipeline(capsys, tmp_path, model):
    common = ("a ball", "--model", model, "--steps", "2", "--no-expand", "--frames", "9")
    for flag in ("--keyframe", "--no-keyframe"):
        assert run(capsys, "generate", *common, flag, "--out", tmp_path / f"{flag}.mp4")[0] == 0
    on, off = (Video.read(tmp_path / f"{f}.mp4").frames for f in ("--keyframe", "--no-keyframe"))
    assert on.shape == off.shape and not np.array_equal(on, off)
    rc, _, _ = run(capsys, "eval", "adherence", "--model", model, "--steps", "1", "--count", "1",
                   "--prompts", "short", "--keyframe", "--json", tmp_path / "e.json")  # fmt: skip
    assert rc == 0 and json.loads((tmp_path / "e.json").read_text())["keyframe"] is True


def test_guide_frames_flag_reaches_the_pipeline(capsys, tmp_path, model, clip_path):
    common = ("a ball", "--model", model, "--steps", "2", "--no-expand", "--seconds", "1")
    outs = [tmp_path / f"{f}.mp4" for f in ("on", "off")]
    for flag, out in zip(("--guide-frames", "--no-guide-frames"), outs):
        # backward: the window that closes on the video's start is guided (this model's
        # forward windows know 1 latent frame, which is never guided)
        argv = ("extend", clip_path, *common, "--direction", "backward", flag, "--out", out)
        assert run(capsys, *argv)[0] == 0
    on, off = (Video.read(out).frames for out in outs)
    assert on.shape == off.shape and not np.array_equal(on, off)


def test_rounding_is_noticed_on_stderr(capsys, tmp_path, model):
    out = tmp_path / "a.gif"
    rc, _, err = run(capsys, "generate", "a ball", "--model", model, "--steps", "1",
                     "--frames", "6", "--size", "40x40", "--out", out)  # fmt: skip
    assert rc == 0 and Video.read(out).num_frames == 5
    assert "note: 6 frames rounded to 5" in err and "note: size 40x40 rounded to 48x48" in err


def test_every_capability_runs(capsys, tmp_path, model, clip_path):
    common = ("--model", model, "--steps", "1", "--no-expand")
    jobs = {
        "image.png": ("image", "a ball", "--size", "48x32"),
        "animate.mp4": ("animate", clip_path, "a ball", "--frames", "5"),
        "extend.mp4": ("extend", clip_path, "a ball", "--seconds", "0.5"),
        "back.mp4": ("extend", clip_path, "a ball", "--seconds", "0.5", "--direction", "backward"),
        "connect.mp4": ("connect", clip_path, clip_path, "a ball", "--seconds", "0.5"),
        "edit.mp4": ("edit", clip_path, "a ball at night", "--strength", "0.5"),
        "inverted.mp4": ("edit", clip_path, "a ball at night", "--strength", "0.5", "--invert"),
        "loop.mp4": ("loop", "a ball", "--video", clip_path, "--transition", "0.5"),
    }
    frames = {"image.png": 1, "animate.mp4": 5, "extend.mp4": 13, "back.mp4": 14,
              "connect.mp4": 22, "edit.mp4": 9, "inverted.mp4": 9, "loop.mp4": 13}  # fmt: skip
    original = Video.read(clip_path).frames
    for name, argv in jobs.items():
        rc, _, err = run(capsys, *argv, *common, "--out", tmp_path / name)
        assert rc == 0, err
        v = Video.read(tmp_path / name)
        assert v.num_frames == frames[name], name
    # mp4 is lossy, so "unchanged" is checked in the library tests; here the prefix is close
    ext = Video.read(tmp_path / "extend.mp4").frames[:9].astype(int)
    assert np.abs(ext - original).mean() < 8


BAD = {
    "unreadable image": ("animate", "{garbage}", "a ball"),
    "missing video": ("extend", "{missing}", "a ball"),
    "zero seconds": ("generate", "a ball", "--seconds", "0"),
    "negative seconds": ("generate", "a ball", "--seconds", "-2"),
    "absurd seconds": ("generate", "a ball", "--seconds", "6000"),
    "zero frames": ("generate", "a ball", "--frames", "0"),
    "strength above 1": ("edit", "{clip}", "a ball", "--strength", "1.5"),
    "strength below 0": ("edit", "{clip}", "a ball", "--strength", "-0.1"),
    "huge size": ("image", "a ball", "--size", "4096x4096"),
    "size the video cannot keep": ("extend", "{odd}", "a ball"),
    "bad output extension": ("generate", "a ball", "--out", "{tmp}/x.txt"),
    "image as a video output": ("generate", "a ball", "--out", "{tmp}/x.png"),
    "missing model": ("generate", "a ball", "--model", "{tmp}/no-model"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line_and_no_output(capsys, tmp_path, model, clip_path, case):
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"not an image at all")
    odd = Video(np.zeros((5, 24, 40, 3), np.uint8)).save(tmp_path / "odd.mp4")
    fill = dict(garbage=garbage, missing=tmp_path / "nope.mp4", clip=clip_path, odd=odd,
                tmp=tmp_path)  # fmt: skip
    argv = [a.format(**fill) for a in BAD[case]]
    if "--model" not in argv:
        argv += ["--model", model]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.mp4")]
    before = set(tmp_path.iterdir())
    rc, _, err = run(capsys, *argv, "--steps", "1")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kinetoscope {argv[0]}: error: "), err
    assert set(tmp_path.iterdir()) == before  # nothing written, not even a temp file


def test_the_installed_command_exits_2_too(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "kinetoscope", "edit", "nope.mp4", "x", "--strength", "2"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--strength" in r.stderr
