"""SAIL optimizer on closed-form Gaussian scores (docs/math.md §3): objective values, minimizer, gradients, Adam,
early stop, no convergence, candidates, settings validation. No diffusers model involved."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from sailscope.core.errors import UserInputError
from sailscope.core.oracles import Gaussian, GaussianMixture, guided_from_models
from sailscope.core.mitigation import (CandidateDraws, RowAdam, SailResult, SailSettings, SailStep, draw_candidates,
                                 iter_optimize, optimize, paper_objective, reference_objective, relative_step)

D = 6


def gaussians(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = Gaussian.random(D, generator=g, dtype=dtype, eig_range=(0.5, 3.0))
    uncond = Gaussian.random(D, generator=g, dtype=dtype, eig_range=(0.8, 1.5))
    return cond, uncond


def affine_delta(cond, uncond):
    """sΔ(x) = A x + b with A = HΔ = P_u - P_c, b = P_c μ_c - P_u μ_u."""
    a = uncond.precision - cond.precision
    b = cond.precision @ cond.mean - uncond.precision @ uncond.mean
    return a, b


# ----------------------------------------------------------------------------------------------
# Objective values against hand computation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma,scale,delta", [(1.0, 1.0, 0.1), (0.7, 0.9, 0.01)])
def test_paper_objective_equals_hessian_times_score_on_gaussians(sigma, scale, delta):
    cond, uncond = gaussians(torch.float64)
    a, b = affine_delta(cond, uncond)
    eps_pair = guided_from_models(cond, uncond, sigma=sigma).eps_pair
    z = torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha = 0.3
    val = paper_objective(eps_pair, z, sigma=sigma, alpha=alpha, delta=delta, scale=scale)
    x = scale * z
    sd = x @ a.T + b
    # sΔ is affine, so the finite difference is exact for every δ: ‖A sΔ(x)‖²
    want_sharp = ((sd @ a.T) ** 2).sum(1)
    want_prior = (z**2).sum(1)
    torch.testing.assert_close(val.sharpness, want_sharp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(val.prior, want_prior, rtol=1e-12, atol=0)
    torch.testing.assert_close(val.loss, want_sharp + alpha * want_prior, rtol=1e-10, atol=1e-12)


def test_reference_objective_hand_computed_on_gaussians():
    sigma, scale, alpha = 0.8, 1.1, 0.05
    cond, uncond = gaussians(torch.float64)
    a, b = affine_delta(cond, uncond)
    eps_pair = guided_from_models(cond, uncond, sigma=sigma).eps_pair
    z = torch.randn(4, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    val = reference_objective(eps_pair, z, alpha=alpha, scale=scale)
    x = scale * z
    eps_delta = -sigma * (x @ a.T + b)  # eps = -sigma s
    u = eps_delta / eps_delta.norm(dim=1, keepdim=True)
    want = (-sigma * ((x + u) @ a.T + b)).norm(dim=1)  # unsquared, no subtraction of eps_Δ(x)
    torch.testing.assert_close(val.sharpness, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(val.loss, want + alpha * z.norm(dim=1), rtol=1e-10, atol=1e-12)


def test_paper_objective_minimizer_is_the_closed_form_one():
    # L(x) = ‖A(Ax+b)‖² + α‖x‖²  =>  x* = -(A⁴ + αI)⁻¹ A³ b  (A symmetric)
    cond, uncond = gaussians(torch.float32, seed=3)
    a, b = affine_delta(cond, uncond)
    alpha = 0.5
    a64, b64 = a.double(), b.double()
    x_star = -torch.linalg.solve(torch.linalg.matrix_power(a64, 4) + alpha * torch.eye(D, dtype=torch.float64),
                                 torch.linalg.matrix_power(a64, 3) @ b64)
    eps_pair = guided_from_models(cond, uncond).eps_pair
    z0 = torch.zeros(1, D)
    s = SailSettings(objective="paper", threshold=-1.0, max_steps=1000, lr=0.02, alpha=alpha, sphere=False)
    res = optimize(eps_pair, z0, s, sigma=1.0, threshold=-1.0, alpha=alpha)
    assert res.converged == [False]  # a threshold below 0 can never be met
    # Adam with lr 0.02 hovers within ~lr of the optimum
    assert (res.x_T[0].double() - x_star).abs().max() < 0.02
    l_star = float((((a64 @ (a64 @ x_star + b64)) ** 2).sum()) + alpha * (x_star**2).sum())
    assert res.loss[0] == pytest.approx(l_star, rel=1e-3, abs=1e-5)


def test_sphere_minimizer_is_the_trust_region_boundary_solution():
    # on ‖x‖ = r:  min ‖A(Ax+b)‖²  =>  x(μ) = -(A⁴ + μI)⁻¹ A³ b with μ > -λ_min(A⁴) and ‖x(μ)‖ = r
    # (the secular equation of the trust-region subproblem, solved by bisection); α‖x‖² is constant there
    from scipy.optimize import brentq

    cond, uncond = gaussians(torch.float32, seed=3)
    a, b = affine_delta(cond, uncond)
    a4, a3b = torch.linalg.matrix_power(a.double(), 4), torch.linalg.matrix_power(a.double(), 3) @ b.double()
    lam_min = float(torch.linalg.eigvalsh(a4)[0])
    x_of = lambda mu: -torch.linalg.solve(a4 + mu * torch.eye(D, dtype=torch.float64), a3b)
    z0 = torch.randn(1, D, generator=torch.Generator().manual_seed(8))
    r = float(z0.norm())
    assert abs(float(x_of(0.0).norm()) - r) > 0.5  # the free minimizer is off the sphere: the constraint acts
    mu = brentq(lambda m: float(x_of(m).norm()) - r, -lam_min + 1e-9, 1e8)  # ‖x(μ)‖ decreases in μ
    x_star = x_of(mu)
    eps_pair = guided_from_models(cond, uncond).eps_pair
    s = SailSettings(objective="paper", threshold=-1.0, max_steps=1000, lr=0.01, alpha=0.5, sphere=True)
    res = optimize(eps_pair, z0, s, sigma=1.0, threshold=-1.0, alpha=0.5)
    assert float(res.x_T[0].norm()) == pytest.approx(r, rel=1e-5)  # every iterate stays on the sphere
    assert (res.x_T[0].double() - x_star).abs().max() < 1e-3  # measured 2e-5
    assert all(p == pytest.approx(r * r, rel=1e-4) for st in res.trace for p in st.prior)  # α‖z‖² constant


# ----------------------------------------------------------------------------------------------
# Gradients against central finite differences (nonlinear mixture score, fp64)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["paper", "reference"])
def test_objective_gradient_matches_finite_differences(objective):
    g = torch.Generator().manual_seed(4)
    cond = GaussianMixture.random(4, components=3, generator=g, spread=1.5)
    uncond = GaussianMixture.random(4, components=2, generator=g, spread=1.0)
    eps_pair = guided_from_models(cond, uncond, sigma=0.9).eps_pair

    def loss(z):
        if objective == "paper":  # the formula as printed (fixed δ); the relative-δ variant is tested below
            return paper_objective(eps_pair, z, sigma=0.9, alpha=0.1, delta=0.05, scale=0.95, relative=False).loss
        return reference_objective(eps_pair, z, alpha=0.1, scale=0.95).loss

    z = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(z).sum(), z)
    h = 1e-6
    fd = torch.zeros_like(z)
    with torch.no_grad():
        for i in range(z.shape[0]):
            for j in range(z.shape[1]):
                e = torch.zeros_like(z)
                e[i, j] = h
                fd[i, j] = (loss(z + e)[i] - loss(z - e)[i]) / (2 * h)
    # central differences in fp64: error O(h²) + O(eps/h) ≈ 1e-10 relative
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_relative_step_is_the_fixed_formula_at_the_computed_step():
    """Relative δ = delta·‖x‖/‖sΔ(x)‖, held constant: value and gradient equal the printed formula at that δ."""
    g = torch.Generator().manual_seed(11)
    cond = GaussianMixture.random(4, components=3, generator=g, spread=1.5)
    uncond = GaussianMixture.random(4, components=2, generator=g, spread=1.0)
    eps_pair = guided_from_models(cond, uncond, sigma=0.9).eps_pair
    z = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    x = 0.95 * z.detach()
    sd = -(eps_pair(x)[0] - eps_pair(x)[1]) / 0.9
    step = relative_step(x, sd, 1e-2)
    torch.testing.assert_close((step[:, None] * sd).norm(dim=1), 1e-2 * x.norm(dim=1))
    rel = paper_objective(eps_pair, z, sigma=0.9, alpha=0.1, delta=1e-2, scale=0.95)
    fixed = paper_objective(eps_pair, z, sigma=0.9, alpha=0.1, delta=step, scale=0.95, relative=False)
    torch.testing.assert_close(rel.loss, fixed.loss, rtol=1e-12, atol=0)
    (g_rel,) = torch.autograd.grad(rel.loss.sum(), z)
    (g_fix,) = torch.autograd.grad(fixed.loss.sum(), z)
    torch.testing.assert_close(g_rel, g_fix, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# Adam, early stop, no convergence
# ----------------------------------------------------------------------------------------------
def test_row_adam_matches_torch_adam():
    target = torch.randn(3, 5, generator=torch.Generator().manual_seed(5))
    z_ref = torch.zeros(3, 5, requires_grad=True)
    opt = torch.optim.Adam([z_ref], lr=0.05)
    z = torch.zeros(3, 5)
    adam = RowAdam((3, 5), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        ((z_ref - target) ** 2).sum().backward()
        opt.step()
        adam.step(z, torch.arange(3), 2 * (z - target))
    torch.testing.assert_close(z, z_ref.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sphere", [False, True])
def test_single_candidate_equals_a_plain_adam_loop(sphere):
    cond, uncond = gaussians()
    eps_pair = guided_from_models(cond, uncond).eps_pair
    z0 = torch.randn(1, D, generator=torch.Generator().manual_seed(6))
    s = SailSettings(objective="paper", threshold=-1.0, max_steps=7, alpha=0.01, delta=0.1, lr=0.05, sphere=sphere)
    res = optimize(eps_pair, z0, s, sigma=1.0, threshold=-1.0, alpha=0.01)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    losses = []
    for _ in range(7):
        opt.zero_grad()
        l = paper_objective(eps_pair, z, sigma=1.0, alpha=0.01, delta=0.1).loss
        losses.append(float(l.detach()))
        l.sum().backward()
        if sphere:
            with torch.no_grad():
                z.grad -= (z.grad * z).sum() / (z * z).sum() * z
        opt.step()
        if sphere:  # tangent gradient, then retraction back onto ‖z‖ = ‖z_0‖ after the update
            with torch.no_grad():
                z.mul_(z0.norm() / z.norm())
    losses.append(float(paper_objective(eps_pair, z.detach(), sigma=1.0, alpha=0.01, delta=0.1).loss))
    assert [s.loss[0] for s in res.trace] == pytest.approx(losses, rel=1e-5)
    assert len(res.trace) == 8 and res.trace[0].step == 0 and res.trace[-1].step == 7
    # the no-convergence result is the lowest-loss iterate (here the last one: the loss decreases)
    assert res.loss[0] == pytest.approx(min(losses), rel=1e-6) and res.steps == [7]
    torch.testing.assert_close(res.x_T[0], z.detach()[0], rtol=1e-5, atol=1e-6)
    assert res.warnings and "did not reach the threshold" in res.warnings[0]
    assert res.unet_calls == 2 * 8 and res.unet_rows == 2 * 8


def _mixed_candidates():
    cond, uncond = gaussians()
    a, b = affine_delta(cond, uncond)
    eps_pair = guided_from_models(cond, uncond).eps_pair
    x_low = -torch.linalg.solve(a, b)  # sΔ = 0 here: sharpness term 0
    z0 = torch.stack([x_low, x_low + 3.0, x_low - 3.0])
    return eps_pair, z0


def test_early_stop_drops_converged_candidates_from_the_batch():
    eps_pair, z0 = _mixed_candidates()
    alpha = 0.01
    l0 = paper_objective(eps_pair, z0, sigma=1.0, alpha=alpha, delta=0.1).loss
    threshold = float(l0[0]) + 1e-3  # candidate 0 is accepted at once, the others are far above
    assert float(l0[1:].min()) > threshold + 1.0
    s = SailSettings(threshold=threshold, max_steps=4, alpha=alpha, stop="all")
    items = list(iter_optimize(eps_pair, z0, s, sigma=1.0, threshold=threshold, alpha=alpha,
                               candidate_image=[0, 0, 0]))
    steps = [i for i in items if isinstance(i, SailStep)]
    res = items[-1]
    assert isinstance(res, SailResult)
    assert steps[0].accepted == [0] and steps[0].loss[0] is not None
    assert all(st.loss[0] is None for st in steps[1:])  # never evaluated again
    assert all(st.loss[1] is not None and st.loss[2] is not None for st in steps)
    # rows per objective evaluation (2 eps_pair calls each): 3 at step 0, then 2 at steps 1..4
    assert res.unet_rows == 2 * (3 + 2 * 4) and res.unet_calls == 2 * 5
    assert res.converged == [True] and res.chosen == [0] and res.steps == [0]
    torch.testing.assert_close(res.x_T[0], z0[0])
    assert all(st.threshold == threshold for st in steps)


def test_trigger_keeps_flat_starts_and_optimizes_sharp_ones_down_to_the_threshold():
    cond, uncond = gaussians()
    a, b = affine_delta(cond, uncond)
    eps_pair = guided_from_models(cond, uncond).eps_pair
    x_low = -torch.linalg.solve(a, b)  # sΔ = 0: loss 0 with α = 0
    z0 = torch.stack([x_low + 0.2, x_low + 2.0])  # two images: a mildly sharp start and a sharp one
    l0 = paper_objective(eps_pair, z0, sigma=1.0, alpha=0.0, delta=0.1).loss
    threshold, trigger = float(l0[0]) / 4, float(l0[0]) * 2  # threshold < l0[0] < trigger < l0[1]
    assert float(l0[1]) > trigger
    s = SailSettings(threshold=threshold, trigger=trigger, max_steps=300, alpha=0.0, lr=0.05, sphere=False)
    res = optimize(eps_pair, z0, s, sigma=1.0, threshold=threshold, alpha=0.0, trigger=trigger,
                   candidate_image=[0, 1])
    assert res.converged == [True, True] and res.steps[0] == 0 and res.trace[0].accepted == [0]
    torch.testing.assert_close(res.x_T[0], z0[0])  # kept unchanged although its loss is above the threshold
    assert res.steps[1] > 0 and res.loss[1] <= threshold < trigger  # optimized past the trigger, to the threshold
    assert res.trigger == trigger and res.report()["trigger"] == trigger
    # without a trigger (one level, as in the paper) both starts are optimized to the threshold
    one = optimize(eps_pair, z0, s, sigma=1.0, threshold=threshold, alpha=0.0, candidate_image=[0, 1])
    assert one.steps[0] > 0 and one.loss[0] <= threshold and one.trigger is None
    # a trigger below the threshold changes nothing: step 0 accepts at max(trigger, threshold)
    low = optimize(eps_pair, z0, s, sigma=1.0, threshold=float(l0[0]) * 1.01, alpha=0.0, trigger=0.0,
                   candidate_image=[0, 1])
    assert low.steps[0] == 0 and low.converged[0]


def test_stop_first_ends_an_image_search_at_its_first_accepted_candidate():
    eps_pair, z0 = _mixed_candidates()
    alpha = 0.01
    l0 = paper_objective(eps_pair, z0, sigma=1.0, alpha=alpha, delta=0.1).loss
    threshold = float(l0[0]) + 1e-3
    s = SailSettings(threshold=threshold, max_steps=4, alpha=alpha, stop="first")
    # image 0 = candidates 0, 1; image 1 = candidate 2 (keeps searching, never converges)
    res = optimize(eps_pair, z0, s, sigma=1.0, threshold=threshold, alpha=alpha, candidate_image=[0, 0, 1])
    assert res.converged == [True, False]
    assert all(st.loss[1] is None for st in res.trace[1:])  # image 0 done: its other candidate stops too
    assert all(st.loss[2] is not None for st in res.trace)
    assert res.x_T.shape == (2, D) and res.chosen == [0, 0]
    assert len(res.warnings) == 1 and "image 1" in res.warnings[0]


def test_accepted_candidate_is_checked_before_the_step_and_earliest_wins():
    cond, uncond = gaussians()
    eps_pair = guided_from_models(cond, uncond).eps_pair
    z0 = torch.randn(2, D, generator=torch.Generator().manual_seed(7)) * 2
    base = optimize(eps_pair, z0, SailSettings(threshold=-1.0, max_steps=6, alpha=0.01), sigma=1.0,
                    threshold=-1.0, alpha=0.01, candidate_image=[0, 0])
    losses = [[st.loss[k] for st in base.trace] for k in range(2)]
    # threshold that candidate 1 meets at step 2 and candidate 0 later (or never)
    thr = losses[1][2] + 1e-6
    first0 = next((i for i, l in enumerate(losses[0]) if l <= thr), None)
    first1 = next(i for i, l in enumerate(losses[1]) if l <= thr)
    res = optimize(eps_pair, z0, SailSettings(threshold=thr, max_steps=6, alpha=0.01, stop="all"), sigma=1.0,
                   threshold=thr, alpha=0.01, candidate_image=[0, 0])
    want = 1 if first0 is None or first1 < first0 else 0
    assert res.converged == [True] and res.chosen == [want]
    assert res.steps == [min(x for x in (first0, first1) if x is not None)]
    assert res.loss[0] <= thr


def test_optimizer_is_fp32_and_deterministic():
    cond, uncond = gaussians(torch.float32)
    eps_pair = guided_from_models(cond, uncond).eps_pair
    z0 = torch.randn(2, D, generator=torch.Generator().manual_seed(8))
    s = SailSettings(threshold=-1.0, max_steps=5, alpha=0.01)
    r1 = optimize(eps_pair, z0, s, sigma=1.0, threshold=-1.0, alpha=0.01, candidate_image=[0, 1])
    r2 = optimize(eps_pair, z0, s, sigma=1.0, threshold=-1.0, alpha=0.01, candidate_image=[0, 1])
    assert r1.x_T.dtype == torch.float32
    assert torch.equal(r1.x_T, r2.x_T)
    assert [st.loss for st in r1.trace] == [st.loss for st in r2.trace]


def test_max_steps_zero_returns_the_initial_noise():
    cond, uncond = gaussians()
    eps_pair = guided_from_models(cond, uncond).eps_pair
    z0 = torch.randn(1, D, generator=torch.Generator().manual_seed(9))
    res = optimize(eps_pair, z0, SailSettings(threshold=1e9, max_steps=0), sigma=1.0, threshold=1e9, alpha=0.0)
    assert res.converged == [True] and res.steps == [0] and torch.equal(res.x_T, z0)
    assert res.unet_calls == 2


def test_rounds_redraw_only_failed_images_and_never_apply_the_trigger_to_a_fresh_start():
    cond, uncond = gaussians()
    a, b = affine_delta(cond, uncond)
    eps_pair = guided_from_models(cond, uncond).eps_pair
    x_low = -torch.linalg.solve(a, b)  # sΔ = 0: loss 0 with α = 0
    loss = lambda z: paper_objective(eps_pair, z, sigma=1.0, alpha=0.0, delta=0.1).loss
    z0 = torch.stack([x_low + 0.05, x_low + 3.0])  # image 0 flat (kept), image 1 sharp (fails round 0)
    between = x_low + 0.3  # a fresh start whose loss lies between the threshold and the trigger
    threshold, trigger = float(loss(z0[:1])) * 1.5, float(loss(between[None])) * 2
    assert float(loss(z0[1:])) > trigger and float(loss(between[None])) > threshold
    fresh = {1: between, 2: x_low + 0.01}
    calls = []

    def redraw(images, round_):
        calls.append((list(images), round_))
        return torch.stack([fresh[round_]] * len(images)), list(images), [100 + round_] * len(images)

    s = SailSettings(threshold=threshold, trigger=trigger, max_steps=0, rounds=3, alpha=0.0)
    items = list(iter_optimize(eps_pair, z0, s, sigma=1.0, threshold=threshold, alpha=0.0, trigger=trigger,
                               candidate_image=[0, 1], redraw=redraw))
    res, steps = items[-1], items[:-1]
    assert calls == [([1], 1), ([1], 2)]  # image 0 converged in round 0 and is never redrawn
    assert [st.round for st in steps] == [0, 1, 2]
    assert [len(st.loss) for st in steps] == [2, 3, 4] and steps[1].loss[:2] == [None, None]
    assert steps[1].accepted == [] and steps[2].accepted == [3]  # round 1's start is under the trigger: not kept
    assert res.converged == [True, True] and res.chosen_round == [0, 2] and res.chosen == [0, 2]
    torch.testing.assert_close(res.x_T[1], fresh[2])
    torch.testing.assert_close(res.x_T[0], z0[0])
    assert res.candidate_image == [0, 1, 1, 1] and res.candidate_seeds == [None, None, 101, 102]
    assert res.report()["chosen_round"] == [0, 2]
    # without a redraw there is one round whatever the settings say
    one = optimize(eps_pair, z0, s, sigma=1.0, threshold=threshold, alpha=0.0, trigger=trigger, candidate_image=[0, 1])
    assert one.converged == [True, False] and len(one.trace) == 1 and one.chosen_round == [0, 0]


def test_trigger_judges_the_prompt_with_probe_noises_and_keeps_only_the_seeds_own_start():
    cond, uncond = gaussians()
    a, b = affine_delta(cond, uncond)
    eps_pair = guided_from_models(cond, uncond).eps_pair
    x_low = -torch.linalg.solve(a, b)
    loss = lambda z: paper_objective(eps_pair, z, sigma=1.0, alpha=0.0, delta=0.1).loss
    mild, sharp = x_low + 0.3, x_low + 3.0
    threshold, trigger = float(loss(mild[None])) / 2, float(loss(mild[None])) * 1.5
    assert float(loss(sharp[None])) > 4 * trigger
    # image 0: a mild start of a "flat" prompt (probes flat); image 1: the same mild start, "sharp" prompt;
    # image 2: a sharp start (no probe needed: optimized anyway)
    z0 = torch.stack([mild, mild, sharp])
    calls = []

    def probe(images):
        calls.append(list(images))
        rows = [x_low + 0.01 if i == 0 else sharp for i in images for _ in range(3)]
        return torch.stack(rows), [i for i in images for _ in range(3)], [None] * len(rows)

    s = SailSettings(threshold=threshold, trigger=trigger, max_steps=0, alpha=0.0, trigger_noises=4)
    kw = dict(sigma=1.0, threshold=threshold, alpha=0.0, trigger=trigger, candidate_image=[0, 1, 2])
    res = optimize(eps_pair, z0, s, probe=probe, **kw)
    assert calls == [[0, 1]]
    assert res.converged == [True, False, False] and res.trigger_overruled == [False, True, False]
    want1 = (float(loss(mild[None])) + 3 * float(loss(sharp[None]))) / 4
    assert res.prompt_loss[1] == pytest.approx(want1, rel=1e-3) and res.prompt_loss[2] is None  # fp32, batched
    assert res.prompt_loss[0] <= trigger and res.report()["trigger_overruled"] == [False, True, False]
    assert res.unet_calls == 2 * 2  # one batched evaluation of the starts, one of the probes
    # trigger_noises = 1: the seed alone decides, no probe
    one = optimize(eps_pair, z0, replace(s, trigger_noises=1), probe=probe, **kw)
    assert calls == [[0, 1]] and one.converged == [True, True, False]
    # only the seed's own start is kept by the trigger: an extra candidate under it needs the threshold
    extra = optimize(eps_pair, torch.stack([sharp, mild]), replace(s, trigger_noises=1), sigma=1.0, threshold=threshold,
                     alpha=0.0, trigger=trigger, candidate_image=[0, 0])
    assert extra.converged == [False] and extra.trace[0].accepted == []


def test_when_every_round_fails_the_lowest_loss_over_all_rounds_is_returned_with_a_warning():
    cond, uncond = gaussians()
    a, b = affine_delta(cond, uncond)
    eps_pair = guided_from_models(cond, uncond).eps_pair
    x_low = -torch.linalg.solve(a, b)
    starts = [x_low + 3.0, x_low + 1.0, x_low + 2.0]  # round 1's start is the least sharp
    redraw = lambda images, r: (starts[r][None], list(images), [r])
    s = SailSettings(threshold=-1.0, max_steps=0, rounds=3, alpha=0.0)
    res = optimize(eps_pair, starts[0][None], s, sigma=1.0, threshold=-1.0, alpha=0.0, redraw=redraw)
    assert res.converged == [False] and res.chosen == [1] and res.chosen_round == [1]
    torch.testing.assert_close(res.x_T[0], starts[1])
    assert len(res.warnings) == 1 and "3 round(s)" in res.warnings[0]


# ----------------------------------------------------------------------------------------------
# Candidates and settings
# ----------------------------------------------------------------------------------------------
def test_candidates_are_distinct_deterministic_and_start_with_the_stock_noise():
    stock = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    s = SailSettings(candidates=4)
    z0, groups, seeds = draw_candidates(stock, [10, 11], s)
    z1, _, seeds1 = draw_candidates(stock, [10, 11], s)
    assert torch.equal(z0, z1) and seeds == seeds1
    assert groups == [0, 0, 0, 0, 1, 1, 1, 1]
    assert torch.equal(z0[0], stock[0]) and torch.equal(z0[4], stock[1])
    assert seeds[0] is None and seeds[4] is None
    flat = z0.reshape(8, -1)
    assert len({tuple(r.tolist()) for r in flat}) == 8  # no duplicates across images either
    assert len(set(s for s in seeds if s is not None)) == 6 and not {10, 11, 12} & set(seeds)
    z2, _, _ = draw_candidates(stock, [10, 11], SailSettings(candidates=4, candidate_seed=1))
    assert not torch.equal(z2[1], z0[1])
    # later rounds: `candidates` fresh draws per failed image, distinct from every earlier one, deterministic
    draws = CandidateDraws(stock, [10, 11], s)
    first = draws.first()
    assert torch.equal(first[0], z0)
    r1, g1, s1 = draws.redraw([1], 1)
    r2, g2, s2 = draws.redraw([0, 1], 2)
    assert g1 == [1] * 4 and g2 == [0] * 4 + [1] * 4 and r1.shape == (4, 4, 3, 3)
    rows = torch.cat([z0, r1, r2]).reshape(20, -1)
    assert len({tuple(r.tolist()) for r in rows}) == 20
    again = CandidateDraws(stock, [10, 11], s)
    again.first()
    assert torch.equal(again.redraw([1], 1)[0], r1) and len(set(s1 + s2) | {x for x in seeds if x is not None}) == 18
    pz, pg, ps = draws.probe([0, 1])  # the trigger's prompt check: trigger_noises - 1 (default 3) per image
    assert pg == [0] * 3 + [1] * 3 and len({tuple(r.tolist()) for r in torch.cat([rows, pz.reshape(6, -1)])}) == 26
    assert not set(ps) & (set(s1 + s2) | set(seeds))


@pytest.mark.parametrize("kwargs,word", [
    ({"objective": "Paper"}, "objective"), ({"threshold": "high"}, "threshold"),
    ({"threshold": math.nan}, "threshold"), ({"max_steps": -1}, "max_steps"), ({"candidates": 0}, "candidates"),
    ({"lr": 0.0}, "lr"), ({"alpha": -1.0}, "alpha"), ({"delta": 0.0}, "delta"), ({"delta": 2.0}, "delta"),
    ({"stop": "any"}, "stop"), ({"rounds": 0}, "rounds"), ({"rounds": 2.0}, "rounds"),
    ({"trigger_noises": 0}, "trigger_noises"),
])
def test_settings_validation_names_the_argument(kwargs, word):
    with pytest.raises(UserInputError, match=word):
        SailSettings(**kwargs)


def test_settings_are_frozen_keyword_only_with_model_defaults():
    s = SailSettings()
    assert (s.objective, s.threshold, s.trigger, s.lr, s.max_steps, s.candidates, s.sphere, s.rounds,
            s.trigger_noises) == ("paper", "auto", "auto", 0.3, 6, 1, True, 2, 4)
    with pytest.raises(Exception):
        s.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        SailSettings("paper")  # type: ignore[misc]
    assert SailSettings(objective="reference").alpha_for("epsilon") == 0.05
    assert SailSettings(objective="reference").alpha_for("v_prediction") == 0.01
    assert SailSettings(alpha=0.2).alpha_for("epsilon") == 0.2
    assert SailSettings().delta_for(torch.float32) == 1e-3 and SailSettings().delta_for(torch.float16) == 3e-2
    assert SailSettings().delta_for(torch.bfloat16) == 1e-1 and SailSettings(delta=0.2).delta_for(torch.float16) == 0.2
