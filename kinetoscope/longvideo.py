"""Videos of any length: sliding windows over latent frames, decoded and written as they come.

The DiT sees at most `window` latent frames at once (the length it was trained on). A longer
video is rolled out window by window: each window is conditioned on the last `overlap` latent
frames of what came before (known frames, held clean at t = 0) and adds the rest. The known
frames are re-encoded from the last 1 + 4(overlap - 1) *pixel* frames, so they start with a
1-frame latent exactly as every training clip does. Each window is decoded chunk by chunk with
the causal VAE and its new frames are handed on at once, so memory stays flat in the length.

An optional known `suffix` (latent frames that must close the video) makes the last window a
connection: extend backward and connect end on it.

With the model default `keyframe`, a video made from nothing starts with latent frame 0 sampled
alone, as an image, and the first window is conditioned on it (Emu Video's factorisation: the
model commits to what is in the scene before it has to make it move).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kinetoscope.diffusion.conditioning import FrameCondition
from kinetoscope.errors import UserError
from kinetoscope.video import Video


@dataclass
class Stream:
    """A video produced lazily: `chunks` yields uint8 `[t, H, W, 3]` frames in order."""

    chunks: Iterator[np.ndarray]
    fps: float
    width: int
    height: int
    num_frames: int
    metadata: dict = field(default_factory=dict)

    def to_video(self) -> Video:
        """Returns the whole video in memory."""
        frames = np.concatenate(list(self.chunks))
        return Video(frames, self.fps, dict(self.metadata))

    def save(self, path: str | os.PathLike) -> Path:
        """Returns `path` written: mp4/webm frame by frame (memory flat), other formats whole."""
        p = Path(path)
        if p.suffix.lower() not in (".mp4", ".webm"):
            return self.to_video().save(p)
        return _write_stream(self, p)


def known_frames(n: int, window_overlap: int, time_factor: int = 4) -> int:
    """Returns how many of the last `n` pixel frames make a prefix of <= overlap latent frames.

    That is 1 + 4(k - 1) for the largest k <= overlap that fits in n (a 1-frame image gives 1).
    """
    k = min(window_overlap, 1 + (n - 1) // time_factor)
    return 1 + time_factor * (k - 1)


def roll(
    pipe,
    prompt,
    n_new: int,
    height: int,
    width: int,
    generator: torch.Generator,
    prefix: np.ndarray | None = None,
    suffix: torch.Tensor | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    progress: bool = True,
) -> Iterator[np.ndarray]:
    """Yields the new frames (uint8 `[t, H, W, 3]`) of a video of `n_new` new latent frames.

    prefix: the pixel frames just before (uint8 `[K, H, W, 3]`, K = 1 + 4(k - 1)); without one
    the first window starts from nothing and its first latent gives 1 frame, later ones 4.
    suffix: latents `[1, C, m, h, w]` that must close the video; the frames they decode to are
    not yielded (the caller splices the original pixels in).
    """
    d, tf = pipe.defaults, pipe.time_factor
    W, overlap = d.window, d.overlap
    m = 0 if suffix is None else suffix.shape[2]
    if m + overlap + 1 > W:  # the closing window: <= overlap known, >= 1 new, m suffix frames
        raise ValueError(f"suffix of {m} + overlap {overlap} latent frames leave no room in {W}")
    buf = prefix  # the last pixel frames so far: the next window's known prefix
    remaining = n_new
    bar = tqdm(total=n_new, desc="latent frames", unit="frame", disable=not progress, leave=False)
    known = None
    if d.keyframe and prefix is None and m == 0 and n_new > 1:  # frame 0 alone, as an image
        known = pipe.sample_latents(prompt, (1, height, width), generator,
                                    steps=steps, guidance=guidance)  # fmt: skip
        remaining -= 1
    while remaining > 0:
        own = known is not None  # the keyframe: known to the first window, and new, so yielded
        if buf is not None:
            buf = buf[len(buf) - known_frames(len(buf), overlap, tf) :]
            known = pipe.encode_frames(buf)  # [1, C, k, h, w]
        k = 0 if known is None else known.shape[2]
        if m == 0:
            n, closing = min(W - k, remaining), None
        elif remaining <= W - k - m:  # the closing window: prefix, the rest, then the suffix
            n, closing = remaining, suffix
        else:  # leave at least one new frame for the closing window
            n, closing = min(W - k, remaining - 1), None
        L = k + n + (m if closing is not None else 0)
        cond = _condition(known, closing, L)
        guide = d.guide_frames and (k > 1 or closing is not None)  # a video goes on
        z = pipe.sample_latents(prompt, (L, height, width), generator, cond, steps=steps,
                                guidance=guidance, guide_frames=guide)  # fmt: skip
        new = []
        for i, x in enumerate(pipe.decode_chunks(z)):  # causal: stop once the new frames are out
            if i >= k + n:
                break
            if i >= k or own:
                new.append(x)
                yield x
        frames = np.concatenate(new)
        buf = frames if buf is None else np.concatenate([buf, frames])
        remaining -= n
        bar.update(n + own)
        known = None
    bar.close()


def _condition(head: torch.Tensor | None, tail: torch.Tensor | None, L: int):
    if head is None and tail is None:
        return None
    if tail is None:
        return FrameCondition.prefix(head, L)
    if head is None:
        return FrameCondition.suffix(tail, L)
    return FrameCondition.prefix_suffix(head, tail, L)


# ---- writing frames as they come ------------------------------------------------------------


def _write_stream(stream: Stream, p: Path) -> Path:
    """Returns `p`: frames encoded as they arrive into a hidden temp file, renamed when done."""
    import av

    from kinetoscope.video import _BITEXACT, _CODECS, _av_errors, _av_frame, atomic_write

    if not p.parent.is_dir():
        raise UserError(f"{p}: folder {p.parent} does not exist")
    codec, pix_fmt, options = _CODECS[p.suffix.lower()]
    with atomic_write(p) as tmp, _av_errors(p, "write"), av.open(tmp, "w", options=_BITEXACT) as c:
        for key in ("title", "comment"):
            if stream.metadata.get(key):
                c.metadata[key] = str(stream.metadata[key])
        st = c.add_stream(codec, rate=Fraction(stream.fps).limit_denominator(1001),
                          options=options)  # fmt: skip
        st.pix_fmt, st.width, st.height = pix_fmt, stream.width, stream.height
        for chunk in stream.chunks:
            for frame in chunk:
                c.mux(st.encode(_av_frame(frame)))
        c.mux(st.encode())
    return p
