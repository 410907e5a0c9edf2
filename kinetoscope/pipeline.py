"""The Pipeline: one object through which every capability runs, on any model it can load.

prompt -> expand -> text encoder -> sampler (DiT, CFG, frame conditions) -> VAE decode -> Video.
Every capability is the same sampler with a different set of known latent frames:

  generate   nothing known (long videos: sliding windows, see longvideo.py)
  animate    the image is latent frame 0
  extend     forward: the video's last frames are a known prefix; backward: its first frames
             are a known suffix
  connect    A's last frames a prefix, B's first frames a suffix; loop = connect(v, v)
  edit       SDEdit: the input's latents noised to t = strength, then denoised
  image      one frame; large sizes are made at the native size, upsampled in latent space
             and refined with SDEdit, the DiT and the VAE both working in tiles

Given pixels are never re-decoded into the output: extend / connect / animate splice the
input frames back in unchanged around the generated ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kinetoscope.bigimage import refine_tiled
from kinetoscope.diffusion.flow import frame_noise, shift_for_latent
from kinetoscope.diffusion.sampling import SAMPLERS, sample
from kinetoscope.errors import UserError
from kinetoscope.longvideo import Stream, known_frames, roll
from kinetoscope.video import Video, frames_for

MAX_SECONDS = 600.0  # longer requests are refused (a typo like 6000 should not run for hours)
MAX_SIDE = 2048


class Notice(UserWarning):
    """A change the pipeline made to a request (a size or a length rounded); the CLI prints it."""


def notice(message: str) -> None:
    warnings.warn(message, Notice, stacklevel=3)


@dataclass
class PipelineDefaults:
    """What a request gets for every value it leaves out; saved with the model."""

    width: int = 64
    height: int = 64
    fps: float = 8.0
    seconds: float = 4.0
    steps: int = 16
    guidance: float = 4.0
    shift: float | None = None  # None: flow.shift_for_tokens, the rule the trainer uses
    sampler: str = "dpm++2m"
    noise_corr: float = 0.0  # correlation of the noise between latent frames: as trained
    window: int = 9  # latent frames per DiT pass (9 = 33 frames, the training clip length)
    overlap: int = 3  # known latent frames each window (and each extension) is conditioned on
    transition: float = 2.0  # seconds of a connect / loop transition
    refine_strength: float = 0.55  # SDEdit strength of the refining pass of large images
    refine_tile: int = 16  # latent cells per side of a DiT tile in that pass
    # Text to video in two steps (Emu Video's factorisation): latent frame 0 first, sampled
    # alone as an image, then the first window with it as a known frame.
    keyframe: bool = False
    # Windows that continue a video (2+ known latent frames, or a closing suffix: extend,
    # connect, loop, a long video's later windows) are guided by their known frames as by
    # the text (sampling.frames_dropped), so the new frames follow the given ones harder. Not a
    # single known frame (animate, the keyframe), where it was measured to cost adherence.
    guide_frames: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise_corr < 1.0:
            raise ValueError(f"noise_corr must be in [0, 1), got {self.noise_corr}")
        if self.shift is not None and not (math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"shift must be > 0 (None: the trainer's rule), got {self.shift}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not (self.overlap >= 1 and 2 * self.overlap + 1 <= self.window):
            raise ValueError(
                f"need overlap >= 1 and window >= 2 * overlap + 1 (room for a prefix, a suffix "
                f"and one new frame), got window={self.window} overlap={self.overlap}"
            )


@dataclass
class EncodedPrompt:
    """The user's prompt, what the model was given, and both text embeddings for CFG."""

    text: str
    expanded: str
    context: torch.Tensor  # [1, L, D]
    mask: torch.Tensor  # [1, L] bool
    null_context: torch.Tensor  # [1, L0, D] the encoded ""
    null_mask: torch.Tensor


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_seconds(seconds: float, what: str = "--seconds") -> float:
    """Returns seconds if it is a duration the pipeline makes, else raises UserError."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise UserError(f"{what} must be > 0, got {seconds}")
    if seconds > MAX_SECONDS:
        raise UserError(f"{what} {seconds:g} is too long: at most {MAX_SECONDS:g} s")
    return float(seconds)


class Pipeline:
    """Text, image and video to video with one VAE, one DiT and one text encoder."""

    def __init__(
        self,
        vae,
        dit,
        text_encoder,
        defaults: PipelineDefaults | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.bfloat16,
        name: str = "custom",
    ) -> None:
        self.device = torch.device(device or default_device())
        self.dtype = dtype  # compute dtype: bf16 runs under autocast, float32 runs plain
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.dit = dit.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.defaults = defaults or PipelineDefaults()
        self.name = name
        if vae.cfg.z_dim != dit.cfg.in_channels:
            raise ValueError(f"VAE z_dim {vae.cfg.z_dim} != DiT in_channels {dit.cfg.in_channels}")
        if text_encoder.dim != dit.cfg.text_dim:
            raise ValueError(f"text dim {text_encoder.dim} != DiT text_dim {dit.cfg.text_dim}")

    # ---- loading and saving (pretrained.py holds the formats) ---------------------------------

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device=None, dtype: torch.dtype | None = None
    ) -> Pipeline:
        """Returns the pipeline of 'shapeworld-tiny', a saved folder, a training run or Wan2.1."""
        from kinetoscope.pretrained import load

        return load(name_or_path, device=device, dtype=dtype)

    def save_pretrained(
        self, path: str | Path, card: str | None = None, weights_dtype: torch.dtype | None = None
    ) -> Path:
        """Returns the folder written: vae/dit/text .safetensors, config.json, README.md."""
        from kinetoscope.pretrained import save

        return save(self, path, card, weights_dtype)

    # ---- geometry -----------------------------------------------------------------------------

    @property
    def time_factor(self) -> int:
        return self.vae.cfg.time_factor

    @property
    def space_factor(self) -> int:
        return self.vae.cfg.space_factor

    @property
    def size_step(self) -> int:
        """Pixel sizes must be multiples of this: the VAE's space factor times the DiT's patch."""
        return self.space_factor * max(self.dit.cfg.patch_size[1:])

    def fit_size(self, size: tuple[int, int] | None) -> tuple[int, int]:
        """Returns (w, h): `size` (default: the model's) rounded to valid sizes, with a notice."""
        w, h = size or (self.defaults.width, self.defaults.height)
        if w <= 0 or h <= 0 or max(w, h) > MAX_SIDE:
            raise UserError(f"size {w}x{h} is out of range: 1..{MAX_SIDE} pixels per side")
        s = self.size_step
        rw, rh = (_round_to(v, s) for v in (w, h))
        if (rw, rh) != (w, h):
            notice(f"size {w}x{h} rounded to {rw}x{rh} (the model needs multiples of {s})")
        return rw, rh

    def size_for_aspect(self, aspect: float) -> tuple[int, int]:
        """Returns the valid (w, h) nearest to aspect w/h at about the model's native area."""
        area, s = self.defaults.width * self.defaults.height, self.size_step
        h0 = math.sqrt(area / aspect)
        hs = {_round_to(h0 - s / 2, s), _round_to(h0 + s / 2, s)}
        sizes = {(_round_to(h * aspect + d, s), h) for h in hs for d in (-s / 2, s / 2)}
        # aspect error first; area error counts half (small sizes cannot match both)
        score = lambda wh: (
            abs(math.log(wh[0] / wh[1] / aspect)) + 0.5 * abs(math.log(wh[0] * wh[1] / area))
        )
        return min(sorted(sizes), key=score)

    def num_frames(self, seconds: float | None, frames: int | None, fps: float) -> int:
        """Returns a frame count of 1 + 4k from `frames` or `seconds`, with a notice if rounded."""
        if frames is not None:
            if frames < 1 or frames > MAX_SECONDS * fps:
                raise UserError(f"--frames must be in 1..{int(MAX_SECONDS * fps)}, got {frames}")
        else:
            seconds = check_seconds(self.defaults.seconds if seconds is None else seconds)
            frames = frames_for(seconds, fps)
        tf = self.time_factor
        n = 1 + tf * max(0, round((frames - 1) / tf))
        if n != frames:
            notice(f"{frames} frames rounded to {n} (the model makes 1 + {tf}k frames)")
        return n

    def new_latents(self, seconds: float | None, fps: float, first: bool = False) -> int:
        """Returns how many latent frames make about `seconds` of new video (4 frames each;
        the very first frame of a clip is 1 frame when `first`), with a notice if rounded."""
        seconds = check_seconds(self.defaults.transition if seconds is None else seconds)
        want, tf = max(1, round(seconds * fps)), self.time_factor
        n = max(1, round((want - 1) / tf) + 1) if first else max(1, round(want / tf))
        got = 1 + tf * (n - 1) if first else tf * n
        if got != want:
            notice(f"{want} new frames rounded to {got} (the model adds {tf} frames at a time)")
        return n

    def fit_video(self, video: Video, size: tuple[int, int] | None, keep: bool) -> Video:
        """Returns the video at a valid size: `size` if given (resize + crop); else its own
        size, which must already be valid when `keep` (its frames go to the output as they are),
        or is rounded with a notice when not."""
        if size is not None:
            w, h = self.fit_size(size)
            if (w, h) != (video.width, video.height):
                notice(f"video {video.width}x{video.height} resized and cropped to {w}x{h}")
        else:
            w, h, s = video.width, video.height, self.size_step
            if w % s or h % s or max(w, h) > MAX_SIDE:
                near = tuple(_round_to(v, s) for v in (w, h))
                if keep:
                    raise UserError(
                        f"{video.metadata.get('path', 'the video')} is {w}x{h}; the model needs "
                        f"multiples of {s}: pass --size {near[0]}x{near[1]} to resize and crop it"
                    )
                notice(f"video size {w}x{h} rounded to {near[0]}x{near[1]}")
                w, h = near
        return video if (w, h) == (video.width, video.height) else video.fit(w, h)

    # ---- the building blocks -------------------------------------------------------------------

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def encode_prompt(self, prompt: str, expand: bool = True, seed: int = 0) -> EncodedPrompt:
        """Returns the prompt (rule-expanded into a detailed caption when `expand`) encoded."""
        from kinetoscope.prompts.expand import expand as expand_prompt

        expanded = expand_prompt(prompt, seed=seed) if expand else prompt
        with self._autocast():
            ctx, mask = self.text_encoder([expanded])
            nctx, nmask = self.text_encoder([""])
        return EncodedPrompt(prompt, expanded, ctx.float(), mask, nctx.float(), nmask)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """Returns normalised latents `[1, C, 1 + (T-1)/4, H/8, W/8]` of uint8 `[T, H, W, 3]`."""
        x = Video(np.ascontiguousarray(frames)).to_tensor()[None].to(self.device)
        with self._autocast():
            return self.vae.encode(x).float()

    def decode_chunks(self, z: torch.Tensor) -> Iterator[np.ndarray]:
        """Yields uint8 frames `[t, H, W, 3]` of latents `[1, C, T, h, w]`, one latent at a time."""
        chunks = self.vae.decode_chunks(z.to(self.device))
        while True:  # contexts per step: a generator must not leave autocast on for its caller
            with torch.no_grad(), self._autocast():
                x = next(chunks, None)
            if x is None:
                return
            yield Video.from_tensor(x[0].float().cpu()).frames

    def shift_for(self, latent_frames: int, h: int, w: int) -> float:
        """Returns the sampling shift for latents of this size (the trainer's rule by default)."""
        return shift_for_latent(latent_frames, h, w, self.dit.cfg.patch_size, self.defaults.shift)

    @torch.no_grad()
    def sample_latents(
        self,
        prompt: EncodedPrompt,
        size: tuple[int, int, int],
        generator: torch.Generator,
        cond=None,
        steps: int | None = None,
        guidance: float | None = None,
        x_init: torch.Tensor | None = None,
        start_t: float = 1.0,
        guide_frames: bool = False,
        invert: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:
        """Returns latents `[1, C, T, H/8, W/8]` for size (T latent frames, H, W pixels).

        Known frames of `cond` come back exactly as given; `x_init` + `start_t` < 1 is SDEdit,
        from x_init's inversion with `invert`; `guide_frames`: guidance drops `cond`'s frames
        with the text (sampling.frames_dropped).
        """
        t, H, W = size
        h, w = H // self.space_factor, W // self.space_factor
        shape = (1, self.dit.cfg.in_channels, t, h, w)
        noise = frame_noise(shape, generator, self.defaults.noise_corr).to(self.device)
        with self._autocast():
            z = sample(
                self.dit, noise, prompt.context, prompt.mask, prompt.null_context, prompt.null_mask,
                steps=steps or self.defaults.steps,
                guidance=self.defaults.guidance if guidance is None else guidance,
                shift=self.shift_for(t, h, w), sampler=self.defaults.sampler,
                cond=None if cond is None else cond.to(self.device),
                start_t=start_t, x_init=x_init, guide_frames=guide_frames,
                from_inversion=invert, progress=progress,
            )  # fmt: skip
        return z.float()

    def _metadata(self, p: EncodedPrompt, seed: int, **extra) -> dict:
        meta = {"prompt": p.text, "expanded_prompt": p.expanded, "seed": seed, "model": self.name}
        meta.update(title=p.text, comment=p.expanded)  # what Video.save writes into the file
        return {**meta, **extra}

    # ---- text to video --------------------------------------------------------------------------

    def generate_stream(
        self,
        prompt: str,
        seconds: float | None = None,
        frames: int | None = None,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        expand: bool = True,
        fps: float | None = None,
        progress: bool = True,
    ) -> Stream:
        """Returns the video as a Stream: frames are made window by window as it is read."""
        fps = fps or self.defaults.fps
        w, h = self.fit_size(size)
        n = self.num_frames(seconds, frames, fps)
        p = self.encode_prompt(prompt, expand, seed)
        gen = torch.Generator().manual_seed(seed)
        latents = 1 + (n - 1) // self.time_factor
        chunks = roll(self, p, latents, h, w, gen, steps=steps, guidance=guidance,
                      progress=progress)  # fmt: skip
        return Stream(chunks, fps, w, h, n, self._metadata(p, seed))

    def generate(
        self,
        prompt: str,
        seconds: float | None = None,
        frames: int | None = None,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        expand: bool = True,
        fps: float | None = None,
        progress: bool = True,
    ) -> Video:
        """Returns a video for `prompt`: `frames` (else `seconds` at `fps`) rounded to 1 + 4k,
        `size` (w, h) rounded to the model's multiples; metadata holds both prompts."""
        return self.generate_stream(
            prompt, seconds, frames, size, steps, guidance, seed, expand, fps, progress
        ).to_video()

    def generate_to_file(self, path: str | Path, prompt: str, **kw) -> Path:
        """Returns `path`, written frame by frame as windows finish (memory flat in length)."""
        return self.generate_stream(prompt, **kw).save(path)

    def image(
        self,
        prompt: str,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        expand: bool = True,
        progress: bool = True,
    ) -> Video:
        """Returns a 1-frame video; above 4x the native area it is made at the native size,
        upsampled in latent space and refined (SDEdit) tile by tile, then decoded in tiles."""
        w, h = self.fit_size(size)
        d = self.defaults
        if w * h <= 4 * d.width * d.height:
            return self.generate(prompt, frames=1, size=(w, h), steps=steps, guidance=guidance,
                                 seed=seed, expand=expand, progress=progress)  # fmt: skip
        p = self.encode_prompt(prompt, expand, seed)
        gen = torch.Generator().manual_seed(seed)
        w0, h0 = self.size_for_aspect(w / h)
        z0 = self.sample_latents(p, (1, h0, w0), gen, steps=steps, guidance=guidance)
        sf = self.space_factor
        z_up = F.interpolate(z0[:, :, 0], size=(h // sf, w // sf), mode="bicubic")[:, :, None]
        z = refine_tiled(self, p, z_up, gen, steps, guidance, progress)
        with torch.no_grad(), self._autocast():
            x = self.vae.decode(z)  # tiles itself above cfg.tile_above latent cells
        return Video(Video.from_tensor(x[0].float().cpu()).frames, d.fps, self._metadata(p, seed))

    # ---- frame conditions -----------------------------------------------------------------------

    def animate(
        self,
        image,
        prompt: str,
        seconds: float | None = None,
        frames: int | None = None,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        expand: bool = True,
        fps: float | None = None,
        progress: bool = True,
    ) -> Video:
        """Returns a video whose first frame is the image (fitted to `size`, or to its own
        aspect at the model's area), the rest generated from it and the prompt."""
        img = _as_video(image)
        img = Video(img.frames[:1], img.fps, img.metadata)
        w, h = self.fit_size(size) if size else self.size_for_aspect(img.width / img.height)
        first = img.fit(w, h).frames  # [1, H, W, 3]
        fps = fps or self.defaults.fps
        n = self.num_frames(seconds, frames, fps)
        p = self.encode_prompt(prompt, expand, seed)
        gen = torch.Generator().manual_seed(seed)
        new = roll(self, p, (n - 1) // self.time_factor, h, w, gen, prefix=first, steps=steps,
                   guidance=guidance, progress=progress)  # fmt: skip
        return Video(np.concatenate([first, *new]), fps, self._metadata(p, seed))

    def extend(
        self,
        video,
        prompt: str,
        seconds: float | None = None,
        direction: str = "forward",
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        expand: bool = True,
        progress: bool = True,
    ) -> Video:
        """Returns the video with `seconds` of new frames after its end (forward) or before its
        start (backward); the original frames are in the output unchanged."""
        if direction not in ("forward", "backward"):
            raise UserError(f"direction must be 'forward' or 'backward', got {direction!r}")
        v = self.fit_video(_as_video(video), size, keep=True)
        backward = direction == "backward"
        n = self.new_latents(self.defaults.seconds if seconds is None else seconds, v.fps,
                             first=backward)  # fmt: skip
        p = self.encode_prompt(prompt, expand, seed)
        gen = torch.Generator().manual_seed(seed)
        kw = dict(steps=steps, guidance=guidance, progress=progress)
        if backward:
            suffix = self.suffix_latents(v.frames)
            new = roll(self, p, n, v.height, v.width, gen, suffix=suffix, **kw)
            frames = [*new, v.frames]
        else:
            K = known_frames(v.num_frames, self.defaults.overlap, self.time_factor)
            new = roll(self, p, n, v.height, v.width, gen, prefix=v.frames[-K:], **kw)
            frames = [v.frames, *new]
        return Video(np.concatenate(frames), v.fps, self._metadata(p, seed))

    def suffix_latents(self, frames: np.ndarray) -> torch.Tensor:
        """Returns latents `[1, C, m, h, w]` of the first 4m frames, as the end of a clip.

        The causal VAE encodes a clip's first frame alone and later frames 4 at a time, so a
        suffix must be 4-frame latents: the frames are encoded after one copy of the first
        frame, and that 1-frame latent is dropped (the encoder sees only a few frames back).
        """
        tf = self.time_factor
        m = max(1, min(self.defaults.overlap, len(frames) // tf))
        clip = frames[: tf * m]
        if len(clip) < tf:  # a very short video: hold its first frame before it
            clip = np.concatenate([np.repeat(clip[:1], tf - len(clip), 0), clip])
        return self.encode_frames(np.concatenate([clip[:1], clip]))[:, :, 1:]

    def connect(
        self,
        video_a,
        video_b,
        prompt: str,
        seconds: float | None = None,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        expand: bool = True,
        progress: bool = True,
    ) -> Video:
        """Returns A, a generated transition of about `seconds`, then B (A and B unchanged)."""
        a = self.fit_video(_as_video(video_a), size, keep=True)
        b = _as_video(video_b)
        if (b.width, b.height) != (a.width, a.height):
            notice(f"second video {b.width}x{b.height} fitted to the first's {a.width}x{a.height}")
            b = b.fit(a.width, a.height)
        if not math.isclose(a.fps, b.fps):
            notice(f"the videos' rates differ ({a.fps:g} and {b.fps:g} fps); keeping {a.fps:g}")
        return self._connect(a, b, prompt, seconds, steps, guidance, seed, expand, progress, True)

    def _connect(self, a, b, prompt, seconds, steps, guidance, seed, expand, progress, keep_b):
        n = self.new_latents(seconds, a.fps)
        p = self.encode_prompt(prompt, expand, seed)
        gen = torch.Generator().manual_seed(seed)
        K = known_frames(a.num_frames, self.defaults.overlap, self.time_factor)
        new = roll(self, p, n, a.height, a.width, gen, prefix=a.frames[-K:],
                   suffix=self.suffix_latents(b.frames), steps=steps, guidance=guidance,
                   progress=progress)  # fmt: skip
        frames = [a.frames, *new] + ([b.frames] if keep_b else [])
        return Video(np.concatenate(frames), a.fps, self._metadata(p, seed))

    def loop(
        self,
        prompt: str,
        video=None,
        seconds: float | None = None,
        transition: float | None = None,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        expand: bool = True,
        progress: bool = True,
    ) -> Video:
        """Returns a video whose last frame flows into its first: the video (or one generated
        for `prompt`, `seconds` long) then a transition from its end back to its start."""
        if video is None:
            v = self.generate(prompt, seconds=seconds, size=size, steps=steps, guidance=guidance,
                              seed=seed, expand=expand, progress=progress)  # fmt: skip
        else:
            v = self.fit_video(_as_video(video), size, keep=True)
        return self._connect(v, v, prompt, transition, steps, guidance, seed, expand, progress,
                             False)  # fmt: skip

    # ---- editing ------------------------------------------------------------------------------

    def edit(
        self,
        video,
        prompt: str,
        strength: float = 0.6,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        expand: bool = True,
        invert: bool = False,
        progress: bool = True,
    ) -> Video:
        """Returns the video re-made for `prompt` (SDEdit): strength 0 keeps it (VAE round
        trip), 1 regenerates it; in between the layout and motion survive.

        `invert`: start from the input's own noise (the model's ODE run forward from it to
        `strength`) instead of random noise: more of its layout and motion survive, strength 1
        no longer regenerates it, and the seed changes nothing but the prompt's expansion."""
        if not (isinstance(strength, (int, float)) and 0.0 <= strength <= 1.0):
            raise UserError(f"--strength must be in [0, 1], got {strength}")
        v = self.fit_video(_as_video(video), size, keep=False)
        if v.duration > MAX_SECONDS:
            raise UserError(f"the video is {v.duration:g} s; edit takes at most {MAX_SECONDS:g} s")
        T, tf = v.num_frames, self.time_factor
        pad = (-(T - 1)) % tf  # the VAE takes 1 + 4k frames: repeat the last, cut it off after
        frames = np.concatenate([v.frames, np.repeat(v.frames[-1:], pad, 0)])
        z = self.encode_frames(frames)
        p = self.encode_prompt(prompt, expand, seed)
        gen = torch.Generator().manual_seed(seed)
        z = self.sample_latents(p, (z.shape[2], v.height, v.width), gen, steps=steps,
                                guidance=guidance, x_init=z, start_t=float(strength),
                                invert=invert, progress=progress)  # fmt: skip
        out = np.concatenate(list(self.decode_chunks(z)))[:T]
        meta = self._metadata(p, seed, strength=float(strength), invert=invert)
        return Video(out, v.fps, meta)


def _round_to(v: float, step: int) -> int:
    """Returns the multiple of `step` nearest to v (halves up), within [step, MAX_SIDE]."""
    return max(step, min(MAX_SIDE // step * step, step * math.floor(v / step + 0.5)))


def _as_video(x) -> Video:
    """Returns a Video from a path (read; unreadable -> UserError), a Video or uint8 frames."""
    if isinstance(x, Video):
        return x
    if isinstance(x, np.ndarray):
        return Video(x[None] if x.ndim == 3 else x)
    return Video.read(x)
