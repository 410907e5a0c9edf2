"""Video I/O: round trips, probe, bad files, atomic writes, tensors, geometry."""

from __future__ import annotations

import os
import random

import av
import numpy as np
import pytest
import torch

from kinetoscope import video as video_mod
from kinetoscope.errors import UserError
from kinetoscope.longvideo import Stream
from kinetoscope.video import Video, probe


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---- round trips ----


@pytest.mark.parametrize(
    "ext, max_err",
    [(".mp4", 3.0), (".webm", 4.0), (".gif", 2.5)],  # gif: 3073 colours share one palette
)
def test_round_trip_keeps_frames_size_fps(tmp_path, make_video, ext, max_err):
    v = make_video(t=8, h=48, w=64, fps=8.0)
    r = Video.read(v.save(tmp_path / f"clip{ext}"))
    assert (r.num_frames, r.width, r.height, r.fps) == (8, 64, 48, 8.0)
    assert mae(r.frames, v.frames) <= max_err
    assert sorted(os.listdir(tmp_path)) == [f"clip{ext}"]  # no temp file left behind


def test_mp4_keeps_fractional_fps_and_bitrate_changes_size(tmp_path, make_video):
    v = make_video(t=6, fps=12.5)
    assert Video.read(v.save(tmp_path / "a.mp4")).fps == 12.5
    small = v.save(tmp_path / "low.mp4", bitrate=20_000).stat().st_size
    big = v.save(tmp_path / "high.mp4", bitrate=2_000_000).stat().st_size
    assert small < big


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".gif", ".png", ".jpg"])
def test_the_same_frames_save_to_the_same_file(tmp_path, ext):
    # 64x64 noise over a gradient with a still block: with libx264's mbtree on, its mp4
    # differed between saves, mostly after torch work; a webm's Matroska UIDs are random
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 64)[None, None, :, None]
    frames = (rng.random((33, 64, 64, 3)) * 40 + ramp).astype(np.uint8)
    frames[:, 20:30, 10:40] = [200, 30, 30]
    frames = frames[:1] if ext in (".png", ".jpg") else frames  # images: one frame
    v, files = Video(frames, fps=8.0), set()
    for i in range(8):
        torch.randn(600, 700) @ torch.randn(700, 500)
        junk = [np.full(1 << k, 37 * i % 256, np.uint8) for k in range(8, 22)]
        del junk
        files.add(v.save(tmp_path / f"{i}{ext}").read_bytes())
    assert len(files) == 1
    # written as it is made (a long video) or whole: the same file
    stream = Stream(iter(np.array_split(frames, 3)), 8.0, 64, 64, len(frames))
    assert stream.save(tmp_path / f"stream{ext}").read_bytes() in files


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_odd_size_round_trips(tmp_path, make_video, ext):
    v = make_video(t=4, h=47, w=63)
    path = v.save(tmp_path / f"odd{ext}")
    r = Video.read(path)
    assert (r.width, r.height) == (63, 47)
    assert probe(path)["size"] == "63x47"
    assert mae(r.frames, v.frames) < 4.0
    # the last row and column are real content, not the padding
    assert mae(r.frames[:, -1], v.frames[:, -1]) < 8.0
    assert mae(r.frames[:, :, -1], v.frames[:, :, -1]) < 8.0


def test_gif_is_exact_with_few_colours_and_close_with_many(tmp_path, make_video):
    few = Video(make_video().frames // 64 * 64)  # < 256 colours, as in rendered scenes
    assert np.array_equal(Video.read(few.save(tmp_path / "few.gif")).frames, few.frames)
    rng = np.random.default_rng(0)
    v = Video(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), fps=10.0)
    r = Video.read(v.save(tmp_path / "noise.gif"))
    assert (r.num_frames, r.fps) == (3, 10.0)
    assert 0 < mae(r.frames, v.frames) < 16  # 5-bit bins quantise to ~4 levels per channel


@pytest.mark.parametrize("fps", [8.0, 10.0, 12.0])
def test_gif_fps_round_trips(tmp_path, make_video, fps):
    assert Video.read(make_video(t=5, fps=fps).save(tmp_path / "a.gif")).fps == fps


def test_png_is_exact_and_jpg_close(tmp_path, make_video):
    still = make_video(t=1, h=47, w=63)
    png = Video.read(still.save(tmp_path / "a.png"))
    assert png.num_frames == 1 and np.array_equal(png.frames, still.frames)
    jpg = Video.read(still.save(tmp_path / "a.jpg"))
    assert (jpg.num_frames, jpg.width, jpg.height) == (1, 63, 47)
    assert mae(jpg.frames, still.frames) < 3.0


def test_multi_frame_png_is_refused(tmp_path, make_video):
    with pytest.raises(UserError, match="one frame but the video has 8"):
        make_video().save(tmp_path / "a.png")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".gif", ".png"])
def test_probe_agrees_with_read(tmp_path, make_video, ext):
    v = make_video(t=1 if ext == ".png" else 6, fps=8.0)
    path = v.save(tmp_path / f"a{ext}")
    info, r = probe(path), Video.read(path)
    assert list(info) == ["frames", "size", "fps", "duration", "codec"]
    assert info["frames"] == r.num_frames == v.num_frames
    assert info["size"] == f"{r.width}x{r.height}" == "64x48"
    assert info["fps"] == r.fps and info["duration"] == pytest.approx(r.duration, abs=1e-3)
    assert info["codec"] == {".mp4": "h264", ".webm": "vp9", ".gif": "gif", ".png": "png"}[ext]


# ---- bad input ----


def _truncated_mp4(tmp_path, make_video):
    data = make_video(t=16).save(tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.mp4"


def _truncated_faststart_mp4(tmp_path, make_video):
    # moov first (as on the web): half a file still opens, so the frame count must catch it
    rng = np.random.default_rng(0)
    with av.open(str(tmp_path / "fs.mp4"), "w", options={"movflags": "+faststart"}) as c:
        st = c.add_stream("libx264", rate=8)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for _ in range(24):
            noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            c.mux(st.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")))
        c.mux(st.encode())
    data = (tmp_path / "fs.mp4").read_bytes()
    return _write(tmp_path / "cut.mp4", data[: len(data) // 2])


def _cut(tmp_path, make_video, ext):
    data = make_video(t=16).save(tmp_path / f"full{ext}").read_bytes()
    return _write(tmp_path / f"cut{ext}", data[: len(data) // 2])


def _zero_frames(tmp_path, ext, codec):
    with av.open(str(tmp_path / f"zero{ext}"), "w") as c:
        st = c.add_stream(codec, rate=8)
        st.width, st.height, st.pix_fmt = 16, 16, "yuv420p"
        c.start_encoding()
    return tmp_path / f"zero{ext}"


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


BAD_FILES = {
    "missing": (lambda d, mv: d / "nope.mp4", "no such file"),
    "folder": (lambda d, mv: (d / "dir.mp4").mkdir() or d / "dir.mp4", "is a folder"),
    "empty": (lambda d, mv: _write(d / "e.mp4", b""), "empty file"),
    # seeded: some random 4,000 bytes probe as an audio stream ("has no video stream")
    "random bytes": (lambda d, mv: _write(d / "r.mp4", random.Random(0).randbytes(4000)), "cannot"),
    "truncated mp4": (_truncated_mp4, "cannot"),
    "truncated faststart mp4": (_truncated_faststart_mp4, "truncated"),
    "truncated webm": (lambda d, mv: _cut(d, mv, ".webm"), "truncated"),
    "truncated gif": (lambda d, mv: _cut(d, mv, ".gif"), "truncated"),
    "zero frames mp4": (lambda d, mv: _zero_frames(d, ".mp4", "libx264"), "no video stream"),
    "zero frames webm": (lambda d, mv: _zero_frames(d, ".webm", "libvpx-vp9"), "no frames"),
    "bad extension": (lambda d, mv: _write(d / "a.txt", b"hi"), "extension"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
@pytest.mark.parametrize("fn", [Video.read, probe], ids=["read", "probe"])
def test_bad_files_give_one_line_user_error(tmp_path, make_video, name, fn):
    make, expected = BAD_FILES[name]
    path = make(tmp_path, make_video)
    with pytest.raises(UserError) as err:
        fn(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and expected in msg
    assert not isinstance(err.value, av.FFmpegError)


def test_save_refuses_bad_targets(tmp_path, make_video):
    v = make_video(t=2)
    with pytest.raises(UserError, match="cannot save '.avi'"):
        v.save(tmp_path / "a.avi")
    with pytest.raises(UserError, match="does not exist"):
        v.save(tmp_path / "no" / "a.mp4")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_a_videos_prompt_travels_with_the_file_and_reads_back(tmp_path, make_video, ext):
    v = make_video(t=2)
    v.metadata.update(title="a red ball", comment="A small red ball bounces. The camera is static.")
    p = v.save(tmp_path / f"a{ext}")
    for got in (Video.read(p).metadata, probe(p)):
        assert got["title"] == "a red ball" and got["comment"].startswith("A small red ball")
    odd = Video(v.frames[:, :7, :5]).save(tmp_path / "odd.mp4")  # its comment is the size tag
    assert "comment" not in Video.read(odd).metadata and "comment" not in probe(odd)
    odd = Video(v.frames[:, :7, :5], metadata=dict(v.metadata)).save(tmp_path / "odd2.mp4")
    back = Video.read(odd)  # an odd size and a prompt: both come back
    assert back.frames.shape[1:3] == (7, 5) and probe(odd)["size"] == "5x7"
    assert back.metadata["comment"] == v.metadata["comment"] == probe(odd)["comment"]


# ---- atomic writes ----


def test_saved_files_get_the_umask_mode_not_owner_only(tmp_path, make_video):
    mask = os.umask(0o027)  # any umask: the file must follow it, not mkstemp's 0600
    try:
        for name in ("a.mp4", "a.gif", "a.png"):
            v = make_video(t=1 if name.endswith(".png") else 2)
            assert os.stat(v.save(tmp_path / name)).st_mode & 0o777 == 0o640
    finally:
        os.umask(mask)


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path, make_video, monkeypatch, ext):
    real, calls = video_mod._av_frame, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*args)

    monkeypatch.setattr(video_mod, "_av_frame", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        make_video().save(tmp_path / f"a{ext}")
    assert os.listdir(tmp_path) == []

    # an existing target survives a failed overwrite byte for byte
    monkeypatch.setattr(video_mod, "_av_frame", real)
    target = make_video(t=2).save(tmp_path / f"a{ext}")
    before = target.read_bytes()
    monkeypatch.setattr(video_mod, "_av_frame", flaky)
    calls.clear()
    with pytest.raises(RuntimeError):
        make_video().save(target)
    assert os.listdir(tmp_path) == [f"a{ext}"] and target.read_bytes() == before


# ---- tensors ----


def test_tensor_round_trip_is_exact(make_video):
    v = make_video(t=3)
    x = v.to_tensor()
    assert x.shape == (3, 3, 48, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x[:, 0, 0, 0].tolist() == pytest.approx((v.frames[0, 0, 0] / 127.5 - 1).tolist())
    assert np.array_equal(Video.from_tensor(x, fps=v.fps).frames, v.frames)


def test_from_tensor_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0, 0.5 / 127.5 - 1 + 1e-4]).view(1, 6, 1, 1)
    v = Video.from_tensor(x.expand(3, 6, 1, 1), fps=4.0)
    assert v.frames[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255, 1]  # 127.5 rounds to even
    assert v.fps == 4.0
    with pytest.raises(ValueError, match=r"\[3, T, H, W\], got \[1, 3, 2, 2, 2\]"):
        Video.from_tensor(torch.zeros(1, 3, 2, 2, 2))


def test_frames_of_wrong_shape_are_value_errors():
    with pytest.raises(ValueError, match=r"got float32 \[2, 4, 4, 3\]"):
        Video(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[4, 4, 3\]"):
        Video(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="fps must be positive"):
        Video(np.zeros((1, 4, 4, 3), np.uint8), fps=0)


# ---- geometry and time ----


def test_resize_antialiases_and_keeps_flat_colour():
    checker = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)
    v = Video(np.repeat(checker[None, ..., None], 3, -1).repeat(2, 0))
    small = v.resize(4, 4)
    assert small.frames.shape == (2, 4, 4, 3)
    assert np.all(np.abs(small.frames.astype(int) - 128) <= 4)  # averaged, not aliased to 0/255
    flat = Video(np.full((1, 5, 7, 3), 77, np.uint8)).resize(13, 3)
    assert flat.frames.shape == (1, 3, 13, 3) and np.all(flat.frames == 77)


def test_center_crop_takes_the_middle():
    y, x = np.mgrid[0:10, 0:12]
    frames = np.stack([y, x, np.zeros_like(x)], -1).astype(np.uint8)[None]
    c = Video(frames).center_crop(4, 6)
    assert (c.width, c.height) == (4, 6)
    assert c.frames[0, 0, 0].tolist() == [2, 4, 0]  # top=(10-6)//2, left=(12-4)//2
    with pytest.raises(UserError, match="13x6 does not fit in 12x10"):
        Video(frames).center_crop(13, 6)


def test_fit_covers_then_crops(make_video):
    v = make_video(t=2, h=48, w=64)
    f = v.fit(32, 32)
    assert (f.width, f.height, f.num_frames) == (32, 32, 2)
    assert np.array_equal(f.frames, v.resize(43, 32).center_crop(32, 32).frames)
    assert (v.fit(64, 16).width, v.fit(64, 16).height) == (64, 16)


@pytest.mark.parametrize(
    "call", ["resize(0, 5)", "resize(4, -2)", "fit(-1, 4)", "center_crop(0, 3)"]
)
def test_impossible_sizes_are_user_errors(make_video, call):
    with pytest.raises(UserError, match="size must be positive"):
        eval(f"v.{call}", {"v": make_video(t=1)})


def test_trim_and_concat(make_video):
    v = make_video(t=8)
    t = v.trim(2, 5)
    assert t.num_frames == 3 and np.array_equal(t.frames, v.frames[2:5])
    assert v.trim(6).num_frames == 2
    for start, stop in [(5, 5), (-1, 3), (0, 9)]:
        with pytest.raises(ValueError, match=f"start={start} stop={stop}"):
            v.trim(start, stop)
    c = Video.concat([v.trim(0, 3), v.trim(3, 8)])
    assert np.array_equal(c.frames, v.frames) and c.fps == v.fps
    with pytest.raises(ValueError, match="video 1 is 32x48 at 8.0 fps, video 0 is 64x48"):
        Video.concat([v, make_video(w=32)])
    with pytest.raises(ValueError, match="at 10.0 fps"):
        Video.concat([v, make_video(fps=10.0)])
    with pytest.raises(ValueError, match="no videos"):
        Video.concat([])
