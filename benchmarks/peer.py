"""Side-by-side timing: kinetoscope vs the reference (diffusers' Wan2.1) on the same weights.

    python benchmarks/peer.py            # CPU, a small config, fp32 and bf16, 1 thread, medians
    python benchmarks/peer.py --gpu      # the real 1.3B shape at 480x832, 81 frames (random
                                         # weights): seconds per denoising step + peak memory

Both implementations are built in one process from one set of random weights: the reference
is diffusers' WanTransformer3DModel + AutoencoderKLWan (+ transformers' UMT5), saved as a
diffusers folder that our loader (kinetoscope.interop.wan) reads. Each figure is the median of
`--reps` runs after one warm-up. The output columns say how far our result is from the
reference's (relative L2 error), so a speed-up never hides a change of the math.

The reference runs the way diffusers' WanPipeline runs it: bf16 = every model `.to(bf16)`,
CFG as two forwards per step. Ours runs as the Pipeline does: bf16 = autocast with bf16 DiT
weights and an fp32 VAE, CFG batched into one forward of batch 2.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WORDS = ["a", "red", "circle", "moves", "left", "over", "the", "sea"]


def median_time(fn, reps: int, sync=lambda: None) -> float:
    """Returns the median wall time of fn() over `reps` runs after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rel_err(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def build_reference(dim_heads=(6, 64), layers=4, text_dim=64, vae_dim=32):
    """Returns (transformer, vae, text_encoder, tokenizer) of diffusers/transformers, random."""
    import diffusers
    import tokenizers
    import transformers

    torch.manual_seed(0)
    heads, head_dim = dim_heads
    transformer = diffusers.WanTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16, out_channels=16,
        text_dim=text_dim, ffn_dim=4 * heads * head_dim, num_layers=layers,
    )  # fmt: skip
    vae = diffusers.AutoencoderKLWan(base_dim=vae_dim, z_dim=16, num_res_blocks=2)
    for model in (transformer, vae):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    config = transformers.UMT5Config(
        vocab_size=len(WORDS) + 3, d_model=text_dim, d_kv=16, d_ff=2 * text_dim, num_layers=2,
        num_heads=text_dim // 16, relative_attention_num_buckets=8,
    )  # fmt: skip
    text_encoder = transformers.UMT5EncoderModel(config)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    return transformer.eval(), vae.eval(), text_encoder.eval(), tokenizer


def reference_generate(ref, prompt, noise, steps, guidance, shift, dtype):
    """Returns the video of diffusers' WanPipeline loop (FlowMatchEuler on our sigma grid)."""
    import diffusers

    transformer, vae, text_encoder, tokenizer = ref
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    pipe = diffusers.WanPipeline(tokenizer, text_encoder, vae, scheduler, transformer)
    cond, uncond = pipe.encode_prompt(prompt, negative_prompt="", max_sequence_length=512)
    cond, uncond = cond.to(dtype), uncond.to(dtype)
    latents = noise.clone()
    for t in scheduler.timesteps:
        x = latents.to(dtype)
        v_c = transformer(x, t.expand(1), cond, return_dict=False)[0]
        v_u = transformer(x, t.expand(1), uncond, return_dict=False)[0]
        latents = scheduler.step(v_u + guidance * (v_c - v_u), t, latents).prev_sample
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    return vae.decode((latents * std + mean).to(dtype)).sample


def cpu(args) -> None:
    import diffusers  # noqa: F401  (fail early when the reference is missing)

    from kinetoscope.interop.wan import load_pipeline

    torch.set_num_threads(args.threads)
    ref32 = build_reference()
    folder = Path(tempfile.mkdtemp(prefix="peer-wan-"))
    import diffusers as d

    d.WanPipeline(ref32[3], ref32[2], ref32[1], d.FlowMatchEulerDiscreteScheduler(), ref32[0]
                  ).save_pretrained(folder)  # fmt: skip
    T, h, w = args.latent_frames, args.latent_size, args.latent_size
    frames, px = 1 + 4 * (T - 1), 8 * h
    print(
        f"# CPU, {args.threads} thread(s), median of {args.reps} after a warm-up; DiT "
        f"{ref32[0].config.num_layers} layers dim {ref32[0].config.num_attention_heads * 64}, "
        f"latents [16, {T}, {h}, {w}] = {frames} frames {px}x{px}, {args.steps} steps, CFG"
    )
    print(f"{'what':<25}{'dtype':<7}{'reference s':>12}{'ours s':>9}{'ours/ref':>10}"
          f"{'speed-up':>10}{'rel err':>10}")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, T, h, w, generator=g)
    ctx = torch.randn(1, 512, ref32[0].config.text_dim, generator=g)
    z = torch.randn(1, 16, T, h, w, generator=g)
    prompt = "a red circle moves left over the sea"
    for dtype in (torch.float32, torch.bfloat16):
        name = "fp32" if dtype == torch.float32 else "bf16"
        ref = [m.to(dtype) if i < 3 else m for i, m in enumerate(ref32)]
        pipe = load_pipeline(folder, device="cpu", dtype=dtype)
        rows = run_dtype(args, ref, pipe, dtype, x, ctx, z, prompt)
        for what, tr, to, err in rows:
            print(f"{what:<25}{name:<7}{tr:>12.3f}{to:>9.3f}{to / tr:>10.2f}{tr / to:>9.2f}x"
                  f"{err:>10.1e}")  # fmt: skip


@torch.no_grad()
def run_dtype(args, ref, pipe, dtype, x, ctx, z, prompt) -> list[tuple]:
    """Returns rows (what, reference s, ours s, rel err) for one dtype."""
    T, h, w = z.shape[2:]
    px = 8 * h
    amp = pipe._autocast
    rows = []

    # DiT forward: the reference's CFG is 2 forwards of batch 1; ours one of batch 2.
    def ref_dit():
        t = torch.tensor([500.0])
        return [ref[0](x.to(dtype), t, ctx.to(dtype), return_dict=False)[0] for _ in range(2)]

    def our_dit():
        with amp():
            t = torch.tensor([0.5, 0.5])
            return pipe.dit(torch.cat([x, x]), t, torch.cat([ctx, ctx]), None).chunk(2)

    err = rel_err(our_dit()[0].float(), ref_dit()[0].float())
    rows.append(("DiT forward (CFG pair)", median_time(ref_dit, args.reps),
                 median_time(our_dit, args.reps), err))  # fmt: skip

    mean = torch.tensor(ref[1].config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(ref[1].config.latents_std).view(1, 16, 1, 1, 1)

    def ref_vae():
        return ref[1].decode((z * std + mean).to(dtype)).sample

    def our_vae():
        with amp():
            return pipe.vae.decode(z)

    err = rel_err(our_vae().float(), ref_vae().float())
    rows.append(("VAE decode", median_time(ref_vae, args.reps),
                 median_time(our_vae, args.reps), err))  # fmt: skip

    seed, steps, guidance, shift = 1, args.steps, 5.0, pipe.defaults.shift

    def ref_gen():
        noise = torch.randn(1, 16, T, h, w, generator=torch.Generator().manual_seed(seed))
        return reference_generate(ref, prompt, noise, steps, guidance, shift, dtype)

    def our_gen():
        p = pipe.encode_prompt(prompt, expand=False)
        gen = torch.Generator().manual_seed(seed)
        zz = pipe.sample_latents(p, (T, px, px), gen, steps=steps, guidance=guidance)
        with amp():
            return pipe.vae.decode(zz)

    err = rel_err(our_gen().float(), ref_gen().float())
    rows.append(("generation (text->video)", median_time(ref_gen, args.reps),
                 median_time(our_gen, args.reps), err))  # fmt: skip
    return rows


def gpu(args) -> None:
    """Times one denoising step (CFG) of the 1.3B DiT at 480x832, 81 frames, and a VAE decode."""
    import diffusers

    from kinetoscope.models.dit import DiT, dit_config
    from kinetoscope.models.vae import VAE

    dev, dtype = torch.device("cuda"), torch.bfloat16
    sync = torch.cuda.synchronize
    T, h, w = 21, 60, 104  # 81 frames at 480x832
    x = torch.randn(1, 16, T, h, w, device=dev)
    ctx = torch.randn(1, 512, 4096, device=dev)
    print(f"# {torch.cuda.get_device_name()}, bf16, latents [16, {T}, {h}, {w}], random weights")
    print(f"{'what':<26}{'reference s':>12}{'ours s':>9}{'speed-up':>10}"
          f"{'ref peak GB':>12}{'our peak GB':>12}")  # fmt: skip

    def peak(fn):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = median_time(fn, args.reps, sync)
        return t, torch.cuda.max_memory_allocated() / 2**30

    with torch.no_grad():
        with torch.device(dev):
            ref = diffusers.WanTransformer3DModel(
                num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30
            )
        ref = ref.to(dtype).eval()
        t500 = torch.tensor([500.0], device=dev)
        t_ref, m_ref = peak(lambda: [ref(x.to(dtype), t500, ctx.to(dtype)) for _ in range(2)])
        ref = None  # free it before ours is built
        with torch.device(dev):
            ours = DiT(dit_config("wan2.1-1.3b"))
        ours = ours.to(dtype).eval()
        t_half = torch.full((2,), 0.5, device=dev)
        xx, cc = torch.cat([x, x]), torch.cat([ctx, ctx])
        t_our, m_our = peak(lambda: ours(xx, t_half, cc, None))
        ours = None
        print(f"{'DiT step (CFG pair)':<26}{t_ref:>12.3f}{t_our:>9.3f}{t_ref / t_our:>9.2f}x"
              f"{m_ref:>12.1f}{m_our:>12.1f}")  # fmt: skip
        z = torch.randn(1, 16, T, h, w, device=dev)
        with torch.device(dev):
            rvae = diffusers.AutoencoderKLWan().eval()
        t_ref, m_ref = peak(lambda: rvae.decode(z).sample)
        rvae = None
        ovae = VAE.from_preset("wan2.1").to(dev).eval()

        def our_decode():
            with torch.autocast("cuda", dtype=dtype):
                return ovae.decode(z)

        t_our, m_our = peak(our_decode)
        print(f"{'VAE decode (81 frames)':<26}{t_ref:>12.3f}{t_our:>9.3f}{t_ref / t_our:>9.2f}x"
              f"{m_ref:>12.1f}{m_our:>12.1f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="the real 1.3B shape on a CUDA device")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--latent-frames", type=int, default=3)
    p.add_argument("--latent-size", type=int, default=8)
    args = p.parse_args()
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device")
        gpu(args)
    else:
        cpu(args)


if __name__ == "__main__":
    main()
