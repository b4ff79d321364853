"""Closed-form score models with exact Hessians: the test oracles of docs/math.md §3.

They plug into the same :class:`~sailscope.core.score.GuidedScore` contract as a real UNet
(``sigma = 1``, so ``eps = -s``), so every estimator (JVP, finite difference, Hutchinson, Arnoldi,
Lanczos, SAIL) can be checked against ``torch.linalg.eig`` of the exact Hessian.
Latents are ``(B, d)`` or ``(B, *shape)`` with ``prod(shape) = d``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sailscope.core.score import GuidedScore


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


@dataclass(frozen=True)
class Gaussian:
    """``N(mean, precision^{-1})``: ``s(x) = -P (x - mean)``, ``H = -P`` everywhere."""

    mean: Tensor  # (d,)
    precision: Tensor  # (d, d), symmetric positive definite

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def score(self, x: Tensor) -> Tensor:
        xf = _flat(x)
        return (-(xf - self.mean) @ self.precision.T).reshape(x.shape)

    def hessian(self, x: Tensor | None = None) -> Tensor:
        return -self.precision

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        cov = torch.linalg.inv(self.precision)
        chol = torch.linalg.cholesky(0.5 * (cov + cov.T))
        z = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype)
        return self.mean + z @ chol.T

    @classmethod
    def diagonal(cls, mean: Tensor, precisions: Tensor) -> "Gaussian":
        return cls(mean=mean, precision=torch.diag(precisions))

    @classmethod
    def random(cls, dim: int, *, generator: torch.Generator | None = None, dtype=torch.float64,
               eig_range: tuple[float, float] = (0.5, 4.0)) -> "Gaussian":
        """A random SPD precision with eigenvalues spread in ``eig_range`` and a random mean."""
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=dtype))
        lam = torch.linspace(*eig_range, dim, dtype=dtype)
        p = (q * lam) @ q.T
        return cls(mean=torch.randn(dim, generator=generator, dtype=dtype), precision=0.5 * (p + p.T))


@dataclass(frozen=True)
class GaussianMixture:
    """``Σ_k π_k N(mean_k, P_k^{-1})`` with closed-form score and Hessian (not constant, not symmetric-free)."""

    weights: Tensor  # (K,)
    means: Tensor  # (K, d)
    precisions: Tensor  # (K, d, d)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _log_resp(self, xf: Tensor) -> tuple[Tensor, Tensor]:
        diff = xf[:, None, :] - self.means[None]  # (B, K, d)
        g = -torch.einsum("kij,bkj->bki", self.precisions, diff)  # per-component score (B, K, d)
        maha = -(diff * g).sum(-1)  # (x-m)^T P (x-m)
        logdet = torch.linalg.slogdet(self.precisions)[1]  # log|P_k|
        logp = torch.log(self.weights)[None] + 0.5 * logdet[None] - 0.5 * maha
        return torch.softmax(logp, dim=1), g

    def score(self, x: Tensor) -> Tensor:
        w, g = self._log_resp(_flat(x))
        return (w[..., None] * g).sum(1).reshape(x.shape)

    def hessian(self, x: Tensor) -> Tensor:
        """Exact ``∇² log p`` at each sample: ``Σ w_k (-P_k + g_k g_kᵀ) - s sᵀ`` -> ``(B, d, d)``."""
        w, g = self._log_resp(_flat(x))
        s = (w[..., None] * g).sum(1)
        h = -torch.einsum("bk,kij->bij", w, self.precisions)
        h = h + torch.einsum("bk,bki,bkj->bij", w, g, g) - s[:, :, None] * s[:, None, :]
        return h

    @classmethod
    def random(cls, dim: int, components: int = 3, *, generator: torch.Generator | None = None,
               dtype=torch.float64, spread: float = 1.0) -> "GaussianMixture":
        ps = torch.stack([Gaussian.random(dim, generator=generator, dtype=dtype).precision for _ in range(components)])
        means = spread * torch.randn(components, dim, generator=generator, dtype=dtype)
        return cls(weights=torch.full((components,), 1.0 / components, dtype=dtype), means=means, precisions=ps)


@dataclass(frozen=True)
class DiffusedPoints:
    """The exact noised density of a finite data set: ``p_t(x) = Σ_i w_i N(x; √ᾱ x_i, (1-ᾱ) I)``.

    Its score is what a perfectly trained denoiser of those points predicts at noise level ``ᾱ``, so the
    metrics evaluated on it are the *data-level* values a model can at best learn (docs/math.md §3.2 for one
    point: ``H = -I/(1-ᾱ)``, the sharpest conditional). ``O(B·N·d)`` per call, no ``(d, d)`` matrices.
    """

    points: Tensor  # (N, d)
    log_weights: Tensor  # (N,), need not be normalized
    abar: float

    @classmethod
    def from_points(cls, points: Tensor, abar: float, weights: Tensor | None = None) -> "DiffusedPoints":
        pts = _flat(points)
        if not 0.0 < abar < 1.0:
            raise ValueError(f"abar must be in (0, 1), got {abar}")
        w = torch.ones(len(pts), dtype=pts.dtype) if weights is None else torch.as_tensor(weights, dtype=pts.dtype)
        if w.shape != (len(pts),) or bool((w <= 0).any()):
            raise ValueError("weights must be one positive number per point")
        return cls(points=pts, log_weights=w.log(), abar=float(abar))

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    @property
    def sigma2(self) -> float:
        return 1.0 - self.abar

    def _resp(self, xf: Tensor) -> Tensor:
        """Posterior weights ``r_i(x) ∝ w_i exp(-‖x - √ᾱ x_i‖² / 2σ²)`` -> ``(B, N)``."""
        a = self.abar**0.5
        # ‖x - a p‖² = ‖x‖² - 2a x·p + a²‖p‖²; the ‖x‖² term cancels in the softmax
        logits = self.log_weights[None] + (2 * a * xf @ self.points.T - self.abar * (self.points**2).sum(1)[None]) / (
            2 * self.sigma2)
        return torch.softmax(logits, dim=1)

    def score(self, x: Tensor) -> Tensor:
        """``(√ᾱ E_r[x_i] - x) / σ²`` (Tweedie)."""
        xf = _flat(x)
        return ((self.abar**0.5 * self._resp(xf) @ self.points - xf) / self.sigma2).reshape(x.shape)

    def hessian(self, x: Tensor) -> Tensor:
        """Exact ``∇² log p_t = -I/σ² + ᾱ/σ⁴ Cov_r[x_i]`` -> ``(B, d, d)`` (for tests and small ``d``)."""
        r = self._resp(_flat(x))
        mean = r @ self.points
        second = torch.einsum("bn,ni,nj->bij", r, self.points, self.points)
        cov = second - mean[:, :, None] * mean[:, None, :]
        eye = torch.eye(self.dim, dtype=self.points.dtype)
        return -eye / self.sigma2 + self.abar / self.sigma2**2 * cov


def guided_from_models(cond, uncond, sigma: float = 1.0) -> GuidedScore:
    """A :class:`GuidedScore` whose conditional/unconditional scores are two closed-form models.

    ``eps = -sigma * s`` so that ``GuidedScore.score_pair`` returns exactly ``(cond.score, uncond.score)``.
    """

    def eps_pair(x: Tensor) -> tuple[Tensor, Tensor]:
        return -sigma * cond.score(x), -sigma * uncond.score(x)

    return GuidedScore(eps_pair=eps_pair, sigma=sigma)
