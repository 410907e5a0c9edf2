"""The video compression network: shapes, causality, chunked == whole, tiling, losses, metrics."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from kinetoscope.metrics import psnr, ssim
from kinetoscope.models.vae import PRESETS, VAE, VAEConfig, widen_decoder
from kinetoscope.models.vae_loss import (
    PatchDiscriminator3D,
    hinge_d_loss,
    hinge_g_loss,
    kl_divergence,
    vae_loss,
)

SMALL = VAEConfig(dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = VAE(SMALL).eval()
    # Attention starts as the identity (zero proj, as Wan); give it weight so tests see it.
    for block in (model.encoder.mid[1], model.decoder.mid[1]):
        torch.nn.init.normal_(block.proj.weight, std=0.3)
    return model


def _video(t, h, w, seed=0):
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(
    "t,h,w", [(1, 64, 48), (5, 64, 48), (1, 40, 72), (5, 40, 72), (17, 40, 16)]
)
@torch.no_grad()
def test_shapes(vae, t, h, w):
    z = vae.encode(_video(t, h, w))
    assert z.shape == (1, 16, 1 + (t - 1) // 4, h // 8, w // 8)
    assert vae.decode(z).shape == (1, 3, t, h, w)


@torch.no_grad()
def test_bad_sizes_raise_with_values(vae):
    with pytest.raises(ValueError, match="T=6"):
        vae.encode(_video(6, 32, 32))
    with pytest.raises(ValueError, match="H=36, W=32"):
        vae.encode(_video(5, 36, 32))
    with pytest.raises(ValueError, match=r"\[1, 3, 32, 32\]"):
        vae.encode(torch.zeros(1, 3, 32, 32))


def test_fp32_inference_convs_run_on_onednn_and_equal_torchs_own_path():
    import torch.nn.functional as F
    from torch import nn

    from kinetoscope.models import vae as V

    torch.manual_seed(0)
    conv = V.CausalConv3d(8, 16, 3, padding=1)  # time padding 2, all before the first frame
    x = torch.randn(1, 8, 5, 9, 11)
    with torch.no_grad():
        fast = conv(x)
        slow = nn.Conv3d.forward(conv, F.pad(x, (0, 0, 0, 0, 2, 0)))
        assert V._onednn_fp32(x) == torch.backends.mkldnn.is_available()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not V._onednn_fp32(x)  # autocast's bf16 convs are oneDNN already
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert not V._onednn_fp32(x)  # gradients enabled: torch's own conv, which has a backward
    x.requires_grad_(True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


@torch.no_grad()
def test_chunked_equals_whole_clip(vae):
    x = _video(17, 16, 16)
    mean_c, logvar_c = vae.encode_dist(x)  # frame 0, then 4 frames at a time, with cache
    mean_w, logvar_w = vae.encode_dist(x, chunked=False)
    torch.testing.assert_close(mean_c, mean_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar_c, logvar_w, rtol=1e-5, atol=1e-5)
    z = torch.randn(1, 16, 5, 2, 2, generator=torch.Generator().manual_seed(1))
    chunked = vae.decode(z)  # one latent frame at a time
    assert chunked.shape[2] == 17
    torch.testing.assert_close(chunked, vae.decode(z, chunked=False), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = vae.decode(z), vae.decode(z, chunked=False)
    # bf16 (8 mantissa bits) rounds differently along the two paths: they agree to within
    # the bf16 error itself (measured ~3% mean relative to fp32 for this dim=4 model).
    scale = chunked.abs().mean()
    assert (a.float() - b.float()).abs().mean() < 0.05 * scale
    assert (a.float() - chunked).abs().mean() < 0.05 * scale


@torch.no_grad()
def test_encoder_is_causal(vae):
    x = _video(17, 16, 16)
    base = vae.encode(x)
    for k in (1, 6, 13):  # frame k lives in latent frame ceil(k / 4)
        x2 = x.clone()
        x2[:, :, k] = -x2[:, :, k]
        z = vae.encode(x2)
        first = -(-k // 4)
        assert torch.equal(z[:, :, :first], base[:, :, :first]), k
        assert not torch.allclose(z[:, :, first], base[:, :, first]), k


@torch.no_grad()
def test_decoder_is_causal(vae):
    z = torch.randn(1, 16, 4, 2, 2, generator=torch.Generator().manual_seed(2))
    base = vae.decode(z)
    z2 = z.clone()
    z2[:, :, 2] += 1.0  # latent 2 decodes to frames 5..8
    x = vae.decode(z2)
    assert torch.equal(x[:, :, :5], base[:, :, :5])
    assert not torch.allclose(x[:, :, 5:9], base[:, :, 5:9])


@torch.no_grad()
def test_inflated_vae_treats_a_still_clip_like_its_image():
    # The training init: clips start where a phase of images left their frames.
    torch.manual_seed(0)
    model = VAE(SMALL).eval()
    x = _video(1, 32, 32)
    still = x.repeat(1, 1, 9, 1, 1)
    before = model.decode(model.encode(still))
    assert (before - before[:, :, :1]).abs().max() > 1e-2  # random past taps mix in frames
    model.inflate_()
    image = model.decode(model.encode(x))
    clip = model.decode(model.encode(still))
    torch.testing.assert_close(clip, image.expand_as(clip), rtol=0, atol=1e-5)
    moving = _video(9, 32, 32)  # and each frame group is its latest frame's image
    z = model.encode(moving)
    torch.testing.assert_close(
        z[:, :, 1], model.encode(moving[:, :, 4:5])[:, :, 0], atol=1e-5, rtol=0
    )


@torch.no_grad()
def test_image_is_a_one_frame_video(vae):
    x = _video(9, 32, 32)
    torch.testing.assert_close(vae.encode(x[:, :, :1]), vae.encode(x)[:, :, :1], rtol=0, atol=0)


@torch.no_grad()
def test_normalisation_and_sampling():
    torch.manual_seed(0)
    cfg = VAEConfig(**{**SMALL.__dict__, "latents_mean": (0.5,) * 16, "latents_std": (2.0,) * 16})
    model = VAE(cfg).eval()
    assert {"latents_mean", "latents_std"} <= set(model.state_dict())  # saved with the weights
    x = _video(5, 16, 16)
    mean, _ = model.encode_dist(x)
    torch.testing.assert_close(model.encode(x), (mean - 0.5) / 2.0)
    g = lambda: torch.Generator().manual_seed(7)
    s1, s2 = (
        model.encode(x, sample=True, generator=g()),
        model.encode(x, sample=True, generator=g()),
    )
    assert torch.equal(s1, s2) and not torch.allclose(s1, model.encode(x))


@torch.no_grad()
def test_tiling_exact_when_one_tile_covers_the_frame(vae):
    z = torch.randn(1, 16, 2, 6, 5, generator=torch.Generator().manual_seed(3))
    whole = vae.decode(z, tile=False)
    assert torch.equal(vae.decode(z, tile=(6, 2)), whole)
    assert torch.equal(vae.decode(z), whole)  # small frames are not tiled automatically
    x = _video(1, 48, 40)
    assert torch.equal(vae.encode(x, tile=(8, 3)), vae.encode(x, tile=False))


@torch.no_grad()
def test_tiled_blending_is_close_and_beats_hard_seams(vae):
    """Tiles lose context at their borders, so tiled output is approximate.

    This untrained model's theoretical receptive field (~12 latent cells of 3x3 convs, plus
    a global attention in the middle) is wider than any overlap here, unlike a trained VAE's
    effective one, so we only ask that the error be a modest fraction of the signal and that
    blended overlaps beat abutting tiles.
    """
    z = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    whole = vae.decode(z, tile=False)
    err = lambda tile: ((vae.decode(z, tile=tile) - whole).abs().mean() / whole.abs().mean()).item()
    blended, seams = err((6, 4)), err((4, 0))
    assert blended < 0.5 * seams
    assert blended < 0.3
    x = _video(1, 64, 64)
    ref = vae.encode(x, tile=False)
    enc_err = ((vae.encode(x, tile=(6, 4)) - ref).abs().mean() / ref.abs().mean()).item()
    assert enc_err < 0.3


def test_training_forward_backward_and_bf16(vae):
    x = _video(5, 16, 16)
    recon, mean, logvar = vae(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and mean.shape == logvar.shape == (1, 16, 2, 2, 2)
    losses = vae_loss(x, recon, mean, logvar, kl_weight=1e-3)
    losses["loss"].backward()
    assert vae.encoder.conv_in.weight.grad is not None
    vae.zero_grad(set_to_none=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z = vae.encode(x)
        assert vae.decode(z).dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(z.float(), vae.encode(x), rtol=0.1, atol=0.1)


def test_presets():
    assert PRESETS["wan2.1"].latents_mean[0] == -0.7571 and len(PRESETS["wan2.1"].latents_std) == 16
    cfg = PRESETS["tiny"]
    assert (cfg.time_factor, cfg.space_factor, cfg.z_dim) == (4, 4, 16)
    with pytest.raises(ValueError, match="nope"):
        VAE.from_preset("nope")


def test_losses():
    x = torch.zeros(1, 3, 5, 8, 8)
    mean, logvar = torch.zeros(1, 16, 2, 1, 1), torch.zeros(1, 16, 2, 1, 1)
    out = vae_loss(x, x + 0.5, mean, logvar, kl_weight=0.1)
    assert out["l1"].item() == pytest.approx(0.5) and out["kl"].item() == 0.0
    assert kl_divergence(mean + 2.0, logvar).item() == pytest.approx(2.0)  # 0.5 * mu^2
    # MSE weighs one badly wrong pixel (an object missed) over many slightly wrong ones.
    small, big = x + 0.1, x.clone()
    big.view(-1)[0] = 0.1 * x.numel()  # the same L1 as `small`, all in one pixel
    a, b = vae_loss(x, small, mean, logvar, 0.0, 1.0), vae_loss(x, big, mean, logvar, 0.0, 1.0)
    assert a["l1"].item() == pytest.approx(b["l1"].item()) == pytest.approx(0.1)
    assert a["mse"].item() == pytest.approx(0.01) and b["loss"].item() > 10 * a["loss"].item()
    disc = PatchDiscriminator3D(dim=8)
    logits = disc(torch.randn(2, 3, 5, 32, 32))
    assert logits.shape[:2] == (2, 1) and logits.shape[2] == 5
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == 1.0
    assert hinge_g_loss(torch.full((4,), 3.0)).item() == -3.0


def test_metrics():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    noisy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) > psnr(a, noisy) and ssim(a, b) > ssim(a, noisy)
    # The same pixels as a [-1, 1] tensor [3, T, H, W] give the same numbers.
    t = torch.from_numpy(b).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert psnr(a, t) == pytest.approx(psnr(a, b)) and ssim(a, t) == pytest.approx(ssim(a, b))
    mse = ((a / 255.0 - b / 255.0) ** 2).mean()
    assert psnr(a, b) == pytest.approx(10 * np.log10(1 / mse))
    with pytest.raises(ValueError):
        psnr(a, a[:2])


def test_a_wider_decoder_grows_from_a_narrow_one_and_decodes_as_before(vae):
    """widen_decoder: the same encoder, a decoder twice as wide at full resolution that decodes
    what the narrow one did, and whose new channels all learn (none starts dead)."""
    wide = VAE(replace(SMALL, dec_dim_mult=(2, 2, 2, 2)))
    assert wide.decoder.conv_out.in_channels == 2 * vae.decoder.conv_out.in_channels
    wide.load_state_dict(widen_decoder(vae.state_dict(), wide))
    x = _video(5, 16, 24)
    with torch.no_grad():
        z = vae.encode(x)
        assert torch.equal(wide.encode(x), z)
        want, got = vae.decode(z), wide.decode(z)
    assert (got - want).abs().max() < 1e-3 * want.abs().max()

    wide.decode(z).square().mean().backward()
    new = wide.decoder.conv_out.weight.grad[:, vae.decoder.conv_out.in_channels :]
    assert new.abs().min() > 0  # the new channels' outgoing weights get a gradient

    with pytest.raises(ValueError, match="does not widen"):
        widen_decoder(wide.state_dict(), vae)  # narrower is not wider
    other = VAE(replace(SMALL, dim=8, dec_dim_mult=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="^encoder"):
        widen_decoder(vae.state_dict(), other)  # another encoder: not a decoder to grow
    with pytest.raises(ValueError, match="dec_dim_mult needs one multiplier per level"):
        VAEConfig(dim_mult=(1, 2, 4), dec_dim_mult=(2, 4), temperal_downsample=(True, True))
