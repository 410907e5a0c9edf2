"""Training throughput of a DiT preset: tokens/s, samples/s and model FLOPs utilisation (MFU).

MFU is the DiT's analytic matmul FLOPs per step over the time, divided by the bf16 matmul peak
measured on this machine in this run (the best of a few large bf16 matmuls). So the figure
says how much of what this machine can do in matmuls the training step gets, not a datasheet.

    python benchmarks/train.py [--preset small] [--batch 4] [--frames 33] [--size 128]
        [--patch P] [--steps 3] [--profile]

Latents are those of an 8x VAE (Wan2.1's): `--size 128` gives 16x16 latents, the size the
tiny 4x VAE makes of the bundled model's 64x64 clips. `--patch P` cuts P x P latent patches
instead of the preset's own (`--preset tiny --size 128 --patch 2`: tokens of 8x8 pixels of
those clips instead of 16x16).
"""

from __future__ import annotations

import argparse
import time

import torch

from kinetoscope.models.dit import DiT, dit_config


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    """Returns the best bf16 matmul FLOP/s over `repeats` n x n x n products."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b  # warm-up: oneDNN picks its kernel on the first call
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def step_flops(cfg, batch: int, tokens: int, text_len: int) -> float:
    """Returns the matmul FLOPs of one training step (forward + backward = 3 forwards).

    Linear layers: 2 FLOPs per weight per token forward, so 6 * params * tokens for a step,
    counting each weight on the tokens it is applied to (video tokens for most, text tokens for
    the cross-attention keys/values and the text embedding). Attention: QK^T and AV, each
    2 * Nq * Nk * dim forward.
    """
    d, f, n_layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
    patch = cfg.in_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    per_video_token = n_layers * (4 * d * d + 2 * d * d + 2 * d * f) + patch * d + d * patch
    per_text_token = n_layers * 2 * d * d + cfg.text_dim * d + d * d
    linear = 6 * batch * (per_video_token * tokens + per_text_token * text_len)
    attn_fwd = n_layers * (4 * tokens * tokens * d + 4 * tokens * text_len * d)
    return linear + 3 * batch * attn_fwd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=33, help="video frames (latent: 1 + (F-1)/4)")
    p.add_argument("--size", type=int, default=128, help="frame height = width in pixels")
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--patch", type=int, help="spatial latent patch (default: the preset's)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler summary")
    args = p.parse_args()

    torch.manual_seed(0)
    extra = {"patch_size": (1, args.patch, args.patch)} if args.patch else {}
    cfg = dit_config(args.preset, **extra)
    model = DiT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t_lat, hw = 1 + (args.frames - 1) // 4, args.size // 8
    b = args.batch
    x = torch.randn(b, cfg.in_channels, t_lat, hw, hw)
    ctx = torch.randn(b, args.text_len, cfg.text_dim)
    tokens = t_lat * (hw // cfg.patch_size[1]) * (hw // cfg.patch_size[2])

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = model(x, torch.rand(b), ctx)
        loss = (v.float() - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    peak = matmul_peak()
    step()  # warm-up
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = max(peak, matmul_peak())  # measured before and after: the better of the two
    dt = min(times)
    flops = step_flops(cfg, b, tokens, args.text_len)
    print(f"DiT {args.preset} (patch {cfg.patch_size}): {model.num_params() / 1e6:.1f}M params, "
          f"batch {b} x {tokens} tokens")  # fmt: skip
    print(f"step {dt * 1000:.0f} ms (best of {args.steps}; all: "
          f"{', '.join(f'{t:.2f}' for t in times)} s)")  # fmt: skip
    print(f"tokens/s {b * tokens / dt:.0f}   samples/s {b / dt:.2f}")
    print(f"model FLOPs/step {flops / 1e12:.3f} T   achieved {flops / dt / 1e12:.3f} TFLOP/s")
    mfu = 100 * flops / dt / peak
    print(f"bf16 matmul peak (measured) {peak / 1e12:.3f} TFLOP/s   MFU {mfu:.1f}%")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
