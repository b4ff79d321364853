"""The two SAIL objectives (per candidate, both cost two batched cond+uncond UNet calls forward, and their backward):

* ``paper`` (the formula of §5.1, score space): ``L = ‖sΔ(x + δ sΔ(x)) - sΔ(x)‖² / δ² + α ‖z‖²``.
  The first term is the forward-difference estimate of ``‖HΔ sΔ‖²`` (units: score², like the
  ``sharpness`` metric at step 1); the paper prints it without the ``1/δ²``, which only rescales α and the
  threshold. The step is *relative*, per candidate: ``δ = delta · ‖x‖ / ‖sΔ(x)‖`` (held constant for the
  gradient), so the perturbation is ``delta`` times the latent's norm whatever the prompt, the convention
  of :func:`sailscope.core.metrics.fd_jvp`; with ``delta = 1e-3`` (the fp32 default, the metrics'
  ``fd_step``) the first term at the seed's ``x_T`` *is* the step-1 sharpness that detection records.
  Half-precision UNets need a larger step (measured on the tiny pipeline, error of the first term vs fp32:
  fp16 at 1e-3: ×60, at 3e-2: < 10 %; bf16 at 1e-1: < 50 %), hence ``delta=None`` = by the UNet's dtype
  (:data:`AUTO_DELTA`). Gradients flow through both evaluations and through the perturbation direction.
* ``reference`` (the authors' released proxy, eps space, unsquared):
  ``u = eps_Δ(x) / ‖eps_Δ(x)‖``; ``L = ‖eps_Δ(x + u)‖ + α ‖z‖``; gradient flows through ``u``. Its
  published thresholds (7.6–9.0 for SD 1.4 with α = 0.05, 4–6 for SD 2.0 with α = 0.01) are in these
  units. Differences from the released loop, on purpose: eps space also for v-models (theirs uses the
  score difference there, a factor ``1/sigma ≈ 1.002``), ``u`` recomputed at every step (theirs keeps the
  first step's UNet input), fp32 Adam, no duplicate candidates, no silent threshold raising.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from sailscope.core.mitigation.settings import SailSettings

EpsPair = Callable[[Tensor], "tuple[Tensor, Tensor]"]  # x -> (eps_c(x), eps_u(x)), any batch size


@dataclass
class ObjectiveValue:
    """Per-candidate loss and its two terms (shape ``(B,)``), still attached to the graph."""

    loss: Tensor
    sharpness: Tensor  # first term: paper ‖ΔsΔ‖²/δ² (score²), reference ‖eps_Δ(x+u)‖ (eps)
    prior: Tensor  # ‖z‖² (paper) or ‖z‖ (reference), before α


def _flat_norm(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).norm(dim=1)


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def relative_step(x: Tensor, v: Tensor, delta: float) -> Tensor:
    """Per-sample ``δ = delta · ‖x‖ / ‖v‖`` (detached, shape ``(B,)``): ``‖δ v‖ = delta ‖x‖``."""
    with torch.no_grad():
        xn, vn = _flat_norm(x), _flat_norm(v)
        return delta * torch.where(xn > 0, xn, torch.ones_like(xn)) / vn.clamp_min(torch.finfo(vn.dtype).tiny)


def tangent_component(g: Tensor, z: Tensor) -> Tensor:
    """``g`` minus its component along ``z``, per row: the gradient on the sphere through ``z``.

    Without it the radial part (all of ``α ‖z‖²``'s gradient, and some of the sharpness term's) dominates
    Adam's per-coordinate normalization and the retraction then undoes most of the step.
    """
    zz = (z.reshape(z.shape[0], -1) ** 2).sum(1).clamp_min(torch.finfo(z.dtype).tiny)
    gz = (g.reshape(g.shape[0], -1) * z.reshape(z.shape[0], -1)).sum(1)
    return g - _per_sample(gz / zz, g) * z


def retract_to_sphere(z: Tensor, radius: Tensor) -> Tensor:
    """Rows of ``z`` rescaled to norms ``radius`` (shape ``(B,)``): the retraction onto the start's sphere."""
    n = _flat_norm(z).clamp_min(torch.finfo(z.dtype).tiny)
    r = radius.to(z.dtype)
    return z * _per_sample(torch.where(r > 0, r / n, torch.ones_like(n)), z)  # a zero start has no sphere


def paper_objective(eps_pair: EpsPair, z: Tensor, *, sigma: float, alpha: float, delta: float | Tensor,
                    scale: float = 1.0, relative: bool = True) -> ObjectiveValue:
    """``‖sΔ(x + δ sΔ(x)) - sΔ(x)‖² / δ² + α ‖z‖²`` with ``x = scale · z`` (score space).

    ``relative=True``: ``δ = delta · ‖x‖/‖sΔ(x)‖`` per sample, held constant for the gradient (see
    :func:`relative_step`); ``relative=False``: ``δ = delta`` (a number or a ``(B,)`` tensor) as printed.
    """
    x = scale * z
    eps_c, eps_u = eps_pair(x)
    sd = -(eps_c - eps_u) / sigma
    step = relative_step(x, sd, float(delta)) if relative else torch.as_tensor(delta, dtype=sd.dtype, device=sd.device)
    step_b = _per_sample(step, x) if step.dim() == 1 else step
    eps_c2, eps_u2 = eps_pair(x + step_b * sd)
    sd2 = -(eps_c2 - eps_u2) / sigma
    sharp = _flat_norm(sd2 - sd) ** 2 / step**2
    prior = _flat_norm(z) ** 2
    return ObjectiveValue(loss=sharp + alpha * prior, sharpness=sharp, prior=prior)


def reference_objective(eps_pair: EpsPair, z: Tensor, *, alpha: float, scale: float = 1.0) -> ObjectiveValue:
    """The authors' proxy ``‖eps_Δ(x + u)‖ + α ‖z‖`` with ``u = eps_Δ(x)/‖eps_Δ(x)‖`` (eps space)."""
    x = scale * z
    eps_c, eps_u = eps_pair(x)
    ed = eps_c - eps_u
    u = ed / _per_sample(_flat_norm(ed).clamp_min(1e-12), ed)
    eps_c2, eps_u2 = eps_pair(x + u)
    sharp = _flat_norm(eps_c2 - eps_u2)
    prior = _flat_norm(z)
    return ObjectiveValue(loss=sharp + alpha * prior, sharpness=sharp, prior=prior)


def evaluate_objective(eps_pair: EpsPair, z: Tensor, settings: SailSettings, *, sigma: float, alpha: float,
                       scale: float = 1.0, delta: float | None = None) -> ObjectiveValue:
    """The objective named by ``settings.objective`` (``delta``: the resolved relative step, paper only)."""
    if settings.objective == "paper":
        d = delta if delta is not None else settings.delta_for(torch.float32)
        return paper_objective(eps_pair, z, sigma=sigma, alpha=alpha, delta=d, scale=scale)
    return reference_objective(eps_pair, z, alpha=alpha, scale=scale)
