"""Our DiT reproduces diffusers' WanTransformer3DModel given the same (renamed) weights."""

import pytest
import torch

from kinetoscope.interop.wan_dit_keys import (
    config_from_diffusers,
    from_diffusers,
    from_original,
    to_kinetoscope,
)
from kinetoscope.models.dit import DiT

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def pair():
    """A random tiny Wan model (non-zero modulation everywhere) and ours loaded from it."""
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cfg = config_from_diffusers(dict(ref.config))
    cfg.text_len = None  # diffusers does not pad; we feed both the same context length
    ours = DiT(cfg).eval()
    ours.load_state_dict(from_diffusers(ref.state_dict()), strict=True)
    return ref, ours


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("frames,h,w", [(1, 2, 2), (3, 6, 10), (5, 4, 8)])
def test_matches_diffusers_fp32(pair, frames, h, w):
    ref, ours = pair
    g = torch.Generator().manual_seed(frames * 100 + h)
    x = torch.randn(2, 4, frames, h, w, generator=g)
    ts = torch.tensor([250.0, 937.0])
    ctx = torch.randn(2, 7, 32, generator=g)
    with torch.no_grad():
        want = ref(x, ts, ctx, return_dict=False)[0]
        got = ours(x, ts / 1000.0, ctx)
    assert rel_err(got, want) < 1e-4
    assert (got - want).abs().max() < 1e-4 * want.abs().max()


def test_per_frame_t_matches_diffusers_per_token_t(pair):
    """Per-frame t is Wan2.2's per-token timestep with each frame's t repeated over its tokens."""
    ref, ours = pair
    g = torch.Generator().manual_seed(7)
    frames, h, w = 3, 4, 6
    x = torch.randn(2, 4, frames, h, w, generator=g)
    ctx = torch.randn(2, 5, 32, generator=g)
    t = torch.tensor([[0.0, 0.5, 1.0], [0.9, 0.2, 0.3]])
    per_token = (t * 1000).repeat_interleave((h // 2) * (w // 2), dim=1)  # [B, T*H'*W']
    with torch.no_grad():
        want = ref(x, per_token, ctx, return_dict=False)[0]
        got = ours(x, t, ctx)
        scalar = ours(x, t[:, 1], ctx)
    assert rel_err(got, want) < 1e-4
    assert rel_err(got, scalar) > 1e-2  # the frames' different t really matter


def test_original_layout_loads_and_unknown_keys_raise(pair):
    _, ours = pair
    original = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    assert to_kinetoscope(original).keys() == ours.state_dict().keys()
    with pytest.raises(ValueError, match="img_emb"):
        from_original({**ours.state_dict(), "img_emb.proj.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="add_k_proj"):
        from_diffusers({"blocks.0.attn2.add_k_proj.weight": torch.zeros(1)})
