"""Where the objects are, on the latent and token grids: the renderer's per-shape coverage
pooled as the causal VAE groups frames, and the shape head's loss that reads it.

The trainer's object weight, pairs and shape map use these; ShapeWorld's data set renders the
coverage with each clip when one of them is on (kinetoscope/data/shapeworld.py).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from kinetoscope.diffusion.flow import masked_mean


def latent_coverage(cover: torch.Tensor, latent: tuple[int, int, int]) -> torch.Tensor:
    """Returns the objects' coverage [B, 1, t, h, w] of each latent position, in 0..1.

    `cover` [B, T, H, W] (the renderer's mask, 0..1) is averaged over each latent
    position's H/h x W/w pixels; in time the causal VAE gives frame 0 its own latent frame and
    each later latent frame a group of (T - 1) / (t - 1) frames, of which the most is kept (an
    object anywhere in the group makes the position one to get right).
    """
    t_lat, h, w = latent
    b, frames, height, width = cover.shape
    if height % h or width % w or (t_lat > 1 and (frames - 1) % (t_lat - 1)) or frames < t_lat:
        raise ValueError(f"coverage {tuple(cover.shape)} does not map onto latent {latent}")
    c = F.avg_pool2d(cover.float().flatten(0, 1)[:, None], (height // h, width // w))
    c = c.view(b, frames, h, w)
    head = c[:, :1]
    if t_lat > 1:
        rest = c[:, 1:].view(b, t_lat - 1, (frames - 1) // (t_lat - 1), h, w).amax(2)
        head = torch.cat([head, rest], 1)
    return head[:, None]  # [B, 1, t, h, w]


def shape_map(cover: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Returns each token's shape map [B, 1 + S, t, h, w]: the share of its pixels that are
    background and that each shape covers (summing to 1), from the renderer's per-shape
    coverage `cover` [B, S, T, H, W] (0..1) on a token grid `grid` (t, h, w) (each token's
    pixels averaged, the most of its frames kept, as `latent_coverage` does)."""
    b, s = cover.shape[:2]
    shapes = latent_coverage(cover.flatten(0, 1), grid).view(b, s, *grid)
    background = (1 - shapes.sum(1, keepdim=True)).clamp(min=0)
    both = torch.cat([background, shapes], 1)
    return both / both.sum(1, keepdim=True)  # where shapes overlap, their shares sum past 1


def shape_map_loss(logits: torch.Tensor, target: torch.Tensor, unknown: torch.Tensor):
    """Returns the shape head's loss over the frames in `unknown` [B, t]: the soft cross-entropy
    of its `logits` [B, N, K] (N = t*h*w tokens, background first) against the shape map
    `target` [B, K, t, h, w], averaged over the tokens, plus the cross-entropy of which shape
    (the shapes' logits alone against the shapes' shares) averaged over the objects, each token
    weighed by its object share. Objects are a few percent of the tokens: in the first term
    which shape they are is drowned by where the background is, and it is what the head is for.
    """
    b, grid = target.shape[0], target.shape[2:]
    want = target.flatten(2).transpose(1, 2)  # [B, N, K], tokens in (t h w) order
    logits = logits.float()
    ce = -(want * torch.log_softmax(logits, -1)).sum(-1)  # [B, N]
    obj = want[..., 1:].sum(-1)  # [B, N] the token's object share
    which = want[..., 1:] / obj[..., None].clamp(min=1e-6)
    ce_shape = -(which * torch.log_softmax(logits[..., 1:], -1)).sum(-1)
    on_grid = lambda x: x.view(b, 1, *grid)  # [B, 1, t, h, w], as masked_mean takes it
    return masked_mean(on_grid(ce), unknown) + masked_mean(on_grid(ce_shape), unknown, on_grid(obj))
