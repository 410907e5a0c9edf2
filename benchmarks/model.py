"""Prints DiT forward tokens/s and VAE encode/decode frames/s, fp32 and bf16 autocast, on this CPU.

    python benchmarks/model.py                     # DiT tiny+small, VAE tiny+wan2.1
    python benchmarks/model.py --dit tiny --vae tiny --frames 9 --size 64

Each figure is the median of `--repeat` timed runs after one warm-up run, under torch.no_grad.
The VAE comes from kinetoscope/models/vae.py and is skipped if that module is missing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kinetoscope.models.dit import DiT, dit_config


def timed(fn, repeat: int) -> float:
    """Return the median wall time in seconds of fn() over `repeat` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def precision(dtype: str):
    """Return the autocast context for 'fp32' (disabled) or 'bf16'."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def bench_dit(preset: str, frames: int, size: int, text_len: int, repeat: int) -> list[str]:
    """Return table rows: DiT forward tokens/s for one preset at a (frames, size) video."""
    torch.manual_seed(0)
    cfg = dit_config(preset, text_len=None)
    model = DiT(cfg).eval()
    t_lat, s_lat = 1 + (frames - 1) // 4, size // 8
    x = torch.randn(1, cfg.in_channels, t_lat, s_lat, s_lat)
    t = torch.rand(1)
    ctx = torch.randn(1, text_len, cfg.text_dim)
    tokens = t_lat * (s_lat // 2) ** 2
    rows = []
    for dtype in ("fp32", "bf16"):
        with torch.no_grad(), precision(dtype):
            sec = timed(lambda: model(x, t, ctx), repeat)  # noqa: B023
        rows.append(
            f"| DiT {preset} ({model.num_params() / 1e6:.1f}M) | {dtype} | latent {t_lat}x{s_lat}x"
            f"{s_lat}, {tokens} tokens | {sec * 1e3:.1f} ms | {tokens / sec:,.0f} tokens/s |"
        )
    return rows


def bench_vae(preset: str, frames: int, size: int, repeat: int) -> list[str]:
    """Return table rows: VAE encode and decode frames/s for one preset."""
    try:
        from kinetoscope.models.vae import VAE
    except ImportError:
        return [f"| VAE {preset} | - | skipped: kinetoscope.models.vae is not available | | |"]
    torch.manual_seed(0)
    vae = VAE.from_preset(preset).eval()
    params = sum(p.numel() for p in vae.parameters()) / 1e6
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    rows = []
    for dtype in ("fp32", "bf16"):
        with torch.no_grad(), precision(dtype):
            z = vae.encode(x)
            enc = timed(lambda: vae.encode(x), repeat)  # noqa: B023
            dec = timed(lambda: vae.decode(z), repeat)  # noqa: B023
        shape = f"{frames}x{size}x{size}"
        rows.append(
            f"| VAE {preset} ({params:.1f}M) encode | {dtype} | {shape} | {enc * 1e3:.0f} ms "
            f"| {frames / enc:.2f} frames/s |"
        )
        rows.append(
            f"| VAE {preset} ({params:.1f}M) decode | {dtype} | {shape} | {dec * 1e3:.0f} ms "
            f"| {frames / dec:.2f} frames/s |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit", nargs="*", default=["tiny", "small"])
    ap.add_argument("--vae", nargs="*", default=["tiny", "wan2.1"])
    ap.add_argument("--frames", type=int, default=17, help="video frames (1 + 4k)")
    ap.add_argument("--size", type=int, default=128, help="square frame size in pixels")
    ap.add_argument("--text-len", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    # One thread by default: on a shared 2-core machine OpenMP barriers between busy cores make
    # small ops 100x slower with 2 threads. Pass --threads N on a machine of your own.
    ap.add_argument("--threads", type=int, default=1, help="0 = torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print("| model | precision | input | time | throughput |")
    print("| --- | --- | --- | --- | --- |")
    for preset in args.dit:
        for row in bench_dit(preset, args.frames, args.size, args.text_len, args.repeat):
            print(row, flush=True)
    for preset in args.vae:
        for row in bench_vae(preset, args.frames, args.size, args.repeat):
            print(row, flush=True)


if __name__ == "__main__":
    main()
