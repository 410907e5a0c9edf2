"""VAE training losses: L1 reconstruction + KL, and an optional 3D patch-GAN with hinge loss."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Returns KL(N(mean, exp(logvar)) || N(0, 1)) averaged over every latent element."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


def vae_loss(
    x: torch.Tensor,
    recon: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float = 1e-6,
    mse_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Returns {"loss", "l1", "mse", "kl"}: loss = l1 + mse_weight * mse + kl_weight * kl (fp32).

    x, recon: `[B, 3, T, H, W]` in [-1, 1]; mean, logvar: the posterior `[B, z, t, h, w]`.
    Every term is a per-element mean, so the weights do not depend on the clip size. L1 gives
    every pixel the same pull, so small objects on a large background are learned last; the
    MSE term pulls hardest where the error is largest (seen here: a tiny VAE on ShapeWorld
    drew backgrounds but no objects after 600 steps of L1 alone).
    """
    if x.shape != recon.shape:
        raise ValueError(f"x and recon shapes differ: {list(x.shape)} vs {list(recon.shape)}")
    err = x.float() - recon.float()
    l1, mse = err.abs().mean(), err.square().mean()
    kl = kl_divergence(mean, logvar)
    return {"loss": l1 + mse_weight * mse + kl_weight * kl, "l1": l1, "mse": mse, "kl": kl}


class PatchDiscriminator3D(nn.Module):
    """Returns real/fake logits `[B, 1, t, h, w]`, one per space-time patch of a video.

    A small PatchGAN (pix2pix) in 3D: strided convs halve space (not time) with GroupNorm and
    LeakyReLU; each logit judges a local patch, which is what sharpens VAE textures.
    """

    def __init__(self, dim: int = 32, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv3d(3, dim, (3, 4, 4), stride=(1, 2, 2), padding=1),
            nn.LeakyReLU(0.2),
        ]
        in_dim = dim
        for i in range(1, num_layers):
            out_dim = dim * min(2**i, 8)
            layers += [
                nn.Conv3d(in_dim, out_dim, (3, 4, 4), stride=(1, 2, 2), padding=1, bias=False),
                nn.GroupNorm(min(32, out_dim // 4), out_dim),
                nn.LeakyReLU(0.2),
            ]
            in_dim = out_dim
        layers.append(nn.Conv3d(in_dim, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Returns the discriminator's hinge loss: mean relu(1 - real) + mean relu(1 + fake), / 2."""
    real = F.relu(1.0 - logits_real.float()).mean()
    fake = F.relu(1.0 + logits_fake.float()).mean()
    return 0.5 * (real + fake)


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Returns the generator's (the VAE decoder's) adversarial loss: -mean(fake logits)."""
    return -logits_fake.float().mean()
