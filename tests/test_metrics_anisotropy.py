"""The anisotropy detector (docs/math.md §6) against closed forms on the Gaussian oracles of §3.

For Gaussians ``N(μ, P⁻¹)`` the score is linear, ``s(x) = -P (x - μ)``, so the guidance direction, its norm and
its angle with the unconditional score are known in closed form; the tests compare the metric functions, fed with
the oracles' eps (``eps = -σ s``), against those forms. Exact identities are checked to fp64 rounding; Monte-Carlo
ones to 5 standard errors; high-dimensional concentration to a tolerance well above its O(1/√d) spread.
"""
from __future__ import annotations

import pytest
import torch

from sailscope.core.metrics import (
    ANISOTROPY_AUTHOR_WEIGHTS,
    anisotropy,
    anisotropy_score,
    guidance_alignment,
    low_noise_timestep,
    wen_metric,
)
from sailscope.core.oracles import Gaussian, guided_from_models

F64 = torch.float64


def _sd_abar(t: int) -> float:
    """``ᾱ_t`` of Stable Diffusion's scaled-linear schedule (β from 0.00085 to 0.012 over 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
    return float(torch.cumprod(1 - betas, 0)[t])


def _diffused(mean: torch.Tensor, var: torch.Tensor, abar: float) -> Gaussian:
    """Data ``N(mean, diag(var))`` noised to level ᾱ: exactly ``N(√ᾱ mean, diag(ᾱ var + 1 - ᾱ))``."""
    return Gaussian.diagonal(abar**0.5 * mean, 1.0 / (abar * var + (1 - abar)))


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q


def _eps(cond: Gaussian, uncond: Gaussian, x: torch.Tensor, sigma: float):
    return guided_from_models(cond, uncond, sigma=sigma).eps_pair(x)


# ----------------------------------------------------------------------------------------------
# Closed forms of the two terms
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,sign", [(1.0, 4.0, 1.0), (2.0, 0.5, -1.0)])
def test_isotropic_pair_norm_and_angle(a, b, sign):
    """P_u = a I, P_c = b I, equal means: eps_Δ = σ (b - a)(x - μ), so ‖eps_Δ‖ = σ |b - a| ‖x - μ‖ and the angle
    with s_u = -a (x - μ) is exactly 0 (conditional sharper) or π (broader): cos = sign(b - a)."""
    d, sigma = 10, 0.7
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(d, generator=g, dtype=F64)
    cond = Gaussian(mu, b * torch.eye(d, dtype=F64))
    uncond = Gaussian(mu, a * torch.eye(d, dtype=F64))
    x = torch.randn(5, d, generator=g, dtype=F64)
    eps_c, eps_u = _eps(cond, uncond, x, sigma)
    want_norm = sigma * abs(b - a) * (x - mu).norm(dim=1)
    assert torch.allclose(wen_metric(eps_c, eps_u), want_norm, rtol=1e-12)
    assert torch.allclose(guidance_alignment(eps_c, eps_u), torch.full((5,), sign, dtype=F64), atol=1e-12)


def test_angle_in_the_common_eigenbasis():
    """Commuting precisions P_u = Q diag(a) Qᵀ, P_c = Q diag(b) Qᵀ, equal means, y = Qᵀ(x - μ):
    cos∠(s_u, sΔ) = Σ a_i (b_i - a_i) y_i² / (‖a ⊙ y‖ ‖(b - a) ⊙ y‖), and ‖eps_Δ‖ = σ ‖(b - a) ⊙ y‖."""
    d, sigma = 16, 0.9
    g = torch.Generator().manual_seed(1)
    q = _rotation(d, 1)
    a = torch.linspace(0.3, 3.0, d, dtype=F64)
    b = torch.rand(d, generator=g, dtype=F64) * 5 + 0.1  # some directions sharper, some broader
    mu = torch.randn(d, generator=g, dtype=F64)
    cond, uncond = Gaussian(mu, (q * b) @ q.T), Gaussian(mu, (q * a) @ q.T)
    x = torch.randn(7, d, generator=g, dtype=F64)
    y = (x - mu) @ q
    want_cos = (a * (b - a) * y**2).sum(1) / ((a * y).norm(dim=1) * ((b - a) * y).norm(dim=1))
    eps_c, eps_u = _eps(cond, uncond, x, sigma)
    assert torch.allclose(guidance_alignment(eps_c, eps_u), want_cos, rtol=1e-10, atol=1e-12)
    assert torch.allclose(wen_metric(eps_c, eps_u), sigma * ((b - a) * y).norm(dim=1), rtol=1e-10)


@pytest.mark.parametrize("c,want", [(3.0, 1.0), (0.4, -1.0)])
def test_proportional_precisions_are_exactly_aligned(c, want):
    """P_c = c P_u with equal means gives sΔ = (c - 1) s_u: cos = sign(c - 1) however anisotropic P_u is."""
    g = torch.Generator().manual_seed(2)
    uncond = Gaussian.random(12, generator=g, eig_range=(0.1, 10.0))
    cond = Gaussian(uncond.mean, c * uncond.precision)
    x = torch.randn(6, 12, generator=g, dtype=F64)
    cos = guidance_alignment(*_eps(cond, uncond, x, 0.5))
    assert torch.allclose(cos, torch.full_like(cos, want), atol=1e-10)


def test_expected_norm_and_angle_on_pure_noise():
    """x ~ N(0, I) (the detector's input), diagonal precisions a (uncond), b (cond), means m_u, m_c:
    E‖eps_Δ‖² = σ² Σ [(b - a)² + (b m_c - a m_u)²]; and in high dimension cos∠(s_u, sΔ) concentrates at
    E⟨s_u, sΔ⟩ / √(E‖s_u‖² E‖sΔ‖²) with E⟨s_u, sΔ⟩ = Σ [a b (1 + m_u m_c) - a² (1 + m_u²)] and
    E‖s_u‖² = Σ a² (1 + m_u²)."""
    d, n, sigma = 400, 2000, 0.8
    g = torch.Generator().manual_seed(3)
    a = torch.rand(d, generator=g, dtype=F64) * 2 + 0.2
    b = torch.rand(d, generator=g, dtype=F64) * 6 + 0.2
    m_u = 0.5 * torch.randn(d, generator=g, dtype=F64)
    m_c = torch.randn(d, generator=g, dtype=F64)
    cond, uncond = Gaussian.diagonal(m_c, b), Gaussian.diagonal(m_u, a)
    x = torch.randn(n, d, generator=g, dtype=F64)
    eps_c, eps_u = _eps(cond, uncond, x, sigma)

    sq = wen_metric(eps_c, eps_u) ** 2
    want_sq = sigma**2 * ((b - a) ** 2 + (b * m_c - a * m_u) ** 2).sum().item()
    se = sq.std().item() / n**0.5
    assert abs(sq.mean().item() - want_sq) <= 5 * se

    e_uv = (a * b * (1 + m_u * m_c) - a**2 * (1 + m_u**2)).sum()
    e_uu = (a**2 * (1 + m_u**2)).sum()
    e_vv = ((b - a) ** 2 + (b * m_c - a * m_u) ** 2).sum()
    want_cos = (e_uv / (e_uu * e_vv).sqrt()).item()
    cos = guidance_alignment(eps_c, eps_u)
    assert cos.std().item() < 3 / d**0.5  # concentrated ...
    assert abs(cos.mean().item() - want_cos) < 0.01  # ... at the closed-form limit (bias O(1/d))


def test_channel_angle_averages_per_position_cosines():
    """``over="channel"``: latents (B, C, P); position p is an isotropic pair with precisions a (uncond) and b_p
    (cond), equal means, so its channel cosine is sign(b_p - a) and the mean over positions is closed form."""
    c, p, a, sigma = 4, 6, 1.0, 0.5
    b = torch.tensor([3.0, 0.2, 5.0, 2.0, 0.5, 1.5], dtype=F64)  # 4 positions sharper, 2 broader
    prec = torch.diag(torch.cat([torch.full((c,), float(bp), dtype=F64) for bp in b]))  # position-major layout
    cond = Gaussian(torch.zeros(c * p, dtype=F64), prec)
    uncond = Gaussian(torch.zeros(c * p, dtype=F64), a * torch.eye(c * p, dtype=F64))
    x = torch.randn(3, p, c, generator=torch.Generator().manual_seed(4), dtype=F64)  # (B, P, C)
    eps_c, eps_u = _eps(cond, uncond, x, sigma)

    def to_bcp(t):  # (B, C, P): channels on dim 1
        return t.reshape(3, p, c).transpose(1, 2)

    got = guidance_alignment(to_bcp(eps_c), to_bcp(eps_u), over="channel")
    want = torch.sign(b - a).mean().item()  # (4 - 2) / 6
    assert torch.allclose(got, torch.full((3,), want, dtype=F64), atol=1e-12)
    # the whole-vector angle of the same pair is a different, norm-weighted average
    whole = guidance_alignment(eps_c, eps_u)
    assert not torch.allclose(whole, got, atol=1e-3)


def test_alignment_edge_cases():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float16)
    assert guidance_alignment(x, x).dtype == torch.float32  # half inputs promoted
    assert torch.equal(guidance_alignment(x.float(), x.float()), torch.zeros(2))  # zero guidance -> 0, not NaN
    with pytest.raises(ValueError):
        guidance_alignment(x, x, over="pixel")


# ----------------------------------------------------------------------------------------------
# The detector: two evaluations of the same latent, and its ranking
# ----------------------------------------------------------------------------------------------
class _Counting:
    def __init__(self, gs):
        self.gs, self.calls = gs, 0

    def eps_pair(self, x):
        self.calls += 1
        return self.gs.eps_pair(x)


def test_anisotropy_uses_two_evaluations_of_one_latent():
    d = 24
    g = torch.Generator().manual_seed(5)
    hi = guided_from_models(Gaussian.random(d, generator=g), Gaussian.random(d, generator=g), sigma=0.99)
    lo = guided_from_models(Gaussian.random(d, generator=g), Gaussian.random(d, generator=g), sigma=0.2)
    x = torch.randn(3, d, generator=g, dtype=F64)
    chi, clo = _Counting(hi), _Counting(lo)
    out = anisotropy(chi, clo, x, norm_weight=1.5, alignment_weight=0.3)
    assert (chi.calls, clo.calls) == (1, 1)  # "two forward passes" (each one batched cond+uncond call)
    assert torch.allclose(out.guidance_norm, wen_metric(*hi.eps_pair(x)))
    assert torch.allclose(out.alignment, guidance_alignment(*lo.eps_pair(x)))
    assert torch.allclose(out.score, 1.5 * out.guidance_norm + 0.3 * out.alignment)
    again = anisotropy(chi, clo, x, eps_high=hi.eps_pair(x), norm_weight=1.5, alignment_weight=0.3)
    assert chi.calls == 1 and clo.calls == 2  # first step's eps already known: one extra evaluation
    assert torch.allclose(again.score, out.score)


def test_sd_schedule_evaluation_points():
    assert low_noise_timestep(list(range(981, 0, -20))) == 41
    assert low_noise_timestep(torch.tensor([999, 500, 1]), from_end=1) == 1
    with pytest.raises(ValueError):
        low_noise_timestep([10, 5], from_end=3)
    assert ANISOTROPY_AUTHOR_WEIGHTS["sd1"] == (1.0, 2.0)
    assert torch.allclose(anisotropy_score(torch.tensor([2.0]), torch.tensor([0.5])), torch.tensor([3.0]))


def _limit_cos(a, b, m_u, m_c):
    """High-dimensional limit of cos∠(s_u, sΔ) on x ~ N(0, I) for diagonal precisions (see the test above)."""
    e_uv = (a * b * (1 + m_u * m_c) - a**2 * (1 + m_u**2)).sum()
    e_uu = (a**2 * (1 + m_u**2)).sum()
    e_vv = ((b - a) ** 2 + (b * m_c - a * m_u) ** 2).sum()
    return (e_uv / (e_uu * e_vv).sqrt()).item()


@pytest.mark.parametrize("broad", ["isotropic", "anisotropic"])
def test_sharp_conditional_outranks_broad(broad):
    """Data-level Gaussians noised exactly to SD's first step (t = 981) and its low-noise point (t = 41), scored on
    pure noise as the detector does: a near-point conditional ("memorized", variance 1e-4) scores above a broad
    conditional with the same mean for every latent, under the authors' SD 1.x weights. Both terms follow their
    closed forms, and the closed forms order sharp above broad: at t = 981 the norm gap is O(ᾱ_t), small; the angle
    at t = 41 does most of the separating, which is the paper's point."""
    d, n = 256, 32
    g = torch.Generator().manual_seed(6)
    var_u = torch.linspace(0.2, 2.0, d, dtype=F64)  # anisotropic unconditional data
    zeros = torch.zeros(d, dtype=F64)
    mean_c = var_u.sqrt() * torch.randn(d, generator=g, dtype=F64)  # the caption's image
    var_sharp = torch.full((d,), 1e-4, dtype=F64)
    var_broad = torch.full((d,), 0.5, dtype=F64) if broad == "isotropic" else var_u[torch.randperm(d, generator=g)]
    t_hi, t_lo = 981, low_noise_timestep(list(range(981, 0, -20)))
    ab_hi, ab_lo = _sd_abar(t_hi), _sd_abar(t_lo)
    x = torch.randn(n, d, generator=g, dtype=F64)

    def detector(var_c):
        hi, lo = (guided_from_models(_diffused(mean_c, var_c, ab), _diffused(zeros, var_u, ab), sigma=(1 - ab) ** 0.5)
                  for ab in (ab_hi, ab_lo))
        return anisotropy(hi, lo, x, norm_weight=1.0, alignment_weight=2.0)

    def precisions(var_c, abar):
        return 1 / (abar * var_u + 1 - abar), 1 / (abar * var_c + 1 - abar)

    sharp, flat = detector(var_sharp), detector(var_broad)
    assert sharp.score.min() > flat.score.max()  # every latent: AUC 1
    want_sq, want_cos = {}, {}
    for name, det, var_c in (("sharp", sharp, var_sharp), ("broad", flat, var_broad)):
        a, b = precisions(var_c, ab_hi)  # norm term: E‖eps_Δ‖² = σ² Σ [(b - a)² + (b m_c - a m_u)²], m_u = 0
        want_sq[name] = (1 - ab_hi) * ((b - a) ** 2 + (b * ab_hi**0.5 * mean_c) ** 2).sum().item()
        sq = det.guidance_norm**2
        assert abs(sq.mean().item() - want_sq[name]) <= 5 * sq.std().item() / n**0.5
        a, b = precisions(var_c, ab_lo)  # angle term: its high-dimensional limit
        want_cos[name] = _limit_cos(a, b, zeros, ab_lo**0.5 * mean_c)
        assert abs(det.alignment.mean().item() - want_cos[name]) < 0.03
    assert want_sq["sharp"] > want_sq["broad"] and want_cos["sharp"] > want_cos["broad"] + 0.3
