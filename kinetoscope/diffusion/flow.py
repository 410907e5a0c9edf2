"""Rectified flow: noising, training timesteps, the resolution shift and the velocity loss.

The path from data to noise is a straight line, `x_t = (1 - t) x0 + t eps`, so its velocity
`d x_t / dt = eps - x0` is what the model learns to predict. Sampling integrates it back from
t = 1 (noise) to t = 0 (data); see sampling.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kinetoscope.diffusion.conditioning import FrameCondition, frame_timesteps


def interpolate(x0: Tensor, eps: Tensor, t_frames: Tensor) -> Tensor:
    """Returns x_t = (1 - t) x0 + t eps for per-frame times `t_frames [B, T]`."""
    t = t_frames[:, None, :, None, None].to(x0.dtype)  # [B, 1, T, 1, 1]
    return (1 - t) * x0 + t * eps


def frame_noise(
    shape: tuple[int, ...], generator: torch.Generator | None = None, corr: float = 0.0
) -> Tensor:
    """Returns N(0, 1) noise of `shape` [B, C, T, H, W] (float32, on CPU) whose latent frames
    are correlated by `corr`: each frame is sqrt(corr) x one draw all frames share plus
    sqrt(1 - corr) x its own (PYoCo's mixed noise prior, Ge et al. 2023), so that the noise,
    like the video, is much the same from frame to frame. `corr` 0 draws exactly what
    `torch.randn(shape, generator=generator)` draws. Training and sampling must use the same.
    """
    if not 0.0 <= corr < 1.0:
        raise ValueError(f"noise correlation must be in [0, 1), got {corr}")
    x = torch.randn(shape, generator=generator, dtype=torch.float32)
    if corr:
        shared = torch.randn((*shape[:2], 1, *shape[3:]), generator=generator, dtype=torch.float32)
        x = math.sqrt(corr) * shared + math.sqrt(1 - corr) * x
    return x


def sample_t(
    batch: int,
    generator: torch.Generator | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Returns training times t [B] in (0, 1), logit-normal: sigmoid(N(mean, std^2)).

    Drawn on CPU with `generator` (reproducible on any device), then moved. The logit-normal
    puts most weight on middle times, where the velocity is hardest to predict (SD3, §3.1).
    """
    u = torch.randn(batch, generator=generator, dtype=torch.float32) * std + mean
    return torch.sigmoid(u).to(device)


def shift_t(t: Tensor | float, shift: float) -> Tensor | float:
    """Returns t moved towards noise: shift * t / (1 + (shift - 1) * t); shift = 1 is identity.

    More tokens carry more redundant signal, so the same t destroys less of the image; shifting
    spends more time (in training and sampling) at high noise to compensate (SD3 §5.3.2, Wan).
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def unshift_t(t: Tensor | float, shift: float) -> Tensor | float:
    """Returns u with shift_t(u, shift) == t (the inverse of `shift_t`)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return t / (shift - (shift - 1) * t)


def shift_for_tokens(
    num_tokens: int,
    base_tokens: int = 4096,
    base_shift: float = 3.0,
    min_shift: float = 1.0,
    max_shift: float = 12.0,
) -> float:
    """Returns the timestep shift for a latent of `num_tokens` tokens: the SD3 sqrt rule.

    SD3 §5.3.2: going from n to m tokens, shifting t by sqrt(m / n) keeps the signal-to-noise
    seen per token the same. The anchor (`base_tokens` tokens use `base_shift`) defaults to SD3's
    1024^2 images (64x64 = 4096 tokens at shift 3.0). Clamped to [min_shift, max_shift]: tiny
    latents get no shift; Wan2.1 480p (32760 tokens) would get 8.5.
    """
    if num_tokens <= 0 or base_tokens <= 0:
        raise ValueError(f"token counts must be > 0, got {num_tokens} and {base_tokens}")
    shift = base_shift * math.sqrt(num_tokens / base_tokens)
    return float(min(max(shift, min_shift), max_shift))


def shift_for_latent(frames: int, h: int, w: int, patch, shift: float | None = None) -> float:
    """Returns `shift` when set, else `shift_for_tokens` of the DiT tokens of a latent of
    `frames` x h x w cut in `patch`es (t, h, w): the one rule training and sampling share."""
    if shift:
        return shift
    _, ph, pw = patch
    return shift_for_tokens(frames * (h // ph) * (w // pw))


def flow_loss(
    model,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    context: Tensor,
    context_mask: Tensor | None = None,
    cond: FrameCondition | None = None,
    temporal_weight: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Returns the fp32 mean squared velocity error over unknown frames (a scalar).

    x0, noise: [B, C, T, H, W]; t: [B] (or per-frame [B, T]). `model(x_t, t_frames, context,
    context_mask)` predicts `noise - x0`. Known frames of `cond` enter clean at t = 0 and are
    left out of the mean, so the model is never trained to "predict" what it is given.

    `temporal_weight` adds that weight times the mean squared *change* of the error from one
    latent frame to the next (pairs of unknown frames): an error every frame shares costs
    nothing more, one that flickers from frame to frame up to 1 + 4 x the weight as much, so
    the loss stresses what moves over what stays (the background, most of the pixels).

    `weight` (broadcastable to [B, 1, T, H, W], >= 0) weighs each latent position's squared
    error: the mean becomes sum(weight x error^2) / sum(weight) over unknown frames (a weight
    of ones gives the plain mean). The temporal term stays unweighted.
    """
    err, unknown = velocity_error(model, x0, t, noise, context, context_mask, cond)
    return error_loss(err, unknown, temporal_weight, weight)


def velocity_error(
    model,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    context: Tensor,
    context_mask: Tensor | None = None,
    cond: FrameCondition | None = None,
) -> tuple[Tensor, Tensor]:
    """Returns (the model's fp32 velocity error [B, C, T, H, W], unknown frames [B, T] bool):
    the prediction at x_t minus `noise - x0`, as `flow_loss` describes."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match x0 {tuple(x0.shape)}")
    t_frames = frame_timesteps(t, x0.shape[2])  # [B, T]
    x_t = interpolate(x0, noise, t_frames)
    unknown = torch.ones_like(t_frames, dtype=torch.bool)
    if cond is not None:
        x_t, t_frames = cond.apply(x_t, t_frames)
        unknown = ~cond.mask.to(x0.device)
    v = model(x_t, t_frames, context, context_mask)
    return v.float() - (noise.float() - x0.float()), unknown


def error_loss(
    err: Tensor, unknown: Tensor, temporal_weight: float = 0.0, weight: Tensor | None = None
) -> Tensor:
    """Returns `flow_loss` of a velocity error `err` [B, C, T, H, W] over `unknown` [B, T]."""
    loss = masked_mean(err.square(), unknown, weight)
    if temporal_weight and err.shape[2] > 1:
        both = unknown[:, 1:] & unknown[:, :-1]  # [B, T - 1]: pairs of unknown frames
        known_zero = torch.where(unknown[:, None, :, None, None], err, 0.0)  # no NaN leaks in
        change = known_zero[:, :, 1:] - known_zero[:, :, :-1]
        loss = loss + temporal_weight * masked_mean(change.square(), both)
    return loss


def masked_mean(sq: Tensor, frames: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of `sq` [B, C, T, H, W] over the frames where `frames` [B, T] is True (0 if none),
    weighted by `weight` (broadcastable to [B, 1, T, H, W]) when given."""
    w = frames[:, None, :, None, None]  # [B, 1, T, 1, 1]
    # Masked mean: torch.where (not a multiply) so a NaN on a masked frame cannot leak in.
    if weight is not None:
        weight = weight.float().expand(sq.shape[0], 1, *sq.shape[2:])
        total = torch.where(w, sq * weight, torch.zeros_like(sq)).sum()
        count = torch.where(w, weight, torch.zeros_like(weight)).sum() * sq.shape[1]
        return total / count.clamp(min=1e-12)
    per_frame = sq.numel() // (sq.shape[0] * sq.shape[2])  # C * H * W
    total = torch.where(w, sq, torch.zeros_like(sq)).sum()
    return total / (w.sum() * per_frame).clamp(min=1)
