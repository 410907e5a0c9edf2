"""Image quality metrics on videos: PSNR and SSIM (shared by VAE training and evaluation).

Both accept a `Video`, uint8 arrays `[T, H, W, 3]` / `[H, W, 3]`, or float tensors in [-1, 1]
laid out `[3, H, W]`, `[3, T, H, W]` or `[B, 3, T, H, W]`; the two inputs may differ in kind.
Pixels are compared on a [0, 1] scale, so the numbers match for uint8 and tensor inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a, b) -> float:
    """Returns the peak signal-to-noise ratio in dB over all pixels (inf if identical)."""
    x, y = _frames(a), _frames(b)
    _check_same(x, y)
    mse = (x - y).square().mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(a, b, window: int = 11, sigma: float = 1.5) -> float:
    """Returns the mean structural similarity (Wang et al. 2004) over frames and channels.

    Gaussian window (11, sigma 1.5), constants K1=0.01, K2=0.03, no padding; frames smaller
    than the window use a window as large as the frame.
    """
    x, y = _frames(a), _frames(b)  # [N, 3, H, W] in [0, 1]
    _check_same(x, y)
    window = min(window, x.shape[-2], x.shape[-1])
    g = torch.exp(-((torch.arange(window, dtype=x.dtype) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)
    blur = lambda t: F.conv2d(t, kernel, groups=x.shape[1])
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    )
    return s.mean().item()


def _frames(v) -> torch.Tensor:
    """Returns float64 `[N, 3, H, W]` in [0, 1] from a Video, uint8 array or [-1, 1] tensor."""
    if hasattr(v, "frames") and isinstance(v.frames, np.ndarray):
        v = v.frames
    if isinstance(v, np.ndarray):
        if v.dtype != np.uint8 or v.shape[-1] != 3 or v.ndim not in (3, 4):
            raise ValueError(
                f"arrays must be uint8 [T, H, W, 3] or [H, W, 3], got {v.dtype} {list(v.shape)}"
            )
        t = torch.from_numpy(np.ascontiguousarray(v)).double() / 255.0
        return t.reshape(-1, *t.shape[-3:]).permute(0, 3, 1, 2)  # [N, 3, H, W]
    if isinstance(v, torch.Tensor):
        t = v.detach().to("cpu", torch.float64)
        t = t / 255.0 if v.dtype == torch.uint8 else (t.clamp(-1, 1) + 1) / 2
        if t.ndim == 3 and t.shape[0] == 3:
            return t[None]
        if t.ndim == 4 and t.shape[0] == 3:
            return t.permute(1, 0, 2, 3)  # [3, T, H, W] -> [T, 3, H, W]
        if t.ndim == 5 and t.shape[1] == 3:
            return t.permute(0, 2, 1, 3, 4).reshape(-1, 3, *t.shape[-2:])
        raise ValueError(
            f"tensors must be [3, H, W], [3, T, H, W] or [B, 3, T, H, W], got {list(t.shape)}"
        )
    raise ValueError(f"expected a Video, uint8 array or tensor, got {type(v).__name__}")


def _check_same(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(
            f"videos differ in shape: {list(x.shape)} vs {list(y.shape)} ([N, 3, H, W])"
        )
