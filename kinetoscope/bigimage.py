"""Large images: the DiT refines an upsampled latent tile by tile, blended where tiles overlap.

The DiT only ever saw native-size frames in training, and full attention over a 2048x2048
latent would need memory quadratic in its 16k tokens; running it on overlapping tiles of
about the native size and averaging the velocities with linear ramps (as the VAE blends its
tiles) keeps every call in distribution and memory bounded by the tile.
"""

from __future__ import annotations

import torch

from kinetoscope.diffusion.sampling import guided_velocity, sample_fn, timesteps
from kinetoscope.models.vae import _ramp, _spans


@torch.no_grad()
def refine_tiled(pipe, p, z, gen, steps=None, guidance=None, progress=True, batch: int = 32):
    """Returns latents `[1, C, 1, h, w]`: z noised to `refine_strength` and denoised (SDEdit),
    each velocity computed on `refine_tile`-sized tiles, `batch` tiles per DiT call."""
    d = pipe.defaults
    tile = min(d.refine_tile, *z.shape[-2:])
    overlap = tile // 4
    g = d.guidance if guidance is None else guidance
    fns = {}  # CFG velocity per tile batch size: the prompt expanded to n rows

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x [1, C, 1, h, w]
        h, w = x.shape[-2:]
        tiles = [(a, th, b, tw) for a, th in _spans(h, tile, overlap)
                 for b, tw in _spans(w, tile, overlap)]  # fmt: skip
        out, weight = torch.zeros_like(x, dtype=torch.float32), x.new_zeros(h, w).float()
        for i in range(0, len(tiles), batch):
            group = tiles[i : i + batch]
            n = len(group)
            if n not in fns:
                ctx, mask = p.context.expand(n, -1, -1), p.mask.expand(n, -1)
                fns[n] = guided_velocity(pipe.dit, ctx, mask, p.null_context, p.null_mask, g)
            xs = torch.cat([x[..., a : a + th, b : b + tw] for a, th, b, tw in group])
            v = fns[n](xs, t.expand(n, -1)).float()  # [n, C, 1, th, tw]
            for (a, th, b, tw), vi in zip(group, v):
                ramp_y = _ramp(th, overlap, a > 0, a + th < h)[:, None]
                wt = (ramp_y * _ramp(tw, overlap, b > 0, b + tw < w)[None]).to(x.device)
                out[0, ..., a : a + th, b : b + tw] += vi * wt
                weight[a : a + th, b : b + tw] += wt
        return out / weight

    s = d.refine_strength
    noise = torch.randn(z.shape, generator=gen).to(pipe.device)
    x = (1 - s) * z + s * noise
    ts = timesteps(steps or d.steps, pipe.shift_for(1, tile, tile), s)
    with pipe._autocast():
        return sample_fn(velocity, x, ts, d.sampler, progress=progress).float()
