"""Frame conditions: a mask over latent frames says which frames are known (kept clean, t = 0).

One mechanism serves image-to-video (first frame known), extend forward (a prefix known),
extend backward (a suffix known), connect two videos (prefix + suffix known) and keyframes
(any frames known). Training and sampling both go through `FrameCondition.apply`, so "known
frames are clean and sit at t = 0" is written exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


def frame_timesteps(t: Tensor, num_frames: int) -> Tensor:
    """Returns per-frame flow times [B, T] from a per-sample t [B] (or passes [B, T] through)."""
    if t.ndim == 1:
        return t[:, None].expand(t.shape[0], num_frames)
    if t.ndim == 2 and t.shape[1] == num_frames:
        return t
    raise ValueError(f"t must be [B] or [B, {num_frames}], got shape {tuple(t.shape)}")


@dataclass
class FrameCondition:
    """Known latent frames: `mask [B, T]` (True = known) and `latents [B, C, T, H, W]`.

    Latents at unknown frames are ignored (constructors fill them with zeros).
    """

    mask: Tensor  # [B, T] bool
    latents: Tensor  # [B, C, T, H, W]

    def __post_init__(self):
        if self.mask.dtype != torch.bool or self.mask.ndim != 2:
            raise ValueError(
                f"mask must be bool [B, T], got {self.mask.dtype} {tuple(self.mask.shape)}"
            )
        if self.latents.ndim != 5:
            raise ValueError(f"latents must be [B, C, T, H, W], got {tuple(self.latents.shape)}")
        b, _, t, _, _ = self.latents.shape
        if tuple(self.mask.shape) != (b, t):
            raise ValueError(
                f"mask {tuple(self.mask.shape)} does not match latents {tuple(self.latents.shape)}"
            )

    # -- constructors: each takes the known latents and the total number of latent frames --

    @classmethod
    def frames(cls, latents: Tensor, indices: list[int], num_frames: int) -> FrameCondition:
        """Returns a condition with `latents [B, C, len(indices), H, W]` known at `indices`."""
        if latents.ndim == 4:  # an image latent [B, C, H, W] is a 1-frame video
            latents = latents[:, :, None]
        if latents.ndim != 5 or latents.shape[2] != len(indices):
            raise ValueError(
                f"latents {tuple(latents.shape)} must be [B, C, {len(indices)}, H, W] "
                f"for indices {list(indices)}"
            )
        bad = [i for i in indices if not -num_frames <= i < num_frames]
        if bad or len({i % num_frames for i in indices}) != len(indices):
            raise ValueError(
                f"indices {list(indices)} must be distinct and within {num_frames} latent frames"
            )
        b, c, _, h, w = latents.shape
        full = latents.new_zeros(b, c, num_frames, h, w)
        mask = torch.zeros(b, num_frames, dtype=torch.bool, device=latents.device)
        idx = [i % num_frames for i in indices]
        full[:, :, idx] = latents
        mask[:, idx] = True
        return cls(mask, full)

    @classmethod
    def first_frame(cls, latents: Tensor, num_frames: int) -> FrameCondition:
        """Returns an image-to-video condition: `latents [B, C, (1,) H, W]` is latent frame 0."""
        return cls.frames(latents, [0], num_frames)

    @classmethod
    def prefix(cls, latents: Tensor, num_frames: int) -> FrameCondition:
        """Returns an extend-forward condition: `latents [B, C, n, H, W]` are the first n frames."""
        return cls.frames(latents, list(range(latents.shape[2])), num_frames)

    @classmethod
    def suffix(cls, latents: Tensor, num_frames: int) -> FrameCondition:
        """Returns an extend-backward condition: `latents [B, C, m, H, W]` are the last m frames."""
        m = latents.shape[2]
        return cls.frames(latents, list(range(num_frames - m, num_frames)), num_frames)

    @classmethod
    def prefix_suffix(cls, head: Tensor, tail: Tensor, num_frames: int) -> FrameCondition:
        """Returns a connect condition: `head` opens the video, `tail` closes it."""
        n, m = head.shape[2], tail.shape[2]
        if n + m > num_frames:
            raise ValueError(f"head ({n}) + tail ({m}) frames exceed {num_frames} latent frames")
        idx = list(range(n)) + list(range(num_frames - m, num_frames))
        return cls.frames(torch.cat([head, tail], dim=2), idx, num_frames)

    # -- the one place the condition touches the diffusion state --

    def apply(self, x_t: Tensor, t_frames: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (x_t with known frames set to their clean latents, t_frames with known at 0)."""
        if x_t.shape != self.latents.shape:
            raise ValueError(
                f"x_t {tuple(x_t.shape)} does not match condition latents "
                f"{tuple(self.latents.shape)}"
            )
        known = self.mask.to(x_t.device)
        x_t = torch.where(known[:, None, :, None, None], self.latents.to(x_t), x_t)
        t_frames = torch.where(known, torch.zeros_like(t_frames), t_frames)
        return x_t, t_frames

    def to(self, *args, **kwargs) -> FrameCondition:
        """Returns the condition with latents moved/cast like `Tensor.to` (the mask stays bool)."""
        latents = self.latents.to(*args, **kwargs)
        return FrameCondition(self.mask.to(latents.device), latents)


# -- random conditions for training --------------------------------------------------------

KINDS = ("none", "first_frame", "prefix", "suffix", "connect", "frames")


@dataclass
class ConditionProbs:
    """Relative probability of each kind of frame condition drawn during training."""

    none: float = 0.4
    first_frame: float = 0.25
    prefix: float = 0.1
    suffix: float = 0.1
    connect: float = 0.1
    frames: float = 0.05

    def weights(self, num_frames: int) -> list[float]:
        """Returns one weight per kind in `KINDS`, zero for kinds `num_frames` cannot hold."""
        w = [getattr(self, f.name) for f in fields(self)]
        if any(v < 0 for v in w) or sum(w) <= 0:
            raise ValueError(
                f"condition probabilities must be >= 0 with a positive sum, got {self}"
            )
        # Every kind but "none" must leave at least one known and one unknown frame;
        # connect needs a known frame at each end plus one in between.
        min_frames = dict(none=1, first_frame=2, prefix=2, suffix=2, connect=3, frames=2)
        return [v if num_frames >= min_frames[k] else 0.0 for k, v in zip(KINDS, w)]


def draw_kinds(
    batch: int, num_frames: int, generator: torch.Generator | None = None, probs=None
) -> list[str]:
    """Returns one condition kind (a name from `KINDS`) per sample."""
    w = torch.tensor((probs or ConditionProbs()).weights(num_frames), dtype=torch.float64)
    if w.sum() == 0:  # e.g. images (1 latent frame) with "none" weighted 0
        return ["none"] * batch
    idx = torch.multinomial(w, batch, replacement=True, generator=generator)
    return [KINDS[i] for i in idx.tolist()]


def random_condition(
    batch: int,
    num_frames: int,
    generator: torch.Generator | None = None,
    probs: ConditionProbs | None = None,
) -> Tensor:
    """Returns a random known-frame mask [B, T] (bool, CPU): one drawn kind per sample.

    Train with `FrameCondition(mask, x0)`: the known frames' latents are the clean ones.
    Lengths are uniform: a prefix/suffix holds 1..T-1 frames, connect splits 2..T-1 known
    frames between the two ends, "frames" marks each frame known with probability 1/2.
    Every kind except "none" leaves at least one known and one unknown frame.
    """
    kinds = draw_kinds(batch, num_frames, generator, probs)
    mask = torch.zeros(batch, num_frames, dtype=torch.bool)
    T = num_frames

    def randint(lo: int, hi: int) -> int:  # inclusive both ends
        return int(torch.randint(lo, hi + 1, (1,), generator=generator))

    for b, kind in enumerate(kinds):
        if kind == "first_frame":
            mask[b, 0] = True
        elif kind == "prefix":
            mask[b, : randint(1, T - 1)] = True
        elif kind == "suffix":
            mask[b, T - randint(1, T - 1) :] = True
        elif kind == "connect":
            known = randint(2, T - 1)
            n = randint(1, known - 1)
            mask[b, :n] = True
            mask[b, T - (known - n) :] = True
        elif kind == "frames":
            row = torch.rand(T, generator=generator) < 0.5
            row[randint(0, T - 1)] = True  # at least one known...
            free = (~row).nonzero().flatten()
            if len(free) == 0:  # ...and at least one unknown
                row[randint(0, T - 1)] = False
            mask[b] = row
    return mask
