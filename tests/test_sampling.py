"""Samplers against closed-form flows, frame conditions, guidance, SDEdit and seeds."""

import pytest
import torch
from benchmark_scripts import load  # tests/ is on sys.path under pytest
from torch import nn

from kinetoscope.diffusion.conditioning import FrameCondition
from kinetoscope.diffusion.flow import frame_noise
from kinetoscope.diffusion.sampling import guided_velocity, invert, sample, sample_fn, timesteps

# The closed-form Gaussian / mixture velocity fields live with the benchmark that reports them.
bench = load("sampler")

STEPS = (2, 4, 8, 16, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_noise(shape, seed):
    """The pipeline's noise (`frame_noise`) from a seed or a generator."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    return frame_noise(shape, gen)


@pytest.fixture(scope="module")
def noise2d():
    return torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_timesteps_grid():
    t = timesteps(8)
    assert len(t) == 9 and t[0] == 1 and t[-1] == 0 and (t.diff() < 0).all()
    torch.testing.assert_close(t, torch.linspace(1, 0, 9, dtype=torch.float64))
    shifted = timesteps(8, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > t[1:-1]).all()
    partial = timesteps(4, shift=3.0, start_t=0.6)
    assert partial[0] == 0.6 and partial[-1] == 0 and (partial.diff() < 0).all()
    with pytest.raises(ValueError, match="1.5"):
        timesteps(4, start_t=1.5)
    with pytest.raises(ValueError, match="0"):
        timesteps(0)


def test_gaussian_both_samplers_converge_and_second_order_needs_fewer_steps(noise2d):
    dist = bench.gaussian()
    exact = bench.exact_gaussian(dist, noise2d)  # the true ODE endpoint of each noise point
    err = {
        s: [bench.errors(bench.solve(dist, noise2d, n, s), exact, dist) for n in STEPS]
        for s in ("euler", "dpm++2m")
    }
    for s, rows in err.items():
        path = [r["path"] for r in rows]
        assert all(b < 0.75 * a for a, b in zip(path, path[1:])), (s, path)
        assert rows[-1]["mean"] < 0.03 and rows[-1]["cov"] < 0.04, (s, rows[-1])
    euler, dpm = ([r["path"] for r in err[s]] for s in ("euler", "dpm++2m"))
    # Second order: n steps of DPM-Solver++(2M) beat 2n steps of Euler (from 8 steps on).
    assert dpm[2] < euler[3] and dpm[3] < euler[4], (dpm, euler)
    assert dpm[4] < 0.25 * euler[4]


def test_mixture_moments_approach_truth_faster_with_second_order(noise2d):
    dist = bench.mixture()
    cov = {
        s: [bench.errors(bench.solve(dist, noise2d, n, s), noise2d, dist)["cov"] for n in STEPS]
        for s in ("euler", "dpm++2m")
    }
    assert cov["euler"][-1] < 0.25 * cov["euler"][0] and cov["euler"][-1] < 0.1, cov
    assert cov["dpm++2m"][-1] < 0.05, cov
    # 8 DPM-Solver++(2M) steps get the covariance closer than 16 Euler steps.
    assert cov["dpm++2m"][2] < cov["euler"][3], cov


def test_one_euler_step_is_exact_for_a_point_mass():
    mu = torch.tensor([0.5, -2.0], dtype=torch.float64)
    velocity_fn = lambda x, t: x - mu.view(1, 2, 1, 1, 1)  # E[eps - x0 | x_1] = x_1 - mu
    x = torch.randn(5, 2, 1, 1, 1, dtype=torch.float64)
    for s in ("euler", "dpm++2m"):
        out = sample_fn(velocity_fn, x, timesteps(1), sampler=s, progress=False)
        torch.testing.assert_close(out, mu.view(1, 2, 1, 1, 1).expand_as(out))


class ContextModel(nn.Module):
    """Velocity from x, t and the masked mean of the context; records every call."""

    def __init__(self, c=3, d=4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(d, c, generator=g)
        self.calls = []

    def forward(self, x, t, context, mask):
        self.calls.append((x.clone(), t.clone()))
        m = mask.float()[..., None]
        pooled = (context * m).sum(1) / m.sum(1).clamp(min=1)  # [B, D]
        bias = (pooled @ self.w)[:, :, None, None, None]  # [B, C, 1, 1, 1]
        return 0.5 * x + bias * (1 - t[:, None, :, None, None]) + 0.1


def text(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 4, generator=g), torch.ones(b, n, dtype=torch.bool)


def test_guidance_one_is_the_conditional_velocity_and_cfg_formula():
    model = ContextModel()
    ctx, m = text(2, 5, 1)
    null, nm = text(1, 2, 2)  # shorter than the prompt: padded and masked in the batch
    x, t = torch.randn(2, 3, 4, 2, 2), torch.rand(2, 4)
    v_c, v_u = model(x, t, ctx, m), model(x, t, null.expand(2, -1, -1), nm.expand(2, -1))
    assert not torch.allclose(v_c, v_u)
    torch.testing.assert_close(guided_velocity(model, ctx, m, null, nm, 1.0)(x, t), v_c)
    for batch_cfg in (True, False):
        v = guided_velocity(model, ctx, m, null, nm, 4.0, batch_cfg=batch_cfg)(x, t)
        torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u))
    model.calls.clear()
    guided_velocity(model, ctx, m, null, nm, 4.0)(x, t)
    assert len(model.calls) == 1 and model.calls[0][0].shape[0] == 4  # one forward, batch 2B
    with pytest.raises(ValueError, match="null_context"):
        guided_velocity(model, ctx, m, None, None, 4.0)


@pytest.mark.parametrize("batch_cfg", [True, False])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_sampling_a_dit_reuses_its_context_work_with_the_same_result(guidance, batch_cfg):
    from kinetoscope.models.dit import DiT, DiTConfig

    torch.manual_seed(0)
    dit = DiT(DiTConfig(in_channels=4, out_channels=4, dim=32, ffn_dim=64, num_layers=2,
                        num_heads=2, text_dim=16, freq_dim=32)).eval()  # fmt: skip
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # every path, cross-attention too, matters
    ctx, m = torch.randn(1, 5, 16), torch.ones(1, 5, dtype=torch.bool)
    null, nm = torch.randn(1, 2, 16), torch.ones(1, 2, dtype=torch.bool)
    noise = torch.randn(1, 4, 3, 4, 4)
    embedded = []
    dit.text_embedding.register_forward_hook(lambda *a: embedded.append(1))
    kw = dict(steps=5, guidance=guidance, batch_cfg=batch_cfg, progress=False)
    cached = sample(dit, noise, ctx, m, null, nm, **kw)
    passes = 1 if guidance == 1.0 or batch_cfg else 2
    assert len(embedded) == passes  # once per context, not once per step
    plain = sample(lambda *a: dit(*a), noise, ctx, m, null, nm, **kw)  # no `cache` to take
    assert len(embedded) == passes + 5 * passes
    torch.testing.assert_close(cached, plain, rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["euler", "dpm++2m"])
def test_known_frames_come_out_exactly_and_are_seen_clean(sampler):
    model = ContextModel()
    ctx, m = text(2, 5, 1)
    null, nm = text(1, 1, 2)
    known = torch.randn(2, 3, 2, 2, 2)
    cond = FrameCondition.prefix_suffix(known[:, :, :1], known[:, :, 1:], 5)
    noise = make_noise((2, 3, 5, 2, 2), 0)
    out = sample(
        model,
        noise,
        ctx,
        m,
        null,
        nm,
        steps=6,
        guidance=3.0,
        sampler=sampler,
        cond=cond,
        progress=False,
    )
    assert torch.equal(out[:, :, [0, 4]], known)
    assert not torch.equal(out[:, :, 1:4], noise[:, :, 1:4])
    assert len(model.calls) == 6
    for x, t in model.calls:  # batch 2B: conditional and unconditional halves
        assert torch.equal(x[:, :, [0, 4]], torch.cat([known, known]))
        assert (t[:, [0, 4]] == 0).all() and (t[:, 1:4] > 0).all()


class FrameMixingModel(ContextModel):
    """ContextModel whose velocity also sees the mean over frames (known frames matter)."""

    def forward(self, x, t, context, mask):
        return super().forward(x, t, context, mask) + 0.3 * x.mean(2, keepdim=True)


def test_guide_frames_drops_the_known_frames_from_the_unconditional_pass_only():
    model = FrameMixingModel()
    ctx, m = text(1, 5, 1)
    null, nm = text(1, 2, 2)
    known = torch.randn(1, 3, 2, 2, 2)
    cond = FrameCondition.prefix(known, 5)
    noise = make_noise((1, 3, 5, 2, 2), 0)
    kw = dict(steps=4, guidance=3.0, cond=cond, progress=False)
    out = sample(model, noise, ctx, m, null, nm, guide_frames=True, **kw)
    assert torch.equal(out[:, :, :2], known)  # still given back exactly
    ts = timesteps(4)
    for (x, t), step_t in zip(model.calls, ts.tolist()):
        (xc, xu), (tc, tu) = x.chunk(2), t.chunk(2)
        assert torch.equal(xc[:, :, :2], known) and (tc[:, :2] == 0).all()  # as without it
        assert torch.allclose(tu, torch.full_like(tu, step_t))  # every frame at the step's t
        noised = (1 - step_t) * known + step_t * noise[:, :, :2]
        torch.testing.assert_close(xu[:, :, :2], noised)  # known frames noised as in training
        assert torch.equal(xu[:, :, 2:], xc[:, :, 2:])  # the new frames: the same input
    model.calls.clear()
    plain = sample(model, noise, ctx, m, null, nm, **kw)
    assert not torch.allclose(out[:, :, 2:], plain[:, :, 2:])  # it changes what is made
    assert torch.equal(sample(model, noise, ctx, m, null, nm, guide_frames=True, **kw), out)


def test_seeded_noise_and_sampling_are_reproducible():
    a, b = make_noise((1, 3, 2, 4, 4), 7), make_noise((1, 3, 2, 4, 4), 7)
    assert torch.equal(a, b) and not torch.equal(a, make_noise((1, 3, 2, 4, 4), 8))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(make_noise((4,), g1), make_noise((4,), g2))
    ctx, m = text(1, 3, 1)
    run = lambda n: sample(ContextModel(), n, ctx, m, steps=4, sampler="dpm++2m", progress=False)
    assert torch.equal(run(a), run(b))
    assert not torch.equal(run(a), run(make_noise((1, 3, 2, 4, 4), 8)))


def test_sdedit_start_times():
    ctx, m = text(1, 3, 1)
    noise, x_init = make_noise((1, 3, 3, 2, 2), 0), make_noise((1, 3, 3, 2, 2), 1)
    for s in ("euler", "dpm++2m"):
        kw = dict(steps=5, shift=2.0, sampler=s, progress=False)
        model = ContextModel()
        same = sample(model, noise, ctx, m, start_t=0.0, x_init=x_init, **kw)
        assert torch.equal(same, x_init) and model.calls == []
        full = sample(ContextModel(), noise, ctx, m, start_t=1.0, x_init=x_init, **kw)
        assert torch.equal(full, sample(ContextModel(), noise, ctx, m, **kw))
        model = ContextModel()
        half = sample(model, noise, ctx, m, start_t=0.5, x_init=x_init, **kw)
        x_first, t_first = model.calls[0]
        assert (t_first == 0.5).all() and torch.allclose(x_first, 0.5 * x_init + 0.5 * noise)
        assert (half - x_init).norm() < (full - x_init).norm()
    with pytest.raises(ValueError, match="x_init"):
        sample(ContextModel(), noise, ctx, m, start_t=0.5)


class DriftModel(nn.Module):
    """Velocity from the context alone (not x, not t): Euler is exact both ways."""

    def forward(self, x, t, context, mask):
        return context.mean((1, 2))[:, None, None, None, None].expand_as(x)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_inversion_runs_the_sampling_grid_backwards(shift):
    ctx, m = text(1, 3, 1)
    x0 = make_noise((1, 3, 3, 2, 2), 1)
    kw = dict(steps=6, shift=shift, sampler="euler", progress=False)
    # with the unconditional model (null context = ctx here, guidance 1), sampling back from
    # the inversion lands on x0: exactly where the velocity ignores x, closer with more steps
    back = sample(DriftModel(), x0, ctx, m, ctx, m, start_t=0.7, x_init=x0, from_inversion=True,
                  **kw)  # fmt: skip
    torch.testing.assert_close(back, x0, atol=1e-5, rtol=0)
    model = ContextModel()  # the forward pass sees the times the sampler will, in reverse
    invert(model, x0, ctx, m, end_t=0.7, steps=6, shift=shift, progress=False)
    seen = [float(t.flatten()[0]) for _, t in model.calls]
    assert seen == pytest.approx([float(t) for t in timesteps(6, shift, 0.7).flip(0)[:-1]])
    errors = []
    for steps in (4, 32):
        xs = invert(ContextModel(), x0, ctx, m, end_t=0.7, steps=steps, shift=shift, progress=False)
        back = sample(ContextModel(), xs, ctx, m, **dict(kw, steps=steps), start_t=0.7,
                      x_init=xs)  # fmt: skip  # start_t with x_init=xs: x = 0.3 xs + 0.7 xs = xs
        errors.append((back - x0).norm() / x0.norm())
    assert errors[1] < errors[0] / 4 and errors[1] < 0.05
    # the input's own noise: the noise passed in is not used
    a, b = (sample(ContextModel(), make_noise(x0.shape, n), ctx, m, ctx, m, start_t=0.7,
                   x_init=x0, from_inversion=True, **kw) for n in (5, 6))  # fmt: skip
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="null_context"):
        sample(ContextModel(), x0, ctx, m, start_t=0.7, x_init=x0, from_inversion=True, **kw)


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="'heun'"):
        sample_fn(lambda x, t: x, torch.zeros(1, 1, 1, 1, 1), timesteps(2), sampler="heun")
