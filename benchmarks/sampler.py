"""Sampler error vs steps on data whose flow-matching velocity is known in closed form.

    python benchmarks/sampler.py [--points 20000] [--shift 1.0]

Data: a 2-D Gaussian and a 2-component Gaussian mixture. For x0 ~ N(mu, S) and eps ~ N(0, I),
x_t = (1 - t) x0 + t eps is Gaussian with mean m_t = (1 - t) mu and covariance
C_t = (1 - t)^2 S + t^2 I, and (eps - x0, x_t) are jointly Gaussian with
Cov(eps - x0, x_t) = t I - (1 - t) S, so

    E[eps - x0 | x_t] = -mu + (t I - (1 - t) S) C_t^{-1} (x_t - m_t).

For a mixture, each component's velocity is weighted by its posterior responsibility
r_k(x_t) ∝ pi_k N(x_t; m_t^k, C_t^k). The sampler's points are compared with the true data
mean and covariance, and per point with a reference ODE solution from the same noise (the
exact transport map for the Gaussian, mu + S^(1/2) eps; a 2048-step solve for the mixture).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from kinetoscope.diffusion.sampling import SAMPLERS, sample_fn, timesteps


@dataclass
class GaussianMixture:
    """A Gaussian mixture in D dims; `velocity` is its exact flow-matching velocity field."""

    weights: Tensor  # [K]
    means: Tensor  # [K, D]
    covs: Tensor  # [K, D, D]

    def moments(self) -> tuple[Tensor, Tensor]:
        """Returns the data mean [D] and covariance [D, D]."""
        w = self.weights / self.weights.sum()
        mean = (w[:, None] * self.means).sum(0)
        d = self.means - mean
        cov = (w[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)
        return mean, cov

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Returns E[eps - x0 | x_t = x] [N, D] at a scalar time t in (0, 1]."""
        eye = torch.eye(x.shape[1], dtype=x.dtype)
        m = (1 - t) * self.means  # [K, D]
        C = (1 - t) ** 2 * self.covs + t**2 * eye  # [K, D, D]
        Cinv = torch.linalg.inv(C)
        diff = x[:, None, :] - m[None]  # [N, K, D]
        sol = torch.einsum("kde,nke->nkd", Cinv, diff)  # C_t^{-1} (x - m_t)
        gain = t * eye - (1 - t) * self.covs  # [K, D, D]
        v_k = -self.means[None] + torch.einsum("kde,nke->nkd", gain, sol)  # [N, K, D]
        logp = -0.5 * (diff * sol).sum(-1) - 0.5 * torch.logdet(C)[None]
        r = torch.softmax(logp + self.weights.log()[None], dim=1)  # [N, K] responsibilities
        return (r[..., None] * v_k).sum(1)

    def as_velocity_fn(self):
        """Returns velocity_fn(x [N, D, 1, 1, 1], t_frames [N, 1]) for `sample_fn`."""

        def fn(x: Tensor, t_frames: Tensor) -> Tensor:
            t = float(t_frames[0, 0])
            return self.velocity(x.flatten(1), torch.tensor(t, dtype=x.dtype)).view_as(x)

        return fn


def gaussian() -> GaussianMixture:
    """Returns an anisotropic, correlated 2-D Gaussian."""
    cov = torch.tensor([[[0.30, 0.12], [0.12, 0.06]]], dtype=torch.float64)
    mean = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    return GaussianMixture(torch.ones(1, dtype=torch.float64), mean, cov)


def mixture() -> GaussianMixture:
    """Returns two narrow, well-separated 2-D Gaussians (a strongly curved flow)."""
    means = torch.tensor([[-1.5, 0.5], [1.5, -0.5]], dtype=torch.float64)
    covs = torch.tensor([[[0.05, 0.02], [0.02, 0.03]], [[0.02, 0.0], [0.0, 0.08]]]).double()
    return GaussianMixture(torch.tensor([0.3, 0.7], dtype=torch.float64), means, covs)


def solve(dist: GaussianMixture, noise: Tensor, steps: int, sampler: str, shift=1.0) -> Tensor:
    """Returns sampled points [N, D] from noise [N, D]."""
    x = noise.view(*noise.shape, 1, 1, 1)  # [N, D, T=1, H=1, W=1]
    ts = timesteps(steps, shift)
    out = sample_fn(dist.as_velocity_fn(), x, ts, sampler=sampler, progress=False)
    return out.flatten(1)


def exact_gaussian(dist: GaussianMixture, noise: Tensor) -> Tensor:
    """Returns the exact ODE endpoint mu + S^(1/2) eps for a single Gaussian."""
    evals, evecs = torch.linalg.eigh(dist.covs[0])
    root = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    return dist.means[0] + noise @ root.T


def errors(x: Tensor, ref: Tensor, dist: GaussianMixture) -> dict[str, float]:
    """Returns mean error |m - mu|, covariance error |C - S|_F, and per-point RMS vs `ref`."""
    mu, cov = dist.moments()
    return {
        "mean": float((x.mean(0) - mu).norm()),
        "cov": float((torch.cov(x.T) - cov).norm()),
        "path": float((x - ref).square().sum(1).mean().sqrt()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--shift", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="tiny tensors: 1 is fastest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    noise = torch.randn(args.points, 2, generator=torch.Generator().manual_seed(args.seed))
    noise = noise.double()
    print(f"{args.points} points, shift {args.shift}; mean/cov: error vs the true moments;")
    print("path: RMS distance per point to the exact (Gaussian) / 2048-step (mixture) solution\n")
    for name, dist in (("gaussian", gaussian()), ("mixture", mixture())):
        if name == "gaussian":
            ref = exact_gaussian(dist, noise)
        else:
            ref = solve(dist, noise, 2048, "dpm++2m", args.shift)
        floor = errors(ref, ref, dist)
        print(f"{name}: reference mean err {floor['mean']:.4f}, cov err {floor['cov']:.4f}")
        print(f"{'steps':>5} | " + " | ".join(f"{s:>26}" for s in SAMPLERS))
        print(f"{'':>5} | " + " | ".join(f"{'mean':>8} {'cov':>8} {'path':>8}" for _ in SAMPLERS))
        for steps in (2, 4, 8, 16, 32):
            cells = []
            for sampler in SAMPLERS:
                e = errors(solve(dist, noise, steps, sampler, args.shift), ref, dist)
                cells.append(f"{e['mean']:8.4f} {e['cov']:8.4f} {e['path']:8.4f}")
            print(f"{steps:>5} | " + " | ".join(cells))
        print()


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.1f} s)")
