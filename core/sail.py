"""SAIL: Sharpness-Aware Initialization for Latent diffusion (paper §5.1, docs/math.md §4).

Optimize the initial noise ``x_T`` so that the first sampling step sits in a smooth region of the
conditional density; the prompt and the model stay untouched. Adam runs on the *unit-variance* noise
(the tensor stock diffusers draws for the seed, before ``init_noise_sigma``) and is always fp32, even when
the UNet runs in fp16/bf16 (the UNet sees a cast copy; gradients flow back through the cast).

Notation (docs/math.md §1):

==============  ================================================================================
``z``           the unit-variance initial noise, the optimized variable (``x_T`` in the paper)
``x``           the UNet's VP input at step 1: ``x = c z`` with ``c = init_noise_sigma`` times the
                ``scale_model_input`` factor at ``t_0`` (DDIM: ``c = 1``; Euler: ``sqrt(1+σ_max²)/sqrt(1+σ_max²) = 1``
                up to how the scheduler defines its first sigma)
``sigma``       VP ``sigma_t`` at ``t_0`` (``sqrt(1 - abar)``), about 0.998 for SD at ``t = 981``
``eps_Δ``       ``eps_c(x) - eps_u(x)`` (eps space, what Wen's metric measures)
``sΔ``          ``-eps_Δ / sigma`` (score space)
``α, δ``        prior weight, finite-difference step of the paper objective
==============  ================================================================================

Objectives (per candidate, both cost two batched cond+uncond UNet calls forward, and their backward):

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

A candidate is *accepted* when its loss is ``≤ threshold``, checked before each Adam step and once more
after the last one; an accepted candidate leaves the batch (it costs no further UNet evaluations), and with
``stop="first"`` an image stops searching at its first accepted candidate. When no candidate of an image
reaches the threshold within ``max_steps``, up to ``rounds - 1`` more rounds start from fresh noises; when
they fail too the result says so (``converged=False``) and returns the lowest-loss iterate of any round.

Two thresholds (``trigger`` and ``threshold``): at step 0 a start is also accepted, unchanged, when its loss
is ``≤ trigger`` (default: the calibrated q0.9 of non-memorized prompts, so typical prompts are left alone);
a start that is sharper than that is optimized down to ``threshold`` (default: the calibrated median, the
flatness of a typical non-memorized start). With one calibrated level for both, the search stopped as soon
as a copying start looked "not unusual" and most demo-model copies survived (docs/mitigation.md). The trigger
judges the prompt: a start under it is kept only if its mean loss with ``trigger_noises - 1`` probe noises is
under it too.

``sphere=True`` (default) makes every step a Riemannian one on the sphere ``‖z‖ = ‖z_0‖`` of the candidate's
own start: the gradient's tangent component goes to Adam and the update is retracted onto the sphere. A unit
Gaussian in ``d`` dimensions lives on the shell ``‖z‖ ≈ sqrt(d)``; large free Adam steps left it (RMS ≈ 1.3
after 20 steps at lr 0.1) and turned demo images into noise texture. On the sphere ``α ‖z‖²`` is a constant,
so α only offsets the loss there.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from sailscope.core import infotext
from sailscope.core.errors import Cancelled, NonFiniteError, UserInputError

Objective = Literal["paper", "reference"]
OBJECTIVES: tuple[str, ...] = ("paper", "reference")
STOP_RULES: tuple[str, ...] = ("first", "all")
EpsPair = Callable[[Tensor], "tuple[Tensor, Tensor]"]
# (images without a converged candidate, round >= 1) -> (fresh candidates, image of each, seed of each)
Redraw = Callable[[list[int], int], "tuple[Tensor, list[int], list[int | None]]"]
# (images whose seed's start lies between threshold and trigger) -> (probe noises, image of each, seed of each)
Probe = Callable[[list[int]], "tuple[Tensor, list[int], list[int | None]]"]

# α defaults. reference: the authors' values (SD 1.x eps models 0.05, SD 2.x v models 0.01).
# paper: the first term's scale differs by orders of magnitude between models (score² at t_0: ~1e-4 for
# the demo model's non-memorized prompts), so with a calibration α is *calibrated* instead (see
# :meth:`sailscope.core.calibration.Calibration.paper_alpha`: the prior equals the median first term at a typical
# non-memorized start). These numbers are only the fallback without a calibration: at SD-like magnitudes
# (‖eps_Δ‖ ≈ 2 at step 1, ‖z‖ = sqrt(d)) they give the prior the reference default's share of the gradient,
# ∇(α'‖z‖²) / ∇‖e‖² = ∇(α‖z‖) / ∇‖e‖  =>  α' ≈ α ‖e‖ / ‖z‖.
DEFAULT_ALPHA = {("reference", "epsilon"): 0.05, ("reference", "v_prediction"): 0.01,
                 ("paper", "epsilon"): 1e-3, ("paper", "v_prediction"): 2e-4}


# relative finite-difference step of the paper objective, by the UNet's dtype (see the module docstring)
AUTO_DELTA = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 1e-1}


def auto_delta(dtype: torch.dtype | None) -> float:
    """The paper objective's relative step for a UNet of this dtype (fp32 = the metrics' ``fd_step``)."""
    return AUTO_DELTA.get(dtype, 1e-3)


def default_alpha(objective: str, prediction_type: str = "epsilon") -> float:
    """The α used when :class:`SailSettings` leaves it unset."""
    pred = "v_prediction" if prediction_type == "v_prediction" else "epsilon"
    return DEFAULT_ALPHA[(objective, pred)]


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SailSettings:
    """Everything that determines SAIL's ``x_T`` besides the generation settings (seed, prompt, scheduler).

    ``threshold``: the loss a candidate is optimized down to, a number in the objective's units or ``"auto"``
    (per-model calibration, see :mod:`sailscope.core.calibration`). ``trigger``: the seed's own start is kept
    unchanged when its loss is already ``≤ trigger`` (``"auto"``: the calibrated trigger quantile, or the
    threshold without a calibration; ``None``: the threshold). ``trigger_noises``: memorization is a property of
    the prompt, and a flatter seed of a memorized prompt can still copy, so that start is kept only if its mean
    loss with ``trigger_noises - 1`` fresh probe noises is under the trigger too (1 = the seed alone decides).
    ``sphere``: keep each candidate on the sphere of its start's norm. ``candidates``: 1 = only the seed's own
    ``x_T``; more add distinct noises drawn from ``(seed, candidate_seed, k)``. ``rounds``: when no candidate of
    an image reaches the threshold within ``max_steps``, up to ``rounds - 1`` more rounds start from fresh,
    distinct noises (the authors' loop re-draws its candidates too). ``alpha=None``: the model's calibrated α for
    the paper objective (fallback :func:`default_alpha`), the authors' α for the reference objective;
    ``delta=None`` (paper objective's relative step) picks :func:`auto_delta` for the UNet's dtype.
    """

    objective: Objective = "paper"
    threshold: float | str = "auto"
    trigger: float | str | None = "auto"
    max_steps: int = 6
    candidates: int = 1
    rounds: int = 2
    trigger_noises: int = 4
    lr: float = 0.3
    sphere: bool = True
    alpha: float | None = None
    delta: float | None = None
    candidate_seed: int = 0
    stop: Literal["first", "all"] = "first"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserInputError(f"sail objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if isinstance(self.threshold, str):
            if self.threshold != "auto":
                raise UserInputError(f"sail threshold must be a number or 'auto', got {self.threshold!r}")
        elif isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise UserInputError(f"sail threshold must be a finite number or 'auto', got {self.threshold!r}")
        if isinstance(self.trigger, str):
            if self.trigger != "auto":
                raise UserInputError(f"sail trigger must be a number, 'auto' or unset, got {self.trigger!r}")
        elif self.trigger is not None and (isinstance(self.trigger, bool) or not isinstance(self.trigger, (int, float))
                                           or not math.isfinite(self.trigger)):
            raise UserInputError(f"sail trigger must be a finite number, 'auto' or unset, got {self.trigger!r}")
        if not isinstance(self.sphere, bool):
            raise UserInputError(f"sail sphere must be true or false, got {self.sphere!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or not 0 <= self.max_steps <= 1000:
            raise UserInputError(f"sail max_steps must be an integer in [0, 1000], got {self.max_steps!r}")
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or not 1 <= self.candidates <= 64:
            raise UserInputError(f"sail candidates must be an integer in [1, 64], got {self.candidates!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or not 1 <= self.rounds <= 16:
            raise UserInputError(f"sail rounds must be an integer in [1, 16], got {self.rounds!r}")
        tn = self.trigger_noises
        if isinstance(tn, bool) or not isinstance(tn, int) or not 1 <= tn <= 64:
            raise UserInputError(f"sail trigger_noises must be an integer in [1, 64], got {self.trigger_noises!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UserInputError(f"sail lr must be a finite number > 0, got {self.lr!r}")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha >= 0):
            raise UserInputError(f"sail alpha must be a finite number >= 0 (or unset), got {self.alpha!r}")
        if self.delta is not None and not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta)
                                           and 0 < self.delta <= 1):
            raise UserInputError(f"sail delta must be a number in (0, 1] (or unset), got {self.delta!r}")
        if isinstance(self.candidate_seed, bool) or not isinstance(self.candidate_seed, int) or self.candidate_seed < 0:
            raise UserInputError(f"sail candidate_seed must be an integer >= 0, got {self.candidate_seed!r}")
        if self.stop not in STOP_RULES:
            raise UserInputError(f"sail stop must be one of {', '.join(STOP_RULES)}, got {self.stop!r}")

    def alpha_for(self, prediction_type: str = "epsilon") -> float:
        return float(self.alpha) if self.alpha is not None else default_alpha(self.objective, prediction_type)

    def delta_for(self, dtype: torch.dtype | None = torch.float32) -> float:
        return float(self.delta) if self.delta is not None else auto_delta(dtype)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Objectives (small pure functions over an eps pair)
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Adam (row-wise, fp32): rows are candidates; a row that left the batch keeps its state untouched
# ----------------------------------------------------------------------------------------------
@dataclass
class RowAdam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) applied to selected rows of one tensor."""

    shape: tuple[int, ...]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    m: Tensor = field(init=False)
    v: Tensor = field(init=False)
    count: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.m = torch.zeros(self.shape, dtype=torch.float32)
        self.v = torch.zeros(self.shape, dtype=torch.float32)
        self.count = torch.zeros(self.shape[0], dtype=torch.int64)

    def grow(self, n: int) -> None:
        """Append ``n`` fresh rows (new candidates start with zero moments)."""
        self.m = torch.cat([self.m, self.m.new_zeros((n, *self.m.shape[1:]))])
        self.v = torch.cat([self.v, self.v.new_zeros((n, *self.v.shape[1:]))])
        self.count = torch.cat([self.count, self.count.new_zeros(n)])

    def step(self, z: Tensor, rows: Tensor, grad: Tensor) -> None:
        """Update ``z[rows]`` in place with gradients ``grad`` (one row per entry of ``rows``)."""
        b1, b2 = self.betas
        g = grad.to(torch.float32)
        self.count[rows] += 1
        k = self.count[rows].to(torch.float64)
        m = self.m[rows].mul_(b1).add_(g, alpha=1 - b1)
        v = self.v[rows].mul_(b2).addcmul_(g, g, value=1 - b2)
        self.m[rows], self.v[rows] = m, v
        bc1 = _per_sample((1 - b1**k).to(torch.float32), g)
        bc2 = _per_sample((1 - b2**k).sqrt().to(torch.float32), g)
        z[rows] -= self.lr * (m / bc1) / (v.sqrt() / bc2 + self.eps)


# ----------------------------------------------------------------------------------------------
# Records and results
# ----------------------------------------------------------------------------------------------
@dataclass
class SailStep:
    """One objective evaluation of the active candidates (step 0 = at the initial noises)."""

    step: int
    max_steps: int
    loss: list[float | None]  # per candidate (None: not evaluated at this step)
    sharpness: list[float | None]  # first term, same units as the objective
    prior: list[float | None]  # ‖z‖² (paper) or ‖z‖ (reference)
    accepted: list[int]  # candidates accepted at this step
    threshold: float
    elapsed: float
    unet_calls: int  # cumulative batched UNet calls so far
    round: int = 0  # 0 = the first candidates; r > 0 = the r-th re-draw (its candidates have new columns)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SailResult:
    """The chosen initial noise per image and how it was found.

    ``x_T`` is unit-variance (like :func:`~sailscope.core.generate.initial_noise`), CPU fp32, one row per
    image. ``chosen[i]`` is a candidate index within image ``i`` (0 = the seed's own ``x_T``);
    ``steps[i]`` the Adam updates it received. ``unet_calls`` counts batched UNet calls (each evaluates cond
    and uncond for the active candidates), ``unet_rows`` the candidate-evaluations inside them.
    """

    x_T: Tensor
    converged: list[bool]
    chosen: list[int]
    steps: list[int]
    loss: list[float]
    initial_loss: list[float]
    trace: list[SailStep]
    threshold: float
    threshold_source: str
    objective: str
    alpha: float
    settings: SailSettings
    candidate_image: list[int]  # image index of each candidate (trace columns)
    candidate_seeds: list[int | None]  # None: the seed's stock x_T
    unet_calls: int
    unet_rows: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    delta: float | None = None  # paper objective's relative step (None for reference)
    alpha_source: str = "user setting"
    trigger: float | None = None  # starts with loss <= max(trigger, threshold) were kept unchanged
    trigger_source: str = "same as the threshold"
    chosen_round: list[int] = field(default_factory=list)  # per image: 0 = its first candidates, r = r-th re-draw
    # per image: the prompt's mean step-0 loss over its start and the probe noises (None: not needed), and
    # whether that mean overruled the trigger (the start was under it, the prompt was not: optimized)
    prompt_loss: list[float | None] = field(default_factory=list)
    trigger_overruled: list[bool] = field(default_factory=list)

    @property
    def all_converged(self) -> bool:
        return all(self.converged)

    def report(self) -> dict:
        return {
            "objective": self.objective, "alpha": self.alpha, "alpha_source": self.alpha_source, "delta": self.delta,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source, "trigger": self.trigger, "trigger_source": self.trigger_source,
            "settings": self.settings.to_dict(),
            "converged": self.converged, "chosen": self.chosen, "chosen_round": self.chosen_round, "steps": self.steps,
            "loss": self.loss, "prompt_loss": self.prompt_loss, "trigger_overruled": self.trigger_overruled,
            "initial_loss": self.initial_loss, "candidate_image": self.candidate_image,
            "candidate_seeds": self.candidate_seeds, "unet_calls": self.unet_calls, "unet_rows": self.unet_rows,
            "seconds": self.seconds, "warnings": list(self.warnings), "trace": [s.to_dict() for s in self.trace],
        }


class _CountingEpsPair:
    def __init__(self, fn: EpsPair) -> None:
        self.fn, self.calls, self.rows = fn, 0, 0

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.calls += 1
        self.rows += x.shape[0]
        return self.fn(x)


def _is_cancelled(cancel: Callable[[], bool] | threading.Event | None) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


def _opt(v: Tensor, rows: list[int], n: int) -> list[float | None]:
    out: list[float | None] = [None] * n
    for j, r in enumerate(rows):
        out[r] = float(v[j])
    return out


# ----------------------------------------------------------------------------------------------
# The optimizer (model-agnostic: any eps pair, Gaussian oracles included)
# ----------------------------------------------------------------------------------------------
def iter_optimize(
    eps_pair: EpsPair,
    z0: Tensor,
    settings: SailSettings,
    *,
    sigma: float,
    threshold: float,
    alpha: float,
    scale: float = 1.0,
    candidate_image: Sequence[int] | None = None,
    candidate_seeds: Sequence[int | None] | None = None,
    threshold_source: str = "user setting",
    delta: float | None = None,
    alpha_source: str = "user setting",
    trigger: float | None = None,
    trigger_source: str = "same as the threshold",
    redraw: Redraw | None = None,
    probe: Probe | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
) -> Iterator[SailStep | SailResult]:
    """Run SAIL on candidates ``z0`` (K, ...); yields a :class:`SailStep` per evaluation, then the result.

    ``candidate_image[k]`` is the image candidate ``k`` belongs to (default: all image 0); the result has
    one row per image. ``eps_pair`` must accept any batch size (rows are independent). ``delta``: the
    paper objective's resolved relative step (default ``settings.delta_for(float32)``). ``trigger``: the
    resolved trigger (None = the threshold): an image's own start (its first row) is kept at step 0 when its
    loss is ``≤ max(trigger, threshold)``; every other candidate needs the threshold. ``redraw(images, round)``
    returns fresh candidates (and their seeds) for the images no candidate of which converged; without it there
    is one round whatever ``settings.rounds`` says.
    ``probe(images)`` returns ``trigger_noises - 1`` noises per image whose seed's start is under the trigger but
    above the threshold; the start is kept only if its mean loss with theirs is under the trigger too (without
    ``probe`` the seed's start alone decides).
    """
    start = time.perf_counter()
    delta = float(delta) if delta is not None else settings.delta_for(torch.float32)
    counted = _CountingEpsPair(eps_pair)
    k_total = z0.shape[0]
    groups = list(candidate_image) if candidate_image is not None else [0] * k_total
    if len(groups) != k_total:
        raise UserInputError(f"candidate_image has {len(groups)} entries for {k_total} candidates")
    seeds_of = list(candidate_seeds) if candidate_seeds is not None else [None] * k_total
    n_images = max(groups) + 1
    device = z0.device
    z = z0.detach().to("cpu", torch.float32).clone()
    radius = _flat_norm(z)  # the sphere each candidate stays on (settings.sphere)
    first_level = threshold if trigger is None else max(float(trigger), float(threshold))
    adam = RowAdam(tuple(z.shape), lr=float(settings.lr))
    active = list(range(k_total))
    row_round = [0] * k_total
    accepted_step = [-1] * k_total
    accepted_z: dict[int, Tensor] = {}
    accepted_loss: dict[int, float] = {}
    best_loss = [math.inf] * k_total
    best_z = z.clone()
    best_steps = [0] * k_total
    initial_loss = [math.nan] * k_total
    image_done = [False] * n_images
    trace: list[SailStep] = []
    n_rounds = settings.rounds if redraw is not None else 1
    prompt_loss: list[float | None] = [None] * n_images
    overruled = [False] * n_images
    first_row = [groups.index(i) for i in range(n_images)]  # each image's own start (the seed's x_T)

    for round_ in range(n_rounds):
        if round_ > 0:  # 0. a new round: fresh candidates for the images that did not converge
            failed = [i for i in range(n_images) if not image_done[i]]
            if not failed:
                break
            fresh, fresh_groups, fresh_seeds = redraw(failed, round_)
            fresh = fresh.detach().to("cpu", torch.float32)
            n_new = fresh.shape[0]
            active = list(range(k_total, k_total + n_new))
            k_total += n_new
            z, best_z = torch.cat([z, fresh]), torch.cat([best_z, fresh])
            radius = torch.cat([radius, _flat_norm(fresh)])
            adam.grow(n_new)
            groups += list(fresh_groups); seeds_of += list(fresh_seeds); row_round += [round_] * n_new
            accepted_step += [-1] * n_new; best_loss += [math.inf] * n_new; best_steps += [0] * n_new
            initial_loss += [math.nan] * n_new
        for step in range(settings.max_steps + 1):
            if _is_cancelled(cancel):
                raise Cancelled(f"SAIL cancelled before step {step} of {settings.max_steps} (round {round_ + 1})")
            need_grad = step < settings.max_steps
            rows = torch.tensor(active, dtype=torch.long)
            zi = z[rows].to(device).requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                val = evaluate_objective(counted, zi, settings, sigma=sigma, alpha=alpha, scale=scale, delta=delta)
            loss = val.loss.detach().to("cpu", torch.float64)
            # the trigger keeps only an image's own start (its first row, round 0, step 0), and judges the prompt:
            # where the start alone would be kept, its mean loss with fresh probe noises must be under it too
            keep_level = {r: first_level for r in active if step == 0 and round_ == 0 and r == first_row[groups[r]]}
            if keep_level and probe is not None and settings.trigger_noises > 1 and first_level > threshold:
                under = [groups[r] for j, r in enumerate(active)
                         if r in keep_level and threshold < float(loss[j]) <= first_level]
                if under:
                    pz, pgroups, _ = probe(under)
                    with torch.no_grad():
                        pl = evaluate_objective(counted, pz.to(device, torch.float32), settings, sigma=sigma,
                                                alpha=alpha, scale=scale, delta=delta).loss
                    pl = pl.detach().to("cpu", torch.float64)
                    for i in under:
                        vals = [float(loss[active.index(first_row[i])])]
                        vals += [float(v) for v, g in zip(pl, pgroups) if g == i]
                        prompt_loss[i] = sum(vals) / len(vals)
                        if not prompt_loss[i] <= first_level:  # a NaN overrules too
                            overruled[i] = True
                            del keep_level[first_row[i]]
            newly: list[int] = []
            for j, r in enumerate(active):
                lv = float(loss[j])
                if step == 0:
                    initial_loss[r] = lv
                if lv < best_loss[r]:  # NaN never wins
                    best_loss[r], best_steps[r] = lv, step
                    best_z[r] = z[r]
                if lv <= keep_level.get(r, threshold):
                    accepted_step[r], accepted_z[r], accepted_loss[r] = step, z[r].clone(), lv
                    newly.append(r)
            if all(not math.isfinite(float(v)) for v in loss) and step == 0 and round_ == 0:
                raise NonFiniteError("SAIL objective is not finite at the initial noise (NaN/inf from the model)",
                                     step=0)
            for r in newly:
                image_done[groups[r]] = True
            trace.append(SailStep(
                step=step, max_steps=settings.max_steps, loss=_opt(loss, active, k_total),
                sharpness=_opt(val.sharpness.detach().cpu(), active, k_total),
                prior=_opt(val.prior.detach().cpu(), active, k_total), accepted=newly, threshold=threshold,
                elapsed=time.perf_counter() - start, unet_calls=counted.calls, round=round_,
            ))
            yield trace[-1]
            keep = [j for j, r in enumerate(active)
                    if accepted_step[r] < 0 and not (settings.stop == "first" and image_done[groups[r]])]
            if not need_grad or not keep:
                break
            keep_t = torch.tensor(keep, dtype=torch.long)
            lk = val.loss[keep_t.to(val.loss.device)]
            lk = torch.where(torch.isfinite(lk), lk, torch.zeros_like(lk))  # a NaN row must not poison the others
            (grad,) = torch.autograd.grad(lk.sum(), zi)
            moved = rows[keep_t]
            g = grad[keep_t.to(grad.device)].detach().to("cpu", torch.float32)
            if settings.sphere:  # Riemannian step: tangent gradient, Adam, retraction (moments are not transported)
                g = tangent_component(g, z[moved])
            adam.step(z, moved, g)
            if settings.sphere:
                z[moved] = retract_to_sphere(z[moved], radius[moved])
            active = [active[j] for j in keep]

    # choose per image: earliest accepted candidate (earliest round, then step, then lowest index), else the
    # lowest loss seen over every round
    x_T, converged, chosen, steps, losses, chosen_round, warnings = [], [], [], [], [], [], []
    for i in range(n_images):
        members = [r for r in range(k_total) if groups[r] == i]
        acc = [r for r in members if accepted_step[r] >= 0]
        if acc:
            r = min(acc, key=lambda c: (row_round[c], accepted_step[c], c))
            x_T.append(accepted_z[r]); converged.append(True); steps.append(accepted_step[r]); losses.append(accepted_loss[r])
        else:
            r = min(members, key=lambda c: (best_loss[c] if math.isfinite(best_loss[c]) else math.inf, c))
            x_T.append(best_z[r].clone()); converged.append(False); steps.append(best_steps[r]); losses.append(best_loss[r])
            warnings.append(
                f"SAIL did not reach the threshold {threshold:.4g} for image {i} within {settings.max_steps} steps "
                f"({len(members)} candidate(s) in {max(row_round[c] for c in members) + 1} round(s)); using the "
                f"lowest-loss noise found (loss {best_loss[r]:.4g}, candidate {members.index(r)}, step {best_steps[r]})"
            )
        chosen.append(members.index(r))
        chosen_round.append(row_round[r])
    yield SailResult(
        x_T=torch.stack(x_T), converged=converged, chosen=chosen, steps=steps, loss=losses,
        initial_loss=[initial_loss[[r for r in range(k_total) if groups[r] == i][0]] for i in range(n_images)],
        trace=trace, threshold=threshold, threshold_source=threshold_source, objective=settings.objective,
        alpha=alpha, settings=settings, candidate_image=groups, candidate_seeds=seeds_of,
        unet_calls=counted.calls, unet_rows=counted.rows, seconds=time.perf_counter() - start, warnings=warnings,
        delta=delta if settings.objective == "paper" else None, alpha_source=alpha_source,
        trigger=trigger, trigger_source=trigger_source, chosen_round=chosen_round, prompt_loss=prompt_loss,
        trigger_overruled=overruled,
    )


def optimize(eps_pair: EpsPair, z0: Tensor, settings: SailSettings, **kwargs: Any) -> SailResult:
    """Consume :func:`iter_optimize` and return its :class:`SailResult`."""
    return _final_result(iter_optimize(eps_pair, z0, settings, **kwargs))


def _final_result(items: Iterable[Any]) -> SailResult:
    """The last item of a SAIL progress stream (always its :class:`SailResult`)."""
    result = None
    for result in items:
        pass
    assert isinstance(result, SailResult)
    return result


# ----------------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------------
def candidate_seed(seed: int, k: int, salt: int = 0) -> int:
    """The torch seed of extra candidate ``k >= 1`` of the image with ``seed`` (never ``seed + j``-style)."""
    state = np.random.SeedSequence([int(seed), int(salt), int(k), 0x5A11]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) % (2**63 - 1)


PROBE_SALT = 104_729  # probe noises' seed salt: apart from every round's (candidate_seed + 7919 r, r <= 16)


class CandidateDraws:
    """Distinct candidate noises of every image and round (no two candidates are ever equal, across images and
    rounds: a draw equal to an earlier one is redrawn with the next salt).

    ``stock`` is ``(N, C, H, W)`` (one row per image, seeds ``seeds``). Round 0 (:meth:`first`): row 0 of each image
    is its stock ``x_T``, then ``candidates - 1`` draws seeded by ``(seed, k, candidate_seed)``; round ``r``
    (:meth:`redraw`): ``candidates`` draws per image seeded by ``(seed, k, candidate_seed + r·7919)``; the trigger's
    prompt check (:meth:`probe`): ``trigger_noises - 1`` draws seeded by ``(seed, k, candidate_seed + PROBE_SALT)``.
    """

    def __init__(self, stock: Tensor, seeds: Sequence[int], settings: SailSettings) -> None:
        self.stock = stock.detach().to("cpu", torch.float32)
        self.seeds, self.settings = list(seeds), settings
        self.seen = {self._key(self.stock[i]) for i in range(self.stock.shape[0])}

    @staticmethod
    def _key(t: Tensor) -> bytes:
        return t.contiguous().numpy().tobytes()

    def _draw(self, image: int, k: int, salt: int) -> tuple[Tensor, int]:
        from diffusers.utils.torch_utils import randn_tensor

        while True:
            s = candidate_seed(self.seeds[image], k, salt)
            g = torch.Generator("cpu").manual_seed(s)
            t = randn_tensor(tuple(self.stock.shape[1:]), generator=g, device=torch.device("cpu"), dtype=torch.float32)
            if self._key(t) not in self.seen:
                self.seen.add(self._key(t))
                return t, s
            salt += 1_000_003

    def first(self) -> tuple[Tensor, list[int], list[int | None]]:
        """Round 0: ``(z0, image_of_row, seed_of_row)``; seed ``None`` marks a stock ``x_T``."""
        rows, groups, seeds = [], [], []
        for i in range(self.stock.shape[0]):
            rows.append(self.stock[i]); groups.append(i); seeds.append(None)
            for k in range(1, self.settings.candidates):
                t, s = self._draw(i, k, self.settings.candidate_seed)
                rows.append(t); groups.append(i); seeds.append(s)
        return torch.stack(rows), groups, seeds

    def probe(self, images: Sequence[int]) -> tuple[Tensor, list[int], list[int | None]]:
        """``trigger_noises - 1`` noises per image for the trigger's prompt check (the :data:`Probe` contract)."""
        rows, groups, seeds = [], [], []
        for i in images:
            for k in range(1, self.settings.trigger_noises):
                t, s = self._draw(i, k, self.settings.candidate_seed + PROBE_SALT)
                rows.append(t); groups.append(i); seeds.append(s)
        return torch.stack(rows), groups, seeds

    def redraw(self, images: Sequence[int], round_: int) -> tuple[Tensor, list[int], list[int | None]]:
        """Round ``round_ >= 1``: fresh candidates for ``images`` (the :data:`Redraw` contract)."""
        rows, groups, seeds = [], [], []
        for i in images:
            for k in range(1, self.settings.candidates + 1):
                t, s = self._draw(i, k, self.settings.candidate_seed + 7919 * round_)
                rows.append(t); groups.append(i); seeds.append(s)
        return torch.stack(rows), groups, seeds


def draw_candidates(stock: Tensor, seeds: Sequence[int],
                    settings: SailSettings) -> tuple[Tensor, list[int], list[int | None]]:
    """Round 0's candidates for every image (:meth:`CandidateDraws.first`): ``(z0, image_of_row, seed_of_row)``."""
    return CandidateDraws(stock, seeds, settings).first()


# ----------------------------------------------------------------------------------------------
# Diffusers edge: first-step geometry and the pipeline-level entry points
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FirstStep:
    """The UNet's view of ``x_T``: timestep, noise level and the scale from unit noise to the VP input."""

    t: Tensor
    abar: float
    sigma: float
    scale: float  # x = scale * z


def first_step(pipe: Any, settings: Any) -> FirstStep:
    """``t_0``, ``abar`` and ``x = scale · z`` for the settings' scheduler (minds ``init_noise_sigma``)."""
    from sailscope.core.generate import make_scheduler, noise_level
    from sailscope.core.score import DiffusersScoreModel

    scheduler = make_scheduler(pipe, settings.scheduler)
    scheduler.set_timesteps(settings.steps, device=torch.device("cpu"))
    t0 = scheduler.timesteps[0]
    probe = torch.full((1, 1), float(scheduler.init_noise_sigma), dtype=torch.float32)
    scale = float(scheduler.scale_model_input(probe, t0).reshape(-1)[0])
    abar = noise_level(scheduler, DiffusersScoreModel.from_pipeline(pipe), 0, t0)
    return FirstStep(t=t0, abar=float(abar), sigma=(1.0 - float(abar)) ** 0.5, scale=scale)


def diffusers_eps_pair(pipe: Any, first: FirstStep, cond: Tensor, uncond: Tensor) -> EpsPair:
    """``x -> (eps_c, eps_u)`` at step 1 for any batch size (embeddings broadcast), fp32 out."""
    from sailscope.core.score import DiffusersScoreModel

    model = DiffusersScoreModel.from_pipeline(pipe)
    device = model.device
    c1, u1 = cond[:1], uncond[:1]
    t = first.t.to(device) if torch.is_tensor(first.t) else first.t

    def eps_pair(x: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        return model.eps_pair_raw(x.to(device), t, c1.expand(b, *c1.shape[1:]), u1.expand(b, *u1.shape[1:]),
                                  abar=first.abar)

    return eps_pair


def prediction_type(pipe: Any) -> str:
    return pipe.scheduler.config.get("prediction_type", "epsilon")


def iter_sail(
    pipe: Any,
    settings: Any,
    sail: SailSettings,
    *,
    cancel: Callable[[], bool] | threading.Event | None = None,
) -> Iterator[SailStep | SailResult]:
    """SAIL for a pipeline and :class:`~sailscope.core.generate.GenerationSettings`: progress, then result.

    Candidate 0 of image ``i`` is exactly the noise stock diffusers draws for seed ``seed + i``.
    """
    from sailscope.core.calibration import resolve_alpha, resolve_threshold, resolve_trigger
    from sailscope.core.generate import check_settings, encode, initial_noise

    # 1. Check inputs
    if not isinstance(sail, SailSettings):
        raise UserInputError(f"sail must be SailSettings, got {type(sail).__name__}")
    unet_cfg = pipe.unet.config
    n_down = len(unet_cfg.block_out_channels) - 1
    check_settings(settings, pipe.vae_scale_factor, 2**n_down if n_down > 0 else 1)
    alpha, alpha_source = resolve_alpha(pipe, sail)
    delta = sail.delta_for(pipe.unet.dtype)
    # 2. Threshold (before any model work: a missing calibration fails fast)
    threshold, source = resolve_threshold(pipe, sail, alpha=alpha, delta=delta)
    trigger, trigger_source = resolve_trigger(pipe, sail, alpha=alpha, delta=delta)
    # 3. Embeddings and first-step geometry
    device = pipe._execution_device
    with torch.no_grad():
        cond, uncond, _ = encode(pipe, replace(settings, num_images=1), device)
    first = first_step(pipe, settings)
    # 4. Candidates
    stock = initial_noise(pipe, settings)
    seeds = [settings.seed + i for i in range(settings.num_images)]
    draws = CandidateDraws(stock, seeds, sail)
    z0, groups, row_seeds = draws.first()
    # 5. Optimize
    yield from iter_optimize(
        diffusers_eps_pair(pipe, first, cond, uncond), z0.to(device), sail, sigma=first.sigma, threshold=threshold,
        alpha=alpha, scale=first.scale, candidate_image=groups, candidate_seeds=row_seeds,
        threshold_source=source, delta=delta, alpha_source=alpha_source, trigger=trigger,
        trigger_source=trigger_source, redraw=draws.redraw, probe=draws.probe, cancel=cancel,
    )


def run_sail(pipe: Any, settings: Any, sail: SailSettings, **kwargs: Any) -> SailResult:
    """Consume :func:`iter_sail`."""
    return _final_result(iter_sail(pipe, settings, sail, **kwargs))


# ----------------------------------------------------------------------------------------------
# Pair generation: original (seed's x_T, prompt as given) and mitigated (SAIL x_T, or RTA's prompt)
# ----------------------------------------------------------------------------------------------
@dataclass
class PairResult:
    """Both runs of one mitigation pair, everything else identical.

    ``mitigation`` is the :class:`SailResult` (or :class:`~sailscope.core.rta.RtaResult`);
    ``mitigated_seconds`` = mitigation time + the mitigated run's sampling time (the cost the user waits for).
    """

    original: Any  # GenerationResult
    mitigated: Any  # GenerationResult
    mitigation: Any  # SailResult | RtaResult
    method: str

    @property
    def mitigated_seconds(self) -> float:
        return float(self.mitigation.seconds) + float(self.mitigated.seconds)

    def report(self) -> dict:
        return {
            "method": self.method, "mitigation": self.mitigation.report(),
            "original": self.original.report(), "mitigated": self.mitigated.report(),
            "original_seconds": self.original.seconds, "mitigated_seconds": self.mitigated_seconds,
        }


def generate_pair(
    pipe: Any,
    settings: Any,
    mitigation: Any,
    *,
    probes: Sequence[Any] = (),
    cancel: Callable[[], bool] | threading.Event | None = None,
    run_original: bool = True,
) -> Iterator[Any]:
    """Stream a mitigation pair: mitigation progress, then both runs' step records, then a :class:`PairResult`.

    Yields, in order: :class:`SailStep` items and the :class:`SailResult` (SAIL) or the
    :class:`~sailscope.core.rta.RtaResult` (RTA); the original run's ``StepRecord`` s (``run="original"``)
    and its ``GenerationResult``; the mitigated run's (``run="sail"`` or ``"rta"``); finally the
    :class:`PairResult`. ``mitigation`` is a :class:`SailSettings` or :class:`~sailscope.core.rta.RtaSettings`.
    """
    from sailscope.core.generate import GenerationResult, generate
    from sailscope.core.rta import RtaSettings, iter_rta

    # 1. Mitigation plan: a new x_T (SAIL) or new settings (RTA)
    if isinstance(mitigation, SailSettings):
        method, result = "sail", None
        for item in iter_sail(pipe, settings, mitigation, cancel=cancel):
            yield item
            result = item
        x_T, mitigated_settings = result.x_T, settings
    elif isinstance(mitigation, RtaSettings):
        method, result = "rta", None
        for item in iter_rta(pipe, settings, mitigation):
            yield item
            result = item
        x_T, mitigated_settings = None, result.settings
    else:
        raise UserInputError(f"mitigation must be SailSettings or RtaSettings, got {type(mitigation).__name__}")
    # 2. Original run (the seed's x_T)
    original = None
    if run_original:
        for item in generate(pipe, settings, probes=probes, cancel=cancel, run="original"):
            yield item
            if isinstance(item, GenerationResult):
                original = item
    # 3. Mitigated run
    mitigated = None
    for item in generate(pipe, mitigated_settings, x_T=x_T, probes=probes, cancel=cancel, run=method):
        yield item
        if isinstance(item, GenerationResult):
            mitigated = item
    if mitigated is not None:
        mitigated.warnings = list(result.warnings) + list(mitigated.warnings)
    yield PairResult(original=original, mitigated=mitigated, mitigation=result, method=method)


def run_pair(pipe: Any, settings: Any, mitigation: Any, **kwargs: Any) -> PairResult:
    """Consume :func:`generate_pair` and return the :class:`PairResult`."""
    pair = None
    for item in generate_pair(pipe, settings, mitigation, **kwargs):
        if isinstance(item, PairResult):
            pair = item
    assert pair is not None
    return pair


def infotext_fields(result: Any) -> dict:
    """Infotext of a mitigated image (image 0 of the result): its settings and result, core/infotext.py's keys."""
    if isinstance(result, SailResult):
        s = result.settings
        return infotext.fields(
            sail="on", objective=result.objective, threshold=result.threshold,
            trigger="none" if result.trigger is None else result.trigger, alpha=result.alpha, lr=s.lr,
            max_steps=s.max_steps, candidates=s.candidates, rounds=s.rounds, sphere=s.sphere,
            steps=result.steps[0], converged=result.converged[0], start_loss=result.initial_loss[0],
            loss=result.loss[0], round=(result.chosen_round or [0])[0] + 1,
            trigger_overruled=bool((result.trigger_overruled or [False])[0]),
            threshold_source=result.threshold_source, trigger_source=result.trigger_source,
        )
    return infotext.fields(rta_tokens=result.rta.tokens, rta_prompt=result.prompt)


__all__ = [
    "infotext_fields",
    "SailSettings", "SailResult", "SailStep", "PairResult", "ObjectiveValue", "FirstStep", "RowAdam",
    "paper_objective", "reference_objective", "evaluate_objective", "iter_optimize", "optimize",
    "candidate_seed", "draw_candidates", "first_step", "diffusers_eps_pair", "iter_sail", "run_sail",
    "generate_pair", "run_pair",
    "default_alpha", "auto_delta", "relative_step", "retract_to_sphere", "tangent_component", "OBJECTIVES",
]
