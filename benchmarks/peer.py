"""Side-by-side timing: kinetoscope vs the reference (diffusers' Wan2.1) on the same weights.

    python benchmarks/peer.py            # CPU, a small config, fp32 and bf16, 1 thread, medians
    python benchmarks/peer.py --gpu      # the real 1.3B shape at 480x832, 81 frames (random
                                         # weights): seconds per denoising step + peak memory,
                                         # eager and with --compile's compiled blocks

Both implementations are built in one process from one set of random weights: the reference
is diffusers' WanTransformer3DModel + AutoencoderKLWan (+ transformers' UMT5), saved as a
diffusers folder that our loader (kinetoscope.interop.wan) reads. Each figure is the median of
`--reps` runs after one warm-up. The output columns say how far our result is from the
reference's (relative L2 error), so a speed-up never hides a change of the math.

The reference runs the way diffusers' WanPipeline runs it: bf16 = every model as
`from_pretrained(torch_dtype=bf16)` leaves it (the modules it lists as `_keep_in_fp32_modules`
stay float32), CFG as two forwards per step. Ours runs as the Pipeline does: bf16 = autocast with
bf16 DiT weights and an fp32 VAE, CFG batched into one forward of batch 2. `--gpu` builds the two
DiTs in memory (no folder) and checks equality in fp32 with TF32 off before timing in bf16.
"""

from __future__ import annotations

import argparse
import contextlib
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


def as_diffusers_loads(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Returns model cast to dtype as diffusers' from_pretrained(torch_dtype=dtype) leaves it:
    the modules the class names in `_keep_in_fp32_modules` stay float32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    model = model.to(dtype)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and any(k in name.split(".") for k in keep):
            t.data = t.data.float()
    return model


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
    import diffusers  # (fail early when the reference is missing)

    diffusers.utils.logging.set_verbosity_error()  # its .to() warning: as_diffusers_loads fixes it

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
        ref = [as_diffusers_loads(m, dtype) if i < 3 else m for i, m in enumerate(ref32)]
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


@contextlib.contextmanager
def no_tf32():
    """fp32 matmuls and convolutions in full fp32 (no TF32) inside, as they were after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def gpu_kernels(fn) -> str:
    """Returns where one run of fn spends its device time: attention, GEMM and other kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    own = lambda e: getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
    events = [(own(e) / 1e6, e.key) for e in prof.key_averages() if own(e) > 0]
    kinds = {"attention": ("attn", "attention", "fmha", "flash", "sdpa"),
             "GEMM": ("gemm", "nvjet", "xmma", "cutlass", "matmul")}  # fmt: skip
    split = dict.fromkeys([*kinds, "other"], 0.0)
    for t, k in events:
        kind = next((n for n, ws in kinds.items() if any(w in k.lower() for w in ws)), "other")
        split[kind] += t
    top = max(events)[1][:60] if events else ""
    return ", ".join(f"{k} {v:.3f} s" for k, v in split.items()) + f"; longest: {top}"


def gpu(args) -> None:
    """The 1.3B DiT at 480x832, 81 frames: equal output, time per denoising step, peak memory.

    One random reference (diffusers, its own init plus noise so that no weight is zero) and our
    model loaded from its state dict through the interop key map. Equality is checked in fp32
    (TF32 off) on the first `--check-frames` latent frames, and in bf16 on the whole clip. Only
    the model being timed is on the device, so each peak is its own weights plus its work.
    """
    import diffusers

    from kinetoscope.interop import convert, wan, wan_dit_keys, wan_vae_keys
    from kinetoscope.models.dit import DiT
    from kinetoscope.models.vae import VAE

    diffusers.utils.logging.set_verbosity_error()  # its .to() warning: as_diffusers_loads fixes it
    dev, bf16 = torch.device(args.device), torch.bfloat16
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    T, h, w = args.shape
    g = torch.Generator(dev).manual_seed(0)
    x = torch.randn(1, 16, T, h, w, device=dev, generator=g)
    ctx = torch.randn(1, 512, 4096, device=dev, generator=g)
    z = torch.randn(1, 16, T, h, w, device=dev, generator=g)
    name = torch.cuda.get_device_name() if cuda else str(dev)
    print(f"# {name}, torch {torch.__version__}, diffusers {diffusers.__version__}; DiT "
          f"{args.layers} layers dim 1536, latents [16, {T}, {h}, {w}], random weights; "
          f"median of {args.reps} ({args.vae_reps} for the VAE) after a warm-up",
          flush=True)  # fmt: skip

    def timed(fn, reps):
        """Returns (output of the first run, its seconds (compilation included), median seconds
        after a warm-up, peak GiB)."""
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        sync()
        first = time.perf_counter() - t0
        t = median_time(fn, reps, sync) if reps else float("nan")
        return out, first, t, (torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"))

    def row(what, label, tr, to, mr, mo, err):
        print(f"{what:<24}{label:<31}{tr:>12.3f}{to:>8.3f}{tr / to:>9.2f}x{mr:>9.1f}{mo:>9.1f}"
              f"{err:>9.1e}", flush=True)  # fmt: skip

    notes = []
    torch.manual_seed(0)
    with torch.no_grad():
        with torch.device(dev):
            ref = diffusers.WanTransformer3DModel(
                num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                num_layers=args.layers,
            ).eval()  # fmt: skip
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        state = wan_dit_keys.from_diffusers({k: v.clone() for k, v in ref.state_dict().items()})
        with torch.device("meta"):
            ours = DiT(wan_dit_keys.config_from_diffusers(dict(ref.config)))
        ours = wan.assign(ours, state, "transformer", Path("reference")).eval()
        del state

        n = min(args.check_frames, T)
        t500 = torch.tensor([500.0], device=dev)
        with no_tf32():  # fp32: the same function
            r = ref(x[:, :, :n], t500, ctx, return_dict=False)[0]
            o = ours(x[:, :, :n], torch.tensor([0.5], device=dev), ctx)
        print(f"fp32 DiT forward, latents [16, {n}, {h}, {w}]: rel err {rel_err(o, r):.1e}")
        del r, o

        print(f"{'what':<24}{'ours':<31}{'reference s':>12}{'ours s':>8}{'speed-up':>10}"
              f"{'ref GiB':>9}{'our GiB':>9}{'rel err':>9}", flush=True)  # fmt: skip
        # bf16, as each side runs: the reference as diffusers loads it in bf16 (a few modules
        # kept float32), its CFG two forwards; ours bf16 weights under autocast, CFG one forward
        # of batch 2, the context's keys and values cached across steps (the sampler's `cache`).
        ref, ours = as_diffusers_loads(ref, bf16), ours.to(bf16).cpu()
        xb, cb = x.to(bf16), ctx.to(bf16)
        ref_pair = lambda: [ref(xb, t500, cb, return_dict=False)[0] for _ in range(2)]
        ref_out, _, t_ref, m_ref = timed(ref_pair, args.reps)
        ref_out = ref_out[0].float()
        if cuda:
            notes.append(f"reference: {gpu_kernels(ref_pair)}")
        ref = ref.cpu()
        ours = ours.to(dev)
        xx, cc, t_half = torch.cat([x, x]), torch.cat([ctx, ctx]), torch.full((2,), 0.5, device=dev)
        for label in ["eager", *([] if args.no_compile else ["compiled blocks"])]:
            if label == "compiled blocks":
                ours.compile_blocks()  # the --compile flag

            def step(cache={}):  # noqa: B006 (one cache per variant, kept across its steps)
                with torch.autocast(dev.type, dtype=bf16):
                    return ours(xx, t_half, cc, None, cache=cache)

            out, first, t_our, m_our = timed(step, args.reps)
            row("DiT step (CFG pair)", label, t_ref, t_our, m_ref, m_our,
                rel_err(out[:1].float(), ref_out))  # fmt: skip
            notes.append(f"{label}: first call {first:.1f} s")
            if cuda:
                notes.append(f"{label}: {gpu_kernels(step)}")
        ours = ref = ref_out = out = None  # free the device for the VAE
        for note in notes:
            print(f"# {note}")
        if args.no_vae:
            return

        # VAE decode: the reference in fp32 as WanPipeline runs it, ours as the Pipeline runs it
        # (bf16 autocast; 60x104 latents decode whole, as the reference's) and in fp32. First
        # the fp32 check on the first latent frames, TF32 off.
        with torch.device(dev):
            rvae = diffusers.AutoencoderKLWan().eval()
        for p in rvae.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        ovae = VAE(convert.vae_config_from_diffusers(dict(rvae.config)))
        wan_vae_keys.load_wan_vae(ovae, rvae.state_dict())
        ovae = ovae.channels_last_().eval().to(dev)
        mean = torch.tensor(rvae.config.latents_mean, device=dev).view(1, 16, 1, 1, 1)
        std = torch.tensor(rvae.config.latents_std, device=dev).view(1, 16, 1, 1, 1)
        zs = z[:, :, :n]
        with no_tf32():
            r, o = rvae.decode(zs * std + mean).sample, ovae.decode(zs)
        print(f"fp32 VAE decode, latents [16, {n}, {h}, {w}]: rel err {rel_err(o, r):.1e}",
              flush=True)  # fmt: skip
        r = o = None
        ovae = ovae.cpu()
        ref_video, _, t_ref, m_ref = timed(lambda: rvae.decode(z * std + mean).sample,
                                           args.vae_reps)  # fmt: skip
        ref_video = ref_video.float()
        rvae = rvae.cpu()
        ovae = ovae.to(dev)
        frames = 1 + 4 * (T - 1)
        for label, amp in (("bf16 autocast", True), ("fp32", False)):

            def decode(amp=amp):
                with torch.autocast(dev.type, dtype=bf16, enabled=amp):
                    return ovae.decode(z)

            out, _, t_our, m_our = timed(decode, args.vae_reps)
            row(f"VAE decode ({frames} frames)", label, t_ref, t_our, m_ref, m_our,
                rel_err(out.float(), ref_video))  # fmt: skip
            out = None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="the real 1.3B shape on a CUDA device")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--latent-frames", type=int, default=3)
    p.add_argument("--latent-size", type=int, default=8)
    p.add_argument("--device", default="cuda", help="--gpu: the device (cpu for a smoke run)")
    p.add_argument("--layers", type=int, default=30, help="--gpu: DiT blocks (1.3B: 30)")
    p.add_argument(
        "--shape",
        type=lambda s: tuple(int(v) for v in s.split(",")),
        default=(21, 60, 104),
        help="--gpu: latent T,H,W (81 frames at 480x832)",
    )
    p.add_argument("--check-frames", type=int, default=3, help="--gpu: latent frames, fp32 check")
    p.add_argument("--vae-reps", type=int, default=1, help="--gpu: timed VAE decodes")
    p.add_argument("--no-compile", action="store_true", help="--gpu: skip the compiled row")
    p.add_argument("--no-vae", action="store_true", help="--gpu: skip the VAE rows")
    args = p.parse_args()
    if args.gpu:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device")
        gpu(args)
    else:
        cpu(args)


if __name__ == "__main__":
    main()
