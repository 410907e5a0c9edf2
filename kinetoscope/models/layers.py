"""Pure tensor math shared by the models: norms, 3D RoPE, attention, timestep embedding, adaLN.

Everything that is sensitive to precision (norm statistics, RoPE angles, the sinusoidal timestep
embedding) is computed in float32 here even under bf16 autocast; the caller casts back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain, statistics in float32 (Wan2.1's WanRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # Wan casts back before the gain; keeping that order keeps bf16 results bit-compatible.
        return y.type_as(x) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype; returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Return `x * (1 + scale) + shift` in float32, one (shift, scale) per frame.

    x: [B, N, D] tokens ordered frame-major; shift, scale: [B, F, D] with F dividing N (F = 1 is
    one vector for every token, F = frames gives per-frame timesteps).
    """
    f = shift.shape[1]
    x = x.float().unflatten(1, (f, -1))  # [B, F, N/F, D]
    x = x * (1 + scale.float().unsqueeze(2)) + shift.float().unsqueeze(2)
    return x.flatten(1, 2)  # [B, N, D]


def pool_text(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Returns the mean and the max of text features h [B, L, D] over their mask [B, L] (None:
    every token), float32 [B, 2D]. A word is a few tokens of a long caption: a mean alone
    dilutes it, the max keeps it. A row with no token gives zeros."""
    if mask is None:
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    h = h.float()
    mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    top = h.masked_fill(~mask[..., None], float("-inf")).amax(1)
    top = torch.where(mask.any(1, keepdim=True), top, torch.zeros_like(top))
    return torch.cat([mean, top], -1)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Return `x + y * gate` (adaLN-zero's gated residual), summed in float32, in x's dtype.

    x, y: [B, N, D]; gate: [B, F, D] broadcast over each frame's N/F tokens like `modulate`.
    """
    f = gate.shape[1]
    y = y.float().unflatten(1, (f, -1)) * gate.float().unsqueeze(2)  # [B, F, N/F, D]
    return (x.float() + y.flatten(1, 2)).type_as(x)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Return the sinusoidal embedding [N, dim] (cos half first, as Wan2.1) of timesteps t [N].

    t is on the model's scale (Wan: 0..1000). Angles are formed in float64 where the device allows
    it because t * freq reaches ~1000 rad, where float32 loses ~1e-4 of phase.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding wants t of shape [N], got {tuple(t.shape)}")
    half = dim // 2
    wide = torch.float32 if t.device.type == "mps" else torch.float64
    freqs = torch.pow(max_period, -torch.arange(half, dtype=wide, device=t.device) / half)
    angles = torch.outer(t.to(wide), freqs)  # [N, half]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Return how Wan2.1 splits a head's channels across (time, height, width) for 3D RoPE."""
    if head_dim % 2:
        raise ValueError(f"3D RoPE needs an even head dim, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_freqs_3d(
    head_dim: int,
    grid: tuple[int, int, int],
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (cos, sin), each [T*H*W, head_dim/2] float32, for the token grid (T, H, W).

    Built for the actual grid on every call, so any duration, size and aspect works: there is no
    position table with a maximum size. Channel pairs are split time | height | width as in Wan2.1.
    """
    wide = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
    angles = []
    for axis, (n, d) in enumerate(zip(grid, rope_axis_dims(head_dim))):
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=wide, device=device) / d)  # [d/2]
        a = torch.outer(torch.arange(n, dtype=wide, device=device), inv)  # [n, d/2]
        shape = [1, 1, 1, d // 2]
        shape[axis] = n
        angles.append(a.view(shape).expand(*grid, d // 2))
    angle = torch.cat(angles, dim=-1).flatten(0, 2)  # [T*H*W, head_dim/2]
    return angle.cos().float(), angle.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Return x [B, N, heads, head_dim] with interleaved channel pairs rotated by (cos, sin).

    cos, sin: [N, head_dim/2] from `rope_freqs_3d`.

    Computed in float32; the result is float32 (the caller casts for attention).
    """
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each [B, N, heads, head_dim/2]
    cos, sin = cos[:, None, :], sin[:, None, :]  # [N, 1, head_dim/2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Return softmax attention [B, N, heads*head_dim] of q [B, N, h, d] over k, v [B, L, h, d].

    key_mask: [B, L] bool, True = attend (key padding). Every row needs at least one True key.
    """
    dtype = v.dtype
    q, k, v = (z.to(dtype).transpose(1, 2) for z in (q, k, v))  # [B, h, *, d]
    mask = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, h, N, d]
    return out.transpose(1, 2).flatten(2)


def check_key_mask(mask: torch.Tensor | None, batch: int, length: int, name: str) -> None:
    """Raise ValueError unless mask is None or bool [batch, length] with a True in every row."""
    if mask is None:
        return
    if mask.shape != (batch, length) or mask.dtype != torch.bool:
        raise ValueError(
            f"{name} must be bool [B={batch}, L={length}], got {mask.dtype} {tuple(mask.shape)}"
        )
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{name} rows {empty} have no True entry (nothing to attend to)")
