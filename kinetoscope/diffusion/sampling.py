"""Samplers for flow matching: Euler and DPM-Solver++(2M), classifier-free guidance, SDEdit.

Sampling integrates dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) on a grid of times.
`sample_fn` is the bare ODE loop over any `velocity_fn(x, t_frames) -> v`; `sample` wires in a
model, classifier-free guidance, frame conditions and SDEdit starts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kinetoscope.diffusion.conditioning import FrameCondition
from kinetoscope.diffusion.flow import shift_t, unshift_t

SAMPLERS = ("euler", "dpm++2m")

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x [B,C,T,H,W], t_frames [B,T]) -> v


def timesteps(steps: int, shift: float = 1.0, start_t: float = 1.0) -> Tensor:
    """Returns the time grid [steps + 1] (float64), from `start_t` down to exactly 0.

    Uniform in the unshifted time u, then shifted: shift > 1 spends more steps at high noise.
    An SDEdit start (`start_t` < 1) spends all `steps` between start_t and 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= start_t <= 1.0:
        raise ValueError(f"start_t must be in [0, 1], got {start_t}")
    u = torch.linspace(unshift_t(start_t, shift), 0.0, steps + 1, dtype=torch.float64)
    t = shift_t(u, shift)
    t[0], t[-1] = start_t, 0.0  # exact ends, whatever the rounding
    return t


def _lam(t: float) -> float:
    """Returns the log signal-to-noise ratio log((1 - t) / t) of x_t (-inf at t=1, inf at t=0)."""
    if t <= 0.0:
        return math.inf
    if t >= 1.0:
        return -math.inf
    return math.log((1.0 - t) / t)


def sample_fn(
    velocity_fn: VelocityFn,
    x: Tensor,
    timesteps: Tensor,
    sampler: str = "euler",
    cond: FrameCondition | None = None,
    progress: bool = True,
) -> Tensor:
    """Returns x at the grid's last time (t = 0: the sample), starting from x at timesteps[0].

    x: [B, C, T, H, W]. With `cond`, known frames are reset to their clean latents before every
    model call (seen at t = 0) and in the output, which therefore equals them exactly.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    ts = [float(v) for v in timesteps]
    B, T = x.shape[0], x.shape[2]
    x0_prev, h_prev = None, None  # DPM-Solver++(2M) memory: last x0 estimate and step size
    for i in tqdm(range(len(ts) - 1), desc=sampler, disable=not progress, leave=False):
        t, t_next = ts[i], ts[i + 1]
        if t_next == t:  # zero-length step (e.g. an SDEdit start at t = 0): nothing to do
            continue
        t_frames = torch.full((B, T), t, dtype=x.dtype, device=x.device)
        if cond is not None:
            x, t_frames = cond.apply(x, t_frames)
        v = velocity_fn(x, t_frames).to(x.dtype)
        if sampler == "euler":
            x = x + (t_next - t) * v
            continue
        # DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) with alpha_t = 1 - t, sigma_t = t. It steps
        # the data estimate x0 = x - t v exactly through the linear part of the ODE; its first-
        # order step is algebraically the Euler step, so 2M = Euler + a correction that
        # extrapolates x0 linearly in lambda = log((1 - t) / t) from the previous step.
        x0 = x - t * v
        h = _lam(t_next) - _lam(t)
        d = x0
        if x0_prev is not None and t_next > 0:  # the last step (to t = 0) stays first-order
            r = h_prev / h  # inf after a step from t = 1 (lambda = -inf): first-order again
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (t_next / t) * x - (1 - t_next) * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    if cond is not None:
        x, _ = cond.apply(x, torch.zeros(B, T, dtype=x.dtype, device=x.device))
    return x


def with_context_cache(model) -> Callable:
    """Returns `model` for calls that all share one context: a model whose forward takes
    `cache` (the DiT) gets one dict for all of them, so the context's own work (text embedding,
    cross-attention keys and values) is done once, not once per step."""
    if "cache" not in inspect.signature(getattr(model, "forward", model)).parameters:
        return model
    cache = {}
    return lambda x, t, context, mask: model(x, t, context, mask, cache=cache)


def guided_velocity(
    model,
    context: Tensor,
    context_mask: Tensor | None = None,
    null_context: Tensor | None = None,
    null_mask: Tensor | None = None,
    guidance: float = 1.0,
    batch_cfg: bool = True,
    uncond_input: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
) -> VelocityFn:
    """Returns velocity_fn(x, t_frames) with classifier-free guidance v_u + g (v_c - v_u).

    context [B, L, D], null_context [B or 1, L0, D] (the encoded ""). With `batch_cfg`, the
    conditional and unconditional passes share one forward of batch 2B (contexts padded to one
    length, padding masked out); guidance 1 skips the unconditional pass entirely.
    `uncond_input(x, t) -> (x, t)` gives the unconditional pass its own input (see
    `frames_dropped`); by default it sees the same x and t as the conditional one.
    """
    if guidance == 1.0:
        model = with_context_cache(model)
        return lambda x, t: model(x, t, context, context_mask)
    if null_context is None:
        raise ValueError(f"guidance {guidance} needs null_context (the encoded empty prompt)")
    B, L, _ = context.shape
    if context_mask is None:
        context_mask = torch.ones(B, L, dtype=torch.bool, device=context.device)
    if null_mask is None:
        null_mask = torch.ones(null_context.shape[:2], dtype=torch.bool, device=context.device)
    null_context = null_context.expand(B, -1, -1)
    null_mask = null_mask.expand(B, -1)

    if batch_cfg:
        L = max(L, null_context.shape[1])

        def pad(c: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
            n = L - c.shape[1]
            return torch.nn.functional.pad(c, (0, 0, 0, n)), torch.nn.functional.pad(m, (0, n))

        (c, m), (nc, nm) = pad(context, context_mask), pad(null_context, null_mask)
        both_context, both_mask = torch.cat([c, nc]), torch.cat([m, nm])  # [2B, L, D], [2B, L]
        joint = with_context_cache(model)

        def both(x: Tensor, t: Tensor, xu: Tensor, tu: Tensor) -> tuple[Tensor, Tensor]:
            v = joint(torch.cat([x, xu]), torch.cat([t, tu]), both_context, both_mask)
            return v.chunk(2)

    else:
        cond, uncond = with_context_cache(model), with_context_cache(model)

        def both(x: Tensor, t: Tensor, xu: Tensor, tu: Tensor) -> tuple[Tensor, Tensor]:
            return cond(x, t, context, context_mask), uncond(xu, tu, null_context, null_mask)

    def velocity_fn(x: Tensor, t: Tensor) -> Tensor:
        xu, tu = (x, t) if uncond_input is None else uncond_input(x, t)
        v_c, v_u = (v.float() for v in both(x, t, xu, tu))
        return v_u + guidance * (v_c - v_u)

    return velocity_fn


def frames_dropped(cond: FrameCondition, noise: Tensor) -> Callable:
    """Returns uncond_input(x, t_frames) for guidance that drops the known frames with the text.

    The unconditional pass then sees every frame at the step's time t, the known ones noised
    as training noises them, x_t = (1 - t) latents + t noise (with the sampler's own noise), as
    in training's unconditioned clips; guidance then pushes the new frames toward what both the
    text and the known frames imply (Stable Video Diffusion drops its frame condition with the
    text the same way).
    """
    known = cond.mask.to(noise.device)[:, None, :, None, None]  # [B, 1, T, 1, 1]

    def uncond_input(x: Tensor, t_frames: Tensor) -> tuple[Tensor, Tensor]:
        t = t_frames.amax(dim=1, keepdim=True).expand_as(t_frames)  # the unknown frames' time
        s = t[:, None, :, None, None].to(x)
        noised = (1 - s) * cond.latents.to(x) + s * noise.to(x)
        return torch.where(known, noised, x), t

    return uncond_input


@torch.no_grad()
def invert(
    model,
    x0: Tensor,
    context: Tensor,
    context_mask: Tensor | None = None,
    *,
    end_t: float,
    steps: int = 30,
    shift: float = 1.0,
    progress: bool = True,
) -> Tensor:
    """Returns x at flow time `end_t`, reached from clean latents `x0` [B, C, T, H, W] by running
    the model's ODE forward in time (Euler, no guidance) on the grid `sample` walks back: the
    input's own noise, from which sampling returns close to x0 (DDIM inversion, Song et al.
    2021, for flow matching). SDEdit's random noise redraws what it covers instead."""
    x = x0.to(torch.promote_types(x0.dtype, torch.float32))
    ts = timesteps(steps, shift, end_t).flip(0)  # Euler steps forward in time just as well
    return sample_fn(guided_velocity(model, context, context_mask), x, ts, "euler", None, progress)


def sample(
    model,
    noise: Tensor,
    context: Tensor,
    context_mask: Tensor | None = None,
    null_context: Tensor | None = None,
    null_mask: Tensor | None = None,
    *,
    steps: int = 30,
    guidance: float = 1.0,
    shift: float = 1.0,
    sampler: str = "euler",
    cond: FrameCondition | None = None,
    start_t: float = 1.0,
    x_init: Tensor | None = None,
    batch_cfg: bool = True,
    guide_frames: bool = False,
    from_inversion: bool = False,
    progress: bool = True,
) -> Tensor:
    """Returns sampled latents x0 [B, C, T, H, W] (fp32 or wider) from `noise` of that shape.

    `model(x, t_frames, context, context_mask) -> v` as in the DiT contract (a model whose
    forward also takes `cache` gets one per context: see `with_context_cache`). SDEdit: with
    `x_init` (clean latents) and `start_t` = s < 1, the input is noised to
    x_s = (1 - s) x_init + s noise and denoised from there; s = 0 returns x_init, s = 1 is plain
    sampling from `noise`. `from_inversion`: SDEdit from x_init's own noise instead, the
    unconditional model's ODE run forward from x_init to `start_t` (`invert`; `noise` unused).
    `guide_frames`: the unconditional pass drops `cond`'s known frames too (`frames_dropped`),
    so guidance strengthens them as it strengthens the text.
    """
    if start_t < 1.0 and x_init is None:
        raise ValueError(f"start_t={start_t} < 1 needs x_init (the latents to edit)")
    x = noise.to(torch.promote_types(noise.dtype, torch.float32))
    if x_init is not None:
        if x_init.shape != noise.shape:
            raise ValueError(f"x_init {tuple(x_init.shape)} must match noise {tuple(noise.shape)}")
        if not from_inversion:
            x = (1 - start_t) * x_init.to(x) + start_t * x
        elif null_context is None:
            raise ValueError("from_inversion needs null_context (the encoded empty prompt)")
        else:
            B = x.shape[0]
            x = invert(model, x_init, null_context.expand(B, -1, -1),
                       None if null_mask is None else null_mask.expand(B, -1),
                       end_t=start_t, steps=steps, shift=shift, progress=progress)  # fmt: skip
    drop = frames_dropped(cond, noise) if guide_frames and cond is not None else None
    velocity_fn = guided_velocity(
        model, context, context_mask, null_context, null_mask, guidance, batch_cfg, drop
    )
    ts = timesteps(steps, shift, start_t)
    return sample_fn(velocity_fn, x, ts, sampler=sampler, cond=cond, progress=progress)
