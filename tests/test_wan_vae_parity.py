"""Our VAE reproduces Wan2.1's (diffusers' AutoencoderKLWan) given the same weights."""

import re

import pytest
import torch

from kinetoscope.interop.wan_vae_keys import from_diffusers, from_wan, load_wan_vae
from kinetoscope.models.vae import VAE, VAEConfig

diffusers = pytest.importorskip("diffusers")

MEAN = [0.3, -0.5, 0.1, 0.8]
STD = [1.5, 0.5, 2.0, 1.2]


@pytest.fixture(scope="module")
def pair():
    """Returns (diffusers model, our model with its weights): Wan's layout, scaled down."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 4, 4],  # Wan2.1's multipliers: decoder channel halving is exercised
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=MEAN,
        latents_std=STD,
    ).eval()
    # Attention starts as the identity in both; make it count so a wrong qkv split shows.
    for name, p in ref.named_parameters():
        if "attentions" in name and "proj.weight" in name:
            torch.nn.init.normal_(p, std=0.2)
    cfg = VAEConfig(
        dim=8, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=1, latents_mean=MEAN, latents_std=STD
    )
    ours = VAE(cfg).eval()
    load_wan_vae(ours, ref.state_dict())
    return ref, ours


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_encode_matches_wan(pair):
    ref, ours = pair
    x = torch.rand(1, 3, 17, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mu = ref.encode(x).latent_dist.mean  # un-normalised: apply Wan's scaling outside
        expected = (mu - torch.tensor(MEAN).view(1, 4, 1, 1, 1)) / torch.tensor(STD).view(
            1, 4, 1, 1, 1
        )
        z = ours.encode(x)
    assert z.shape == (1, 4, 5, 4, 6)
    assert _rel(z, expected) < 1e-4


def test_chunked_decode_of_17_frames_matches_wan(pair):
    ref, ours = pair
    z = torch.randn(1, 4, 5, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw = z * torch.tensor(STD).view(1, 4, 1, 1, 1) + torch.tensor(MEAN).view(1, 4, 1, 1, 1)
        expected = ref.decode(raw).sample  # diffusers decodes one latent frame at a time
        ours_chunked = ours.decode(z)
        ours_whole = ours.decode(z, chunked=False)
    assert ours_chunked.shape == (1, 3, 17, 32, 48)
    assert _rel(ours_chunked, expected) < 1e-4
    assert _rel(ours_whole, expected) < 1e-4


def test_diffusers_keys_map_onto_ours_one_to_one(pair):
    ref, ours = pair
    renamed = from_diffusers(ref.state_dict())
    assert len(renamed) == len(ref.state_dict())
    expected = {k for k in ours.state_dict() if not k.startswith("latents_")}
    assert set(renamed) == expected


# The original Wan2.1 checkpoint's names, written independently of wan_vae_keys.
_TO_ORIGINAL = [
    (r"\.norm1\.", ".residual.0."),
    (r"\.conv1\.", ".residual.2."),
    (r"\.norm2\.", ".residual.3."),
    (r"\.conv2\.", ".residual.6."),
    (r"^quant_conv\.", "conv1."),
    (r"^post_quant_conv\.", "conv2."),
    (r"\.conv_in\.", ".conv1."),
    (r"\.down\.", ".downsamples."),
    (r"\.up\.", ".upsamples."),
    (r"\.mid\.", ".middle."),
    (r"\.norm_out\.", ".head.0."),
    (r"\.conv_out\.", ".head.2."),
    (r"samples\.(\d+)\.conv\.", r"samples.\1.resample.1."),
]


def test_original_wan_keys_agree_with_diffusers_converter():
    """Original-layout names -> ours must match diffusers' own original -> diffusers converter.

    That converter hard-codes Wan2.1's num_res_blocks=2, so this uses its own tiny pair.
    """
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    ref = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, num_res_blocks=2)
    ours = VAE(VAEConfig(dim=4, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2))
    original = {}
    for key, value in ours.state_dict().items():
        if key.startswith("latents_"):
            continue
        for pattern, repl in _TO_ORIGINAL:
            key = re.sub(pattern, repl, key)
        original[key] = torch.randn_like(value)
    ref.load_state_dict(convert_wan_vae_to_diffusers(original), strict=True)  # names + shapes
    load_wan_vae(ours, original)
    for key, value in from_wan(original).items():
        assert torch.equal(ours.state_dict()[key], value), key
