"""Rectified flow: the noising path, timestep draws and shift, and the masked velocity loss."""

import pytest
import torch
from torch import nn

from kinetoscope.diffusion.conditioning import FrameCondition
from kinetoscope.diffusion.flow import (
    flow_loss,
    frame_noise,
    interpolate,
    sample_t,
    shift_for_tokens,
    shift_t,
    unshift_t,
)

B, C, T, H, W = 3, 4, 5, 4, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, C, T, H, W, generator=g)
    eps = torch.randn(B, C, T, H, W, generator=g)
    return x0, eps


def test_interpolate_ends_and_per_frame_times():
    x0, eps = batch()
    t = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.75])[None].expand(B, T)
    x_t = interpolate(x0, eps, t)
    assert torch.equal(x_t[:, :, 0], x0[:, :, 0])
    assert torch.equal(x_t[:, :, 1], eps[:, :, 1])
    torch.testing.assert_close(x_t[:, :, 2], 0.75 * x0[:, :, 2] + 0.25 * eps[:, :, 2])


def test_frame_noise_is_unit_normal_with_frames_correlated_as_asked():
    shape = (8, 4, 6, 16, 16)
    g = lambda: torch.Generator().manual_seed(3)
    assert torch.equal(frame_noise(shape, g()), torch.randn(shape, generator=g()))  # 0: iid
    assert torch.equal(frame_noise(shape, g(), 0.5), frame_noise(shape, g(), 0.5))  # seeded
    x = frame_noise(shape, g(), 0.5)
    assert abs(x.std().item() - 1) < 0.02  # every frame is still N(0, 1): same x_t scale
    frames = x.transpose(0, 2).flatten(1)  # [T, everything else]
    corr = torch.corrcoef(frames)
    off = corr[~torch.eye(shape[2], dtype=torch.bool)]
    assert (off - 0.5).abs().max() < 0.05  # every pair of frames, near and far
    across = torch.corrcoef(x[:, :, 0].flatten(1))  # samples of a batch stay independent
    assert across[~torch.eye(shape[0], dtype=torch.bool)].abs().max() < 0.2  # (not 0.5)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="noise correlation must be in"):
            frame_noise(shape, g(), bad)


def test_sample_t_is_logit_normal_and_seeded():
    t = sample_t(20000, torch.Generator().manual_seed(0), mean=0.5, std=0.8)
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert (t > 0).all() and (t < 1).all()
    logit = torch.logit(t.double())
    assert abs(logit.mean() - 0.5) < 0.03 and abs(logit.std() - 0.8) < 0.03
    a = sample_t(8, torch.Generator().manual_seed(1))
    assert torch.equal(a, sample_t(8, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, sample_t(8, torch.Generator().manual_seed(2)))


def test_shift_moves_times_towards_noise_and_inverts():
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(shift_t(u, 1.0), u)
    s = shift_t(u, 3.0)
    assert s[0] == 0 and s[-1] == 1
    assert (s[1:-1] > u[1:-1]).all() and (s.diff() > 0).all()
    assert abs(float(shift_t(0.5, 3.0)) - 0.75) < 1e-12  # 3 * .5 / (1 + 2 * .5)
    torch.testing.assert_close(unshift_t(s, 3.0), u)
    with pytest.raises(ValueError, match="-1"):
        shift_t(u, -1.0)


def test_shift_for_tokens_sqrt_rule():
    assert shift_for_tokens(4096) == 3.0
    assert shift_for_tokens(4 * 4096) == pytest.approx(6.0)
    assert shift_for_tokens(1024, base_tokens=256, base_shift=1.5) == pytest.approx(3.0)
    assert shift_for_tokens(64) == 1.0  # tiny latents: clamped, no shift
    assert shift_for_tokens(10**7) == 12.0
    with pytest.raises(ValueError, match="0"):
        shift_for_tokens(0)


def test_loss_is_mse_to_velocity():
    x0, eps = batch()
    t = torch.tensor([0.1, 0.5, 0.9])
    perfect = lambda x, tf, c, m: eps - x0
    assert flow_loss(perfect, x0, t, eps, None) == 0
    zero = lambda x, tf, c, m: torch.zeros_like(x)
    torch.testing.assert_close(flow_loss(zero, x0, t, eps, None), (eps - x0).square().mean())


class Recorder(nn.Module):
    """Velocity = x + a learnable per-frame bias; remembers what it was called with."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(T))

    def forward(self, x, t, context, mask):
        self.seen = (x.detach().clone(), t.detach().clone())
        return x + self.bias[None, None, :, None, None]


def test_known_frames_enter_clean_at_t0_and_carry_no_loss():
    x0, eps = batch()
    t = torch.tensor([0.3, 0.6, 0.9])
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 0] = True  # image-to-video
    mask[1, :2] = mask[1, -1] = True  # connect
    cond = FrameCondition(mask, x0)
    model = Recorder()
    loss = flow_loss(model, x0, t, eps, None, cond=cond)
    x_seen, t_seen = model.seen
    assert torch.equal(x_seen.transpose(1, 2)[mask], x0.transpose(1, 2)[mask])
    assert (t_seen[mask] == 0).all() and torch.equal(t_seen[~mask], t[:, None].expand(B, T)[~mask])
    # The mean runs over unknown frames only.
    err = (x_seen - (eps - x0)).square().mean(dim=(1, 3, 4))  # [B, T]
    torch.testing.assert_close(loss, err[~mask].mean())
    # Gradients reach only frames that some sample has to generate.
    loss.backward()
    unknown_somewhere = (~mask).any(0)
    assert (model.bias.grad[unknown_somewhere] != 0).all()
    # Frame 0 is known for samples 0 and 1 but unknown for sample 2: make it known everywhere.
    mask[2, 0] = True
    model.bias.grad = None
    flow_loss(model, x0, t, eps, None, cond=FrameCondition(mask, x0)).backward()
    assert model.bias.grad[0] == 0 and (model.bias.grad[1:] != 0).all()


def test_loss_ignores_outputs_on_known_frames():
    x0, eps = batch(1)
    t = torch.tensor([0.2, 0.5, 0.8])
    cond = FrameCondition.prefix(x0[:, :, :2], T)

    def wild(x, tf, c, m):  # garbage (even NaN) wherever t = 0
        v = torch.zeros_like(x)
        return torch.where((tf == 0)[:, None, :, None, None], torch.nan, v)

    zero = lambda x, tf, c, m: torch.zeros_like(x)
    torch.testing.assert_close(
        flow_loss(wild, x0, t, eps, None, cond=cond), flow_loss(zero, x0, t, eps, None, cond=cond)
    )
    assert flow_loss(zero, x0, t, eps, None, cond=cond) != flow_loss(zero, x0, t, eps, None)


class TinyVelocity(nn.Module):
    """A per-pixel MLP over channels and time: enough to fit a fixed batch."""

    def __init__(self, c=C, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(c + 1, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, c, 1))

    def forward(self, x, t, context, mask):
        tt = t[:, None, :, None, None].expand(-1, 1, -1, *x.shape[3:]).to(x.dtype)
        return self.net(torch.cat([x, tt], dim=1))


def test_training_steps_reduce_loss_on_fixed_batch():
    torch.manual_seed(0)
    model = TinyVelocity()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x0 = torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(7)) * 0.5 + 1.0
    g = torch.Generator().manual_seed(8)
    eps, t = torch.randn(x0.shape, generator=g), sample_t(B, g)
    cond = FrameCondition.first_frame(x0[:, :, 0], T)
    losses = []
    for _ in range(40):
        loss = flow_loss(model, x0, t, eps, None, cond=cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])


def test_loss_is_fp32_under_bf16_autocast():
    x0, eps = batch()
    model = TinyVelocity()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = flow_loss(model, x0, torch.full((B,), 0.5), eps, None)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_temporal_weight_costs_flicker_not_what_every_frame_shares():
    x0, eps = batch()
    t = torch.tensor([0.3, 0.6, 0.9])
    target = eps - x0
    shared = torch.randn(B, C, 1, H, W).expand(B, C, T, H, W)  # the same error in every frame
    flicker = shared * torch.tensor([1.0, -1.0] * (T // 2) + [1.0] * (T % 2))[:, None, None]
    for e in (shared, flicker):
        model = lambda x, tf, c, m, e=e: target + e
        plain = flow_loss(model, x0, t, eps, None)
        torch.testing.assert_close(plain, e.square().mean())
        weighted = flow_loss(model, x0, t, eps, None, temporal_weight=0.5)
        change = (e[:, :, 1:] - e[:, :, :-1]).square().mean()
        torch.testing.assert_close(weighted, plain + 0.5 * change)
    shared_w = flow_loss(lambda x, tf, c, m: target + shared, x0, t, eps, None, temporal_weight=1)
    flicker_w = flow_loss(lambda x, tf, c, m: target + flicker, x0, t, eps, None, temporal_weight=1)
    torch.testing.assert_close(shared_w, shared.square().mean())  # nothing added
    torch.testing.assert_close(flicker_w, 5 * flicker.square().mean())  # 1 + 4 x the weight


def test_temporal_term_skips_known_frames():
    x0, eps = batch(1)
    t = torch.tensor([0.2, 0.5, 0.8])
    cond = FrameCondition.prefix(x0[:, :, :2], T)  # frames 0, 1 known

    def wild(x, tf, c, m):  # NaN wherever t = 0, zero elsewhere
        return torch.where((tf == 0)[:, None, :, None, None], torch.nan, torch.zeros_like(x))

    zero = lambda x, tf, c, m: torch.zeros_like(x)
    got = flow_loss(wild, x0, t, eps, None, cond=cond, temporal_weight=1.0)
    torch.testing.assert_close(got, flow_loss(zero, x0, t, eps, None, cond=cond, temporal_weight=1))
    err = -(eps - x0)[:, :, 2:]  # the unknown frames' error
    expected = err.square().mean() + (err[:, :, 1:] - err[:, :, :-1]).square().mean()
    torch.testing.assert_close(got, expected)
    # A single frame (an image) has no change to cost.
    img = flow_loss(zero, x0[:, :, :1], t, eps[:, :, :1], None, temporal_weight=1.0)
    torch.testing.assert_close(img, (eps - x0)[:, :, :1].square().mean())


def test_weight_map_weighs_each_position_and_ones_change_nothing():
    x0, eps = batch()
    t = torch.tensor([0.3, 0.6, 0.9])
    err = torch.randn(B, C, T, H, W)
    model = lambda x, tf, c, m: eps - x0 + err
    plain = flow_loss(model, x0, t, eps, None)
    torch.testing.assert_close(flow_loss(model, x0, t, eps, None, weight=torch.ones(1)), plain)
    weight = torch.rand(B, 1, T, H, W) * 3
    got = flow_loss(model, x0, t, eps, None, weight=weight)
    torch.testing.assert_close(got, (err.square() * weight).sum() / (weight.sum() * C))
    # Only where the weight is: an error elsewhere costs nothing.
    spot = torch.zeros(B, 1, T, H, W)
    spot[:, :, :, 1, 2] = 1.0
    only = flow_loss(model, x0, t, eps, None, weight=spot)
    torch.testing.assert_close(only, err[:, :, :, 1, 2].square().mean())
    # Known frames stay out, NaN there included, and their weight does not count.
    cond = FrameCondition.prefix(x0[:, :, :2], T)
    known = lambda tf: (tf == 0)[:, None, :, None, None]
    wild = lambda x, tf, c, m: torch.where(known(tf), torch.nan, eps - x0 + err)
    masked = flow_loss(wild, x0, t, eps, None, cond=cond, weight=weight)
    w = weight[:, :, 2:]
    torch.testing.assert_close(masked, (err[:, :, 2:].square() * w).sum() / (w.sum() * C))
