"""The Video type and all file I/O (PyAV): read, save, probe, tensors, resize, crop, trim."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from kinetoscope.errors import UserError
from kinetoscope.files import umask_mode

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
SAVE_EXTS = (".mp4", ".webm", ".gif", *IMAGE_EXTS)
READ_EXTS = (*SAVE_EXTS, ".m4v", ".mov", ".mkv", ".avi")
DEFAULT_FPS = 8.0  # what a still image gets: it has no rate of its own
# mp4 (H.264 yuv420p) needs even sizes: we pad and write the true size here, and read crops back.
_SIZE_TAG = "kinetoscope-size="


def frames_for(seconds: float, fps: float) -> int:
    """Returns the frame count of a `seconds`-long clip: its frames bound seconds * fps
    intervals, so 4 s at 8 fps is 33 frames (Wan's convention: 5 s at 16 fps is 81)."""
    return 1 + max(0, round(seconds * fps))


@contextmanager
def atomic_write(p: Path) -> Iterator[str]:
    """Yields a hidden temporary path beside `p` (same extension, so PyAV picks the container)
    and renames it onto `p` when the body succeeds; on any failure it is removed, so `p` is
    never half-written."""
    with _av_errors(p, "write"):
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-", suffix=p.suffix.lower(), dir=p.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())  # mkstemp made it owner-only
        os.replace(tmp, p)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@dataclass
class Video:
    """Frames `uint8 [T, H, W, 3]` plus `fps`; a still image is a 1-frame video."""

    frames: np.ndarray
    fps: float = DEFAULT_FPS
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = self.frames
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            got = f"{f.dtype} {list(f.shape)}" if isinstance(f, np.ndarray) else type(f).__name__
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {got}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def _with(self, frames: np.ndarray) -> Video:
        return Video(np.ascontiguousarray(frames), self.fps, dict(self.metadata))

    # ---- files ----

    @classmethod
    def read(cls, path: str | os.PathLike) -> Video:
        """Returns the video (or a still image as 1 frame) decoded to uint8 RGB.

        fps: mp4/webm from the stream rate; gif from frames / total time, which is only kept to
        1/100 s (a whole fps consistent with it is preferred); images get DEFAULT_FPS.
        An odd-sized mp4 written by `save` comes back at its original size (see `save`).
        """
        p = _check_input(path)
        with _av_errors(p, "decode it as a video or image"), av.open(str(p)) as c:
            st = _video_stream(c, p)
            st.thread_type = "AUTO"
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(st)]
            _check_count(p, c, st, len(frames))
            x = np.stack(frames)
            texts, size = _tags(c)
            if size and size[0] <= x.shape[2] and size[1] <= x.shape[1]:
                x = x[:, : size[1], : size[0]]
            fps = _fps(c, st, len(frames), p)
            meta = {"path": str(p), "codec": st.codec_context.name, **texts}
        return cls(np.ascontiguousarray(x), fps, meta)

    def save(self, path: str | os.PathLike, bitrate: int | None = None) -> Path:
        """Returns the path written: .mp4 (H.264), .webm (VP9), .gif, or .png/.jpg (1 frame only).

        The write is atomic: frames go to a hidden temp file in the same folder, renamed over
        `path` only when complete; on failure the temp file is removed and `path` is untouched.
        bitrate: bits per second for mp4/webm; None means constant quality (crf).
        mp4: yuv420p needs even sizes, so odd sizes are padded with edge pixels and the true size
        is the first line of the container's comment (any metadata comment follows it);
        `Video.read` crops back, other players show the pad.
        gif: one shared 256-colour palette (exact when the video has <= 256 colours); delays are
        whole centiseconds (total time rounded to 1/100 s), and readers slow fps above 50.
        """
        p = Path(path)
        ext = p.suffix.lower()
        if ext not in SAVE_EXTS:
            raise UserError(
                f"{p}: cannot save {ext or 'no extension'!r}; use {', '.join(SAVE_EXTS)}"
            )
        if not p.parent.is_dir():
            raise UserError(f"{p}: folder {p.parent} does not exist")
        if p.is_dir():
            raise UserError(f"{p}: is a folder")
        if self.num_frames == 0:
            raise UserError(f"{p}: the video has no frames to save")
        if ext in IMAGE_EXTS and self.num_frames != 1:
            raise UserError(
                f"{p}: {ext} holds one frame but the video has {self.num_frames}; "
                "use .mp4/.webm/.gif, or video.trim(0, 1) to save the first frame"
            )
        with atomic_write(p) as tmp, _av_errors(p, "write"):
            _write(self, tmp, ext, bitrate)
        return p

    # ---- tensors ----

    def to_tensor(self):
        """Returns float32 `[3, T, H, W]` in [-1, 1]."""
        import torch

        x = torch.from_numpy(self.frames).permute(3, 0, 1, 2).float()  # [3, T, H, W]
        return (x / 127.5 - 1.0).contiguous()

    @classmethod
    def from_tensor(cls, x, fps: float = DEFAULT_FPS) -> Video:
        """Returns a Video from `[3, T, H, W]` in [-1, 1] (clamped, rounded to uint8)."""
        import torch

        if x.ndim != 4 or x.shape[0] != 3:
            raise ValueError(f"from_tensor expects [3, T, H, W], got {list(x.shape)}")
        x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
        frames = x.to("cpu", torch.uint8).permute(1, 2, 3, 0)  # [T, H, W, 3]
        return cls(np.ascontiguousarray(frames.numpy()), fps)

    # ---- geometry and time ----

    def resize(self, w: int, h: int) -> Video:
        """Returns the video scaled to w x h (bilinear, antialiased when shrinking)."""
        import torch
        import torch.nn.functional as F

        _check_size(w, h, "resize")
        if (w, h) == (self.width, self.height):
            return self._with(self.frames.copy())
        out = [np.zeros((0, h, w, 3), np.uint8)]
        for i in range(0, self.num_frames, 32):  # chunks bound the memory of the work buffers
            # uint8 in, uint8 out: torch's CPU kernel for this is ~10x faster than float32
            x = torch.from_numpy(self.frames[i : i + 32]).permute(0, 3, 1, 2)  # [t, 3, H, W]
            y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            out.append(y.permute(0, 2, 3, 1).numpy())
        return self._with(np.concatenate(out))

    def center_crop(self, w: int, h: int) -> Video:
        """Returns the central w x h window (it must fit inside the frame)."""
        _check_size(w, h, "center_crop")
        if w > self.width or h > self.height:
            raise UserError(f"center_crop: {w}x{h} does not fit in {self.width}x{self.height}")
        top, left = (self.height - h) // 2, (self.width - w) // 2
        return self._with(self.frames[:, top : top + h, left : left + w])

    def fit(self, w: int, h: int) -> Video:
        """Returns the video scaled to cover w x h (aspect kept), then center-cropped to it."""
        _check_size(w, h, "fit")
        scale = max(w / self.width, h / self.height)
        nw = max(w, round(self.width * scale))
        nh = max(h, round(self.height * scale))
        return self.resize(nw, nh).center_crop(w, h)

    def trim(self, start: int, stop: int | None = None) -> Video:
        """Returns frames [start, stop) (stop None means to the end)."""
        n = self.num_frames
        stop = n if stop is None else stop
        if not 0 <= start < stop <= n:
            raise ValueError(f"trim: need 0 <= start < stop <= {n}, got start={start} stop={stop}")
        return self._with(self.frames[start:stop])

    @classmethod
    def concat(cls, videos: Sequence[Video]) -> Video:
        """Returns the videos joined in time; all must share size and fps."""
        if not videos:
            raise ValueError("concat: no videos given")
        a = videos[0]
        for i, v in enumerate(videos[1:], 1):
            if (v.width, v.height) != (a.width, a.height) or not math.isclose(v.fps, a.fps):
                raise ValueError(
                    f"concat: video {i} is {v.width}x{v.height} at {v.fps} fps, "
                    f"video 0 is {a.width}x{a.height} at {a.fps} fps"
                )
        return cls(np.concatenate([v.frames for v in videos]), a.fps, dict(a.metadata))


def probe(path: str | os.PathLike) -> dict:
    """Returns {frames, size 'WxH', fps, duration, codec} without decoding pixels, plus the
    file's title and comment when it has them (a generated video's prompt, expanded prompt)."""
    p = _check_input(path)
    with _av_errors(p, "read it as a video or image"), av.open(str(p)) as c:
        st = _video_stream(c, p)
        cc = st.codec_context
        n = sum(1 for pkt in c.demux(st) if pkt.size)  # header counts are missing for gif/webm
        _check_count(p, c, st, n)
        texts, size = _tags(c)
        w, h = size or (cc.width, cc.height)
        fps = _fps(c, st, n, p)
        codec = cc.name
    return {
        "frames": n,
        "size": f"{w}x{h}",
        "fps": round(fps, 3),
        "duration": round(n / fps, 3),
        "codec": codec,
        **texts,
    }


# ---- helpers ----


def _check_size(w: int, h: int, what: str) -> None:
    if int(w) != w or int(h) != h or w <= 0 or h <= 0:
        raise UserError(f"{what}: size must be positive integers, got {w}x{h}")


def _check_input(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a folder, not a video or image file")
    if p.suffix.lower() not in READ_EXTS:
        raise UserError(f"{p}: unsupported extension {p.suffix!r}; use {', '.join(READ_EXTS)}")
    if p.stat().st_size == 0:
        raise UserError(f"{p}: empty file")
    return p


@contextmanager
def _av_errors(p: Path, doing: str) -> Iterator[None]:
    """Turns PyAV/ffmpeg failures into a one-line UserError (av's own errors never leak)."""
    try:
        yield
    except (av.FFmpegError, OSError) as e:
        why = " ".join(str(getattr(e, "strerror", None) or e).split())
        if isinstance(e, av.EOFError):
            why = "ends unexpectedly: truncated, or no frames"
        raise UserError(f"{p}: cannot {doing} ({why})") from None


def _video_stream(c, p: Path):
    if not c.streams.video:
        raise UserError(f"{p}: has no video stream")
    return c.streams.video[0]


def _check_count(p: Path, c, st, n: int) -> None:
    """Raises UserError for a file with no frames or fewer than its header promises."""
    if n == 0:
        raise UserError(f"{p}: contains no frames")
    # mp4 headers count frames (a cut faststart file still opens); webm headers give the
    # duration; a gif ends with a trailer byte, which a cut file lacks.
    # The slack of 2 frames: edit lists may drop a frame or two of a valid file's count.
    if st.frames and n < st.frames - 2:
        raise UserError(f"{p}: truncated: its header says {st.frames} frames, only {n} are there")
    rate = st.average_rate
    if c.format.name.startswith("matroska") and c.duration and rate:
        seconds = c.duration / 1e6
        if n < seconds * float(rate) - 2:
            raise UserError(f"{p}: truncated: its header says {seconds:.2f} s, only {n} frames "
                            f"at {float(rate):g} fps are there")  # fmt: skip
    if c.format.name == "gif":
        with open(p, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\x3b":
                raise UserError(f"{p}: truncated: the gif ends before its trailer")


def _tags(c) -> tuple[dict[str, str], tuple[int, int] | None]:
    """Returns the container's title and comment (a generated video's prompt and expanded
    prompt) and, for an odd-sized mp4 written by `save`, its true size (the comment's first
    line is then our size tag)."""
    texts, size = {}, None
    for key, value in c.metadata.items():
        k = key.lower()
        if k == "comment" and value.startswith(_SIZE_TAG):
            tag, _, value = value.partition("\n")
            w, h = tag[len(_SIZE_TAG) :].split("x")
            size = int(w), int(h)
        if k in ("title", "comment") and value:
            texts[k] = value
    return texts, size


def _fps(c, st, n: int, p: Path) -> float:
    if c.format.name in ("image2", "png_pipe", "jpeg_pipe") or p.suffix.lower() in IMAGE_EXTS:
        return DEFAULT_FPS
    if c.format.name == "gif" and (st.duration or c.duration):
        # Delays are whole centiseconds, so take frames / total time; when a whole fps would
        # have written exactly this total (as `save` rounds it), that fps is the one meant.
        cs = round(100 * float(st.duration * st.time_base if st.duration else c.duration / 1e6))
        k = round(100 * n / cs) if cs else 0
        return float(k) if k and round(100 * n / k) == cs else 100 * n / max(cs, 1)
    rate = st.average_rate or st.guessed_rate or st.base_rate
    return float(rate) if rate else DEFAULT_FPS


def _av_frame(array: np.ndarray, palette: np.ndarray | None = None) -> av.VideoFrame:
    """Returns a PyAV frame from uint8 RGB [H, W, 3], or indices [H, W] + ARGB palette [256, 4]."""
    if palette is None:
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
    return av.VideoFrame.from_ndarray((np.ascontiguousarray(array), palette), format="pal8")


def _palette(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (indices uint8 [T, H, W], ARGB palette uint8 [256, 4]) shared by all frames."""
    rgb = frames.reshape(-1, 3).astype(np.int64)
    key = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    colors = np.flatnonzero(np.bincount(key, minlength=1 << 24))  # 10x faster than np.unique
    if len(colors) <= 256:  # exact: rendered scenes and flat images have few colours
        pal = np.stack([colors >> 16, (colors >> 8) & 255, colors & 255], 1).astype(np.float32)
        lut = np.zeros(1 << 24, np.uint8)
        lut[colors] = np.arange(len(colors))
        idx = lut[key]
    else:  # keep the 256 most used 5-bit bins (their mean colour); map every bin to the nearest
        bins = ((rgb[:, 0] >> 3) << 10) | ((rgb[:, 1] >> 3) << 5) | (rgb[:, 2] >> 3)
        count = np.bincount(bins, minlength=1 << 15)
        top = np.argsort(count)[::-1][:256]
        top = top[count[top] > 0]
        pal = np.stack(
            [np.bincount(bins, rgb[:, c], 1 << 15)[top] / count[top] for c in range(3)], 1
        ).astype(np.float32)
        a = np.arange(1 << 15)
        centres = ((np.stack([a >> 10, (a >> 5) & 31, a & 31], 1) << 3) + 4).astype(np.float32)
        dist = (pal**2).sum(1)[None] - 2 * centres @ pal.T  # [32768, K]; |c|^2 is constant per row
        idx = dist.argmin(1)[bins]
    argb = np.zeros((256, 4), np.uint8)
    argb[:, 0] = 255
    argb[: len(pal), 1:] = np.round(pal).clip(0, 255)
    return idx.astype(np.uint8).reshape(frames.shape[:3]), argb


# no random Matroska UIDs, no muxer version string: a file depends only on its frames and tags
_BITEXACT = {"fflags": "+bitexact"}

# ext -> (encoder, pixel format, options); crf (constant quality) is dropped when a bitrate is set
_CODECS = {
    # mbtree off: with it, libx264 wrote a different 64x64 mp4 for the same frames from one
    # save to the next, most often after torch work (cause inside x264 not found; threads=1
    # did not help). Files 30% larger, round-trip PSNR no lower.
    ".mp4": ("libx264", "yuv420p", {"crf": "18", "x264-params": "mbtree=0"}),
    ".webm": ("libvpx-vp9", "yuv420p", {"crf": "30", "b": "0", "cpu-used": "4", "row-mt": "1"}),
    ".gif": ("gif", "pal8", {}),
    ".png": ("png", "rgb24", {}),
    ".jpg": ("mjpeg", "yuvj444p", {"qmin": "1", "qmax": "3"}),
    ".jpeg": ("mjpeg", "yuvj444p", {"qmin": "1", "qmax": "3"}),
}


def _write(video: Video, path: str, ext: str, bitrate: int | None) -> None:
    frames, fps, n = video.frames, video.fps, video.num_frames
    codec, pix_fmt, options = _CODECS[ext]
    muxer = dict(_BITEXACT)
    if ext in IMAGE_EXTS:
        muxer["update"] = "1"  # one image, not a %d sequence
    if ext == ".gif":  # the muxer repeats the previous delay for the last frame unless told
        muxer["final_delay"] = str(round(n * 100 / fps) - round((n - 1) * 100 / fps))
    with av.open(path, "w", options=muxer) as c:
        if ext in (".mp4", ".webm"):  # e.g. the prompt and expanded prompt travel with the file
            for key in ("title", "comment"):
                if video.metadata.get(key):
                    c.metadata[key] = str(video.metadata[key])
        h, w = frames.shape[1:3]
        if ext == ".mp4" and (w % 2 or h % 2):
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            comment = video.metadata.get("comment")  # kept after the tag's line
            c.metadata["comment"] = f"{_SIZE_TAG}{w}x{h}" + (f"\n{comment}" if comment else "")
        if bitrate:
            options = {k: v for k, v in options.items() if k not in ("crf", "b")}
        rate = None if ext in IMAGE_EXTS else Fraction(fps).limit_denominator(1001)
        st = c.add_stream(codec, rate=rate, options=options)
        st.pix_fmt, st.width, st.height = pix_fmt, frames.shape[2], frames.shape[1]
        if bitrate:
            st.bit_rate = int(bitrate)
        if ext == ".gif":
            st.codec_context.time_base = Fraction(1, 100)
        idx, pal = _palette(frames) if ext == ".gif" else (frames, None)
        for i in range(n):
            frame = _av_frame(idx[i], pal)
            if ext == ".gif":  # delays in whole centiseconds, rounded so the total stays right
                frame.pts, frame.time_base = round(i * 100 / fps), Fraction(1, 100)
            c.mux(st.encode(frame))
        c.mux(st.encode())
