"""Metrics against the closed-form Gaussian oracles of docs/math.md §3.

Tolerances: linear scores (Gaussian) make finite differences exact up to rounding (fp64: 1e-8);
Monte-Carlo checks use 5 standard errors of the sample mean (false-failure odds < 1e-6).
"""
from __future__ import annotations

import pytest
import torch

from sailscope.core.metrics import fd_step_size, hutchinson_trace, hvp, sharpness, to_eps_space, wen_metric
from sailscope.core.oracles import DiffusedPoints, Gaussian, GaussianMixture, guided_from_models

D = 12


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(0)
    cond = Gaussian.random(D, generator=g, eig_range=(1.0, 6.0))
    uncond = Gaussian.random(D, generator=g, eig_range=(0.3, 2.0))
    return cond, uncond


def _mc_close(samples: torch.Tensor, expected: float, k: float = 5.0) -> None:
    mean, se = samples.mean().item(), samples.std().item() / samples.numel() ** 0.5
    assert abs(mean - expected) <= k * se + 1e-12, f"MC mean {mean} vs {expected} (se {se})"


@pytest.mark.parametrize("which", ["cond", "uncond", "delta"])
@pytest.mark.parametrize("method,tol", [("exact", 1e-12), ("fd", 1e-7)])
def test_hvp_equals_exact_hessian_product_gaussian(pair, which, method, tol):
    cond, uncond = pair
    gs = guided_from_models(cond, uncond)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, D, generator=g, dtype=torch.float64)
    v = torch.randn(3, D, generator=g, dtype=torch.float64)
    h = {"cond": cond.hessian(), "uncond": uncond.hessian(), "delta": cond.hessian() - uncond.hessian()}[which]
    got = hvp(gs, x, v, which=which, method=method)
    want = v @ h.T
    assert torch.allclose(got, want, rtol=tol, atol=tol * want.abs().max().item())


def test_hvp_mixture_exact_and_fd():
    """Non-constant Hessian: JVP matches the closed form to rounding; forward FD has O(h) error (h = 1e-3 ‖x‖)."""
    g = torch.Generator().manual_seed(2)
    cond = GaussianMixture.random(D, 3, generator=g)
    uncond = GaussianMixture.random(D, 2, generator=g, spread=2.0)
    gs = guided_from_models(cond, uncond)
    x = torch.randn(4, D, generator=g, dtype=torch.float64)
    v = torch.randn(4, D, generator=g, dtype=torch.float64)
    hd = cond.hessian(x) - uncond.hessian(x)
    want = torch.einsum("bij,bj->bi", hd, v)
    exact = hvp(gs, x, v, method="exact")
    fd = hvp(gs, x, v, method="fd")
    assert torch.allclose(exact, want, rtol=1e-10, atol=1e-10)
    rel = (fd - want).norm(dim=1) / want.norm(dim=1)
    assert rel.max() < 2e-2


def test_fd_step_is_relative_to_latent_norm():
    x = torch.randn(2, 50, dtype=torch.float64) * torch.tensor([[1.0], [100.0]], dtype=torch.float64)
    v = torch.randn(2, 50, dtype=torch.float64)
    h = fd_step_size(x, v, 1e-3)
    assert torch.allclose(h * v.norm(dim=1), 1e-3 * x.norm(dim=1))


def test_lemma_4_1_score_norm_is_trace_of_precision(pair):
    """E‖s‖² = tr Σ⁻¹ = -tr H for x ~ N(μ, Σ)."""
    cond, _ = pair
    x = cond.sample(40000, generator=torch.Generator().manual_seed(3))
    s2 = (cond.score(x) ** 2).sum(1)
    _mc_close(s2, torch.trace(cond.precision).item())
    assert torch.isclose(-torch.trace(cond.hessian()), torch.trace(cond.precision))


def test_lemma_4_3_hessian_score_norm(pair):
    """E‖H s‖² = tr Σ⁻³ = -tr H³ (the paper prints H ≡ -Σ, a typo)."""
    cond, _ = pair
    x = cond.sample(40000, generator=torch.Generator().manual_seed(4))
    hs = cond.score(x) @ cond.hessian().T
    expected = torch.trace(torch.linalg.matrix_power(cond.precision, 3)).item()
    _mc_close((hs**2).sum(1), expected)
    assert abs(-torch.trace(torch.linalg.matrix_power(cond.hessian(), 3)).item() - expected) < 1e-9 * expected


def test_lemma_4_2_conditional_score_difference(pair):
    """E_{x~p(x|c)}‖s_c − s‖² = tr((Σ⁻¹ − Σ_c⁻¹)² Σ_c) + ‖Σ⁻¹(μ − μ_c)‖²."""
    cond, uncond = pair
    gs = guided_from_models(cond, uncond)
    x = cond.sample(40000, generator=torch.Generator().manual_seed(5))
    d2 = (gs.score_delta(x) ** 2).sum(1)
    p, pc = uncond.precision, cond.precision
    sigma_c = torch.linalg.inv(pc)
    expected = torch.trace((p - pc) @ (p - pc) @ sigma_c) + ((p @ (uncond.mean - cond.mean)) ** 2).sum()
    _mc_close(d2, expected.item())


@pytest.mark.parametrize("method", ["exact", "fd"])
def test_sharpness_expectation_commuting_same_mean(method):
    """Same means, diagonal precisions a (uncond), b (cond): E‖HΔ sΔ‖² = Σ (a_i − b_i)⁴ / b_i."""
    g = torch.Generator().manual_seed(6)
    a = torch.rand(D, generator=g, dtype=torch.float64) * 2 + 0.5
    b = torch.rand(D, generator=g, dtype=torch.float64) * 4 + 1.0
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    cond, uncond = Gaussian.diagonal(mu, b), Gaussian.diagonal(mu, a)
    x = cond.sample(20000, generator=g)
    sh = sharpness(guided_from_models(cond, uncond), x, method=method)
    _mc_close(sh.value, ((a - b) ** 4 / b).sum().item())
    # per sample it is exactly ‖(A − B)² (x − μ)‖²
    want = (((a - b) ** 2 * (x - mu)) ** 2).sum(1)
    assert torch.allclose(sh.value, want, rtol=1e-6 if method == "fd" else 1e-12)


def test_sharpness_eps_space_units(pair):
    """‖HΔ^eps eps_Δ‖² computed directly in eps space equals σ⁴ × our score-space value."""
    cond, uncond = pair
    sigma = 0.37
    gs = guided_from_models(cond, uncond, sigma=sigma)
    x = torch.randn(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    sh = sharpness(gs, x, method="exact")

    def eps_delta(z):
        e_c, e_u = gs.eps_pair(z)
        return e_c - e_u

    e = eps_delta(x)
    _, he = torch.func.jvp(eps_delta, (x,), (e,))
    assert torch.allclose((he**2).sum(1), sh.eps_space, rtol=1e-10)
    assert torch.allclose(to_eps_space(sh.value, sigma), sh.eps_space)
    # Wen's metric is ‖eps_c − eps_u‖ = σ ‖sΔ‖
    e_c, e_u = gs.eps_pair(x)
    assert torch.allclose(wen_metric(e_c, e_u), sigma * gs.score_delta(x).norm(dim=1))


def test_hutchinson_converges_to_trace():
    g = torch.Generator().manual_seed(8)
    cond = GaussianMixture.random(D, 3, generator=g)
    uncond = Gaussian.random(D, generator=g)
    gs = guided_from_models(cond, uncond)
    x = torch.randn(2, D, dtype=torch.float64, generator=g)
    exact = torch.diagonal(cond.hessian(x), dim1=1, dim2=2).sum(1)
    few = hutchinson_trace(gs, x, which="cond", probes=64, generator=torch.Generator().manual_seed(0))
    many = hutchinson_trace(gs, x, which="cond", probes=1024, generator=torch.Generator().manual_seed(1))
    assert ((many.mean - exact).abs() <= 5 * many.stderr).all()
    assert (many.stderr < few.stderr).all()
    # the error shrinks like 1/sqrt(probes): 1024 probes -> 4x smaller standard error than 64
    # (±40 %: the 64-probe standard error is itself estimated to ~10 %)
    ratio = few.stderr / many.stderr
    assert ((ratio > 4 * 0.6) & (ratio < 4 * 1.4)).all()


# ----------------------------------------------------------------------------------------------
# DiffusedPoints: the ideal denoiser of a finite data set
# ----------------------------------------------------------------------------------------------
def _diffused_pair(abar: float):
    g = torch.Generator().manual_seed(9)
    data = torch.randn(40, D, generator=g, dtype=torch.float64)
    weights = torch.rand(40, generator=g, dtype=torch.float64) + 0.5
    return DiffusedPoints.from_points(data[:3], abar), DiffusedPoints.from_points(data, abar, weights), data, weights


def test_diffused_points_is_an_isotropic_gaussian_mixture():
    """Same density as GaussianMixture(means √ᾱ x_i, precision I/(1-ᾱ)): score and Hessian agree."""
    abar = 0.3
    _, dp, data, weights = _diffused_pair(abar)
    eye = torch.eye(D, dtype=torch.float64) / (1 - abar)
    gm = GaussianMixture(weights=weights / weights.sum(), means=abar**0.5 * data, precisions=eye.expand(40, D, D))
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    assert torch.allclose(dp.score(x), gm.score(x), rtol=1e-10, atol=1e-12)
    assert torch.allclose(dp.hessian(x), gm.hessian(x), rtol=1e-9, atol=1e-11)


def test_diffused_single_point_is_the_sharpest_conditional():
    """One point: H = -I/(1-ᾱ) and the JVP sharpness equals ‖(H_c - H_u) sΔ‖² from dense Hessians."""
    abar = 0.0058  # SD's ᾱ at the first of 50 DDIM steps
    one, many, data, _ = _diffused_pair(abar)
    single = DiffusedPoints.from_points(data[:1], abar)
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert torch.allclose(single.hessian(x), -torch.eye(D, dtype=torch.float64).expand(3, D, D) / (1 - abar))
    gs = guided_from_models(single, many, sigma=(1 - abar) ** 0.5)
    sh = sharpness(gs, x, method="exact")
    s_delta = single.score(x) - many.score(x)
    want = torch.einsum("bij,bj->bi", single.hessian(x) - many.hessian(x), s_delta)
    assert torch.allclose(sh.value, (want**2).sum(1), rtol=1e-9)
    # a 3-point conditional is flatter than a 1-point one at the same x (less negative curvature)
    assert bool((torch.linalg.eigvalsh(one.hessian(x)).max(1).values > -1 / (1 - abar) + 1e-12).all())


def test_diffused_points_rejects_bad_input():
    with pytest.raises(ValueError, match="abar"):
        DiffusedPoints.from_points(torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="weights"):
        DiffusedPoints.from_points(torch.zeros(2, 3), 0.5, torch.tensor([1.0, 0.0]))
