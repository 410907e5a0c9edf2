"""The real `kinetoscope` command in a subprocess: exit codes, messages, no tracebacks."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from kinetoscope.cli import build_parser


def kinetoscope(*args: str, module: str = "kinetoscope.cli") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def info_lines(out: str) -> dict[str, str]:
    return dict(line.strip().split(": ", 1) for line in out.strip().splitlines())


@pytest.mark.parametrize(
    "name, t, expected",
    [
        ("a.mp4", 8, {"frames": "8", "size": "64x48", "fps": "8.0", "duration": "1.0"}),
        ("a.gif", 6, {"frames": "6", "size": "64x48", "fps": "8.0", "duration": "0.75"}),
        ("a.png", 1, {"frames": "1", "size": "64x48", "fps": "8.0", "duration": "0.125"}),
    ],
)
def test_info_prints_frames_size_fps_duration_codec(tmp_path, make_video, name, t, expected):
    path = make_video(t=t).save(tmp_path / name)
    r = kinetoscope("info", path)
    assert r.returncode == 0, r.stderr
    info = info_lines(r.stdout)
    codec = {"mp4": "h264", "gif": "gif", "png": "png"}[name.split(".")[1]]
    assert info == {**expected, "codec": codec}


def test_python_dash_m_kinetoscope_works(small_mp4):
    r = kinetoscope("info", small_mp4, module="kinetoscope")
    assert r.returncode == 0 and "frames: 8" in r.stdout


def _bad(tmp_path, make_video, kind):
    if kind == "missing":
        return tmp_path / "nope.mp4"
    if kind == "folder":
        (tmp_path / "d.mp4").mkdir()
        return tmp_path / "d.mp4"
    path = tmp_path / ("a.txt" if kind == "extension" else "a.mp4")
    data = {"empty": b"", "random": os.urandom(3000), "extension": b"hello"}.get(kind)
    if kind == "truncated":
        full = make_video(t=12).save(tmp_path / "full.mp4").read_bytes()
        data = full[: len(full) // 2]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "random", "truncated", "extension"])
def test_info_on_broken_input_is_one_line_exit_2(tmp_path, make_video, kind):
    path = _bad(tmp_path, make_video, kind)
    r = kinetoscope("info", path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kinetoscope info: error: ")
    assert str(path) in lines[0]


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_works_for_every_subcommand(name):
    r = kinetoscope(name, "--help")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert r.stdout.startswith(f"usage: kinetoscope {name}")


def test_top_level_help_lists_subcommands():
    r = kinetoscope("--help")
    assert r.returncode == 0
    assert all(name in r.stdout for name in subcommands())
