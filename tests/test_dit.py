"""The spacetime DiT: shapes, per-frame timesteps, masks, init, training, checkpointing."""

import pytest
import torch

from kinetoscope.models.dit import DiT, DiTConfig, dit_config
from kinetoscope.models.layers import apply_rope, rope_freqs_3d

CFG = DiTConfig(in_channels=4, out_channels=4, dim=32, ffn_dim=64, num_layers=2, num_heads=2,
                text_dim=16, freq_dim=32)  # fmt: skip


def make(cfg=CFG, seed=0, noise=0.1) -> DiT:
    """A model whose adaLN-zero parameters are perturbed, so every path affects the output."""
    torch.manual_seed(seed)
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model.eval()


def inputs(b=2, t=3, h=4, w=6, length=5, c=4, text_dim=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, t, h, w, generator=g)
    ctx = torch.randn(b, length, text_dim, generator=g)
    return x, torch.rand(b, generator=g), ctx


@pytest.mark.parametrize("frames,h,w", [(1, 8, 6), (2, 8, 6), (5, 6, 10), (5, 2, 2)])
def test_output_shape_matches_input(frames, h, w):
    model = make()
    x, t, ctx = inputs(t=frames, h=h, w=w)
    with torch.no_grad():
        out = model(x, t, ctx)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_size_not_divisible_by_patch_raises_with_sizes():
    x, t, ctx = inputs(h=5, w=9)
    with pytest.raises(ValueError, match="H=5 W=9"):
        make()(x, t, ctx)


def test_bad_shapes_raise():
    model = make()
    x, t, ctx = inputs()
    with pytest.raises(ValueError, match="t must be"):
        model(x, torch.rand(2, 7), ctx)
    with pytest.raises(ValueError, match="context must be"):
        model(x, t, torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="no True"):
        model(x, t, ctx, torch.zeros(2, 5, dtype=torch.bool))


def test_per_frame_t_all_equal_is_scalar_t():
    model = make()
    x, t, ctx = inputs(t=3)
    with torch.no_grad():
        scalar = model(x, t, ctx)
        per_frame = model(x, t[:, None].expand(-1, 3), ctx)
    torch.testing.assert_close(per_frame, scalar, rtol=1e-5, atol=1e-5)


def test_changing_one_frames_t_changes_output():
    model = make()
    x, t, ctx = inputs(b=1, t=3)
    t1 = torch.tensor([[0.5, 0.5, 0.5]])
    t2 = torch.tensor([[0.5, 0.9, 0.5]])
    with torch.no_grad():
        a, b = model(x, t1, ctx), model(x, t2, ctx)
    diff = (a - b).abs().amax(dim=(0, 1, 3, 4))  # per latent frame
    assert diff[1] > 1e-3
    # The changed frame moves most: its own modulation changed, the others only via attention.
    assert diff[1] > diff[0] and diff[1] > diff[2]


def test_context_mask_ignores_padded_tokens():
    model = make()
    x, t, ctx = inputs(length=6)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    other = ctx.clone()
    other[0, 4:] = torch.randn(2, 16) * 10
    with torch.no_grad():
        a, b = model(x, t, ctx, mask), model(x, t, other, mask)
        c = model(x, t, other)  # no mask: the padding is attended to
    torch.testing.assert_close(a, b)
    assert (a[0] - c[0]).abs().max() > 1e-4


def test_pooled_text_starts_at_zero_then_carries_the_caption_and_ignores_padding():
    """text_pool: the caption's mean and max join the timestep embedding. Freshly initialised it
    adds nothing (a model without it, same weights, gives the same velocity); trained, the
    caption changes the output through it alone, and padded tokens still change nothing."""
    pool_cfg = DiTConfig(**{**CFG.__dict__, "text_pool": True})
    torch.manual_seed(0)
    fresh = DiT(pool_cfg)
    plain = DiT(CFG)
    plain.load_state_dict({k: v for k, v in fresh.state_dict().items() if "text_pool" not in k})
    x, t, ctx = inputs(length=6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, ctx), plain(x, t, ctx), rtol=0, atol=0)

    model = make(pool_cfg)
    for block in model.blocks:  # shut the cross-attention: the text reaches only the pool
        torch.nn.init.zeros_(block.cross_attn.o.weight)
        torch.nn.init.zeros_(block.cross_attn.o.bias)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    padded = ctx.clone()
    padded[0, 4:] = torch.randn(2, 16) * 10
    with torch.no_grad():
        a, b = model(x, t, ctx, mask), model(x, t, padded, mask)
        other = model(x, t, ctx.flip(0), mask.flip(0))  # each row gets the other's caption
    torch.testing.assert_close(a, b)
    assert (a - other).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-3


def test_context_cache_reuses_text_work_and_gives_the_same_velocity():
    model = make(DiTConfig(**{**CFG.__dict__, "text_len": 8}))
    x, t, ctx = inputs(length=5)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    cache = {}
    calls = []
    model.text_embedding.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        for step in range(3):  # a sampler's steps: new latents and times, one context
            xs, ts = x + step, t / (step + 1)
            torch.testing.assert_close(
                model(xs, ts, ctx, mask, cache=cache), model(xs, ts, ctx, mask), rtol=0, atol=0
            )
    assert len(calls) == 1 + 3  # the cached model embedded the context once, the plain one 3x
    assert len(cache) == 1  # the context's work: each block's cross-attention k, v, and the mask


def test_compiled_blocks_give_the_velocity_of_eager_and_never_recompile_for_the_cache():
    # The cache never reaches the blocks (the context's keys and values come in as arguments),
    # so one compile serves every block and every sampler step.
    import torch._dynamo

    model = make()
    x, t, ctx = inputs()
    with torch.no_grad():
        eager = model(x, t, ctx)
        model.compile_blocks()
        torch._dynamo.reset()
        cache = {}
        first = model(x, t, ctx, cache=cache)  # compiles the sampler's graph (keys, values in)
        plain = model(x, t, ctx)  # and training's (each block computes them)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for step in range(1, 4):  # a sampler's steps: new latents and times, one context
                torch.testing.assert_close(
                    model(x + step, t / (step + 1), ctx, cache=cache),
                    model(x + step, t / (step + 1), ctx),
                    rtol=1e-4, atol=1e-5,
                )  # fmt: skip
    torch.testing.assert_close(first, eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain, eager, rtol=1e-4, atol=1e-5)
    assert set(model.state_dict()) == set(make().state_dict())  # names unchanged


def test_text_len_zero_pads_context_like_wan():
    cfg = DiTConfig(**{**CFG.__dict__, "text_len": 8})
    model = make(cfg)
    x, t, ctx = inputs(length=5)
    padded = torch.cat([ctx, torch.zeros(2, 3, 16)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx), model(x, t, padded))


def test_seed_determinism():
    x, t, ctx = inputs()
    with torch.no_grad():
        a = make(seed=3)(x, t, ctx)
        b = make(seed=3)(x, t, ctx)
        c = make(seed=4)(x, t, ctx)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_init_is_adaln_zero_and_meta_init_matches():
    torch.manual_seed(0)
    model = DiT(CFG)
    x, t, ctx = inputs()
    with torch.no_grad():
        assert model(x, t, ctx).abs().max() == 0  # zero head: the model starts at velocity 0
    with torch.device("meta"):
        lazy = DiT(CFG)
    lazy.to_empty(device="cpu")
    with torch.no_grad():
        for p in lazy.parameters():
            p.fill_(float("nan"))
    torch.manual_seed(5)
    model.init_weights()
    torch.manual_seed(5)
    lazy.init_weights()
    for (name, p), q in zip(model.state_dict().items(), lazy.state_dict().values()):
        assert torch.equal(p, q), name


def test_training_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = DiT(CFG)
    x0, _, ctx = inputs(b=4, t=2, h=4, w=4)
    g = torch.Generator().manual_seed(9)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.rand(4, generator=g)
    tt = t[:, None, None, None, None]
    xt, target = (1 - tt) * x0 + tt * eps, eps - x0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = (model(xt, t, ctx) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_grad_checkpoint_gives_equal_gradients():
    x, t, ctx = inputs()
    grads = []
    for ckpt in (False, True):
        model = make(DiTConfig(**{**CFG.__dict__, "grad_checkpoint": ckpt})).train()
        model(x, t, ctx).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_close_to_fp32():
    model = make()
    x, t, ctx = inputs()
    with torch.no_grad():
        ref = model(x, t, ctx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, ctx)
    assert out.dtype == torch.float32
    assert (out - ref).norm() / ref.norm() < 0.05


def test_presets_have_expected_sizes():
    counts = {}
    for name in ("wan2.1-1.3b", "wan2.1-14b"):
        with torch.device("meta"):
            counts[name] = DiT(dit_config(name)).num_params()
    assert 1.2e9 < counts["wan2.1-1.3b"] < 1.5e9, counts
    assert 13e9 < counts["wan2.1-14b"] < 15e9, counts
    assert DiT(dit_config("tiny")).num_params() < 20e6


def test_rope_is_relative_and_norm_preserving():
    cos, sin = rope_freqs_3d(24, (3, 4, 5))
    assert cos.shape == (60, 12)
    q, k = torch.randn(1, 1, 1, 24), torch.randn(1, 1, 1, 24)
    n = lambda ti, hi, wi: (ti * 4 + hi) * 5 + wi  # token index in the (t h w) order
    rot = lambda z, i: apply_rope(z, cos[i : i + 1], sin[i : i + 1])
    s1 = (rot(q, n(2, 3, 4)) * rot(k, n(1, 1, 2))).sum()
    s2 = (rot(q, n(1, 2, 2)) * rot(k, n(0, 0, 0))).sum()  # same offset (1, 2, 2)
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rot(q, 17).norm(), q.norm())


def test_a_deepened_dit_computes_what_it_was_grown_from():
    """deepen: 2 blocks grown to 5 give the same velocity on any latents (the new blocks pass
    their input through), each new block's residual outputs are zero and its other weights are
    the block before it; fewer blocks are refused."""
    from kinetoscope.models.dit import deepen

    small = make(noise=0.05)
    deep = DiT(DiTConfig(**{**vars(CFG), "num_layers": 5})).eval()
    grown = deepen(small.state_dict(), 5)
    deep.load_state_dict(grown)
    x, t, ctx = inputs(h=6, w=10)
    with torch.no_grad():
        torch.testing.assert_close(deep(x, t, ctx), small(x, t, ctx), rtol=1e-5, atol=1e-6)
    old = [n for n in range(5) if torch.any(grown[f"blocks.{n}.ffn.2.weight"] != 0)]
    assert old == [0, 2]  # the old blocks, in order, spread over the five
    assert torch.equal(grown["blocks.1.ffn.0.weight"], small.state_dict()["blocks.0.ffn.0.weight"])
    assert not grown["blocks.4.self_attn.o.weight"].any()
    assert not grown["blocks.4.cross_attn.o.bias"].any()
    with pytest.raises(ValueError, match="cannot make 2 blocks into 1"):
        deepen(small.state_dict(), 1)


def test_resized_patches_see_the_latents_as_the_old_model_saw_them_upsampled():
    """resize_patches (FlexiViT's PI-resize): a 2x2-patch DiT made from a 4x4 one gives, on any
    latents, the 4x4 model's velocity on those latents upsampled 2x, averaged back down; and
    weights already of the asked size come back unchanged."""
    from kinetoscope.models.dit import resize_patches

    big = make(DiTConfig(**{**vars(CFG), "patch_size": (1, 4, 4)}), noise=0.05)
    fine = DiT(DiTConfig(**{**vars(CFG), "patch_size": (1, 2, 2)})).eval()
    fine.load_state_dict(resize_patches(big.state_dict(), (1, 2, 2)))
    x, t, ctx = inputs(h=6, w=10)
    up = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    with torch.no_grad():
        want = torch.nn.functional.avg_pool3d(big(up, t, ctx), (1, 2, 2))
        torch.testing.assert_close(fine(x, t, ctx), want, rtol=1e-4, atol=1e-5)
    same = resize_patches(big.state_dict(), (1, 4, 4))
    assert all(torch.equal(same[k], v) for k, v in big.state_dict().items())
