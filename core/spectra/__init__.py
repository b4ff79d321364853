"""Eigen-spectra of score Jacobians (docs/math.md §5): one entry point, :func:`spectrum_at`.

The spectrum of ``H = ∂s/∂x`` (the Hessian of ``log p_t``) at one latent and timestep, for the
conditional density, the unconditional one or their difference (``which = cond | uncond | delta``):

==========  ==========================================================================================
method      what it computes
==========  ==========================================================================================
arnoldi     ``k`` eigenvalues (complex Ritz values) by thick-restarted Arnoldi on ``v -> H v``
lanczos     ``k`` eigenvalues of the symmetric part ``(H + Hᵀ)/2`` (JVP + VJP per vector), or of ``H`` itself
            with ``assume_symmetric=True`` (closed-form oracles, whose Hessians are symmetric)
dense       the whole spectrum from the full Jacobian (``d`` batched JVPs, ``torch.linalg.eig``)
slq         the spectral density by stochastic Lanczos quadrature (symmetric part, like ``lanczos``)
==========  ==========================================================================================

``target`` picks which end: ``magnitude`` (largest ``|λ|``, the paper's Arnoldi), ``most_negative`` or
``most_positive`` (by real part). Results are :class:`Spectrum` dataclasses with relative residuals,
per-value convergence, HVP counts and seconds. Operators live in :mod:`.operators`, solvers in
:mod:`.solvers` (both re-exported here), the memorized-vs-held-out study in :mod:`.study`.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from sailscope.core.choices import METHOD_CHOICES, PRODUCT_CHOICES  # noqa: F401  (re-exports)
from sailscope.core.errors import UserInputError
from sailscope.core.metrics import DEFAULT_FD_STEP
from sailscope.core.sampling import StepRecord, encode, generate
from sailscope.core.score import DiffusersScoreModel
from sailscope.core.spectra.operators import (  # noqa: F401  (re-exports)
    HVP_CHOICES, WHICH_CHOICES, HvpCounter, LinearOp, ScoreSource, dense_matrix, diffusers_score_factory,
    matrix_operator, row_score_factory, score_jacobian, score_jacobian_transpose, symmetric_part, symmetrized_score_jacobian,
    transposed,
)
from sailscope.core.spectra.solvers import (  # noqa: F401  (re-exports)
    TARGET_CHOICES, PositiveCount, SolverProgress, SpectralDensity, Spectrum, arnoldi, count_positive,
    dense_spectrum, krylov_schur, lanczos, slq,
)

Method = Literal["arnoldi", "lanczos", "dense", "slq"]


def spectrum_operator(
    gs: ScoreSource,
    x: Tensor,
    *,
    which: str = "delta",
    method: str = "arnoldi",
    hvp: str = "exact",
    chunk: int = 16,
    assume_symmetric: bool = False,
    fd_step: float = DEFAULT_FD_STEP,
    products: str = "forward",
) -> LinearOp:
    """The operator a ``method`` runs on: ``H`` (arnoldi, dense) or its symmetric part (lanczos, slq).

    ``products="reverse"`` runs Arnoldi on ``H^T`` (VJPs): the same eigenvalues, cheaper products on CPU.
    """
    if method not in METHOD_CHOICES:
        raise UserInputError(f"method must be one of {', '.join(METHOD_CHOICES)}, got {method!r}")
    if products not in PRODUCT_CHOICES:
        raise UserInputError(f"products must be one of {', '.join(PRODUCT_CHOICES)}, got {products!r}")
    if method in ("arnoldi", "dense") or assume_symmetric:
        op = score_jacobian(gs, x, which=which, method=hvp, chunk=chunk, fd_step=fd_step)
        if assume_symmetric:
            op.symmetric = True
            op.description += " (assumed symmetric)"
        return transposed(op) if products == "reverse" and method != "dense" else op
    if hvp != "exact":
        raise UserInputError(f"method {method!r} needs the transpose product (hvp='exact'), or assume_symmetric=True")
    return symmetrized_score_jacobian(gs, x, which=which, chunk=chunk)


def operator_at_first_step(pipe, settings, *, which: str = "delta", chunk: int = 8) -> LinearOp:
    """Exact ``H_which`` at the latent of step 1 of tracked generation with ``settings`` (first image)."""
    seen: dict = {}
    for _ in generate(pipe, settings, probes=[lambda ctx: seen.setdefault("ctx", ctx) and None], stop_after=1):
        pass
    ctx = seen["ctx"]
    with torch.no_grad():
        cond, uncond, _ = encode(pipe, settings, pipe._execution_device)
    fac = diffusers_score_factory(DiffusersScoreModel.from_pipeline(pipe), ctx.t, cond, uncond, abar=ctx.abar)
    return score_jacobian(fac, ctx.x[:1], which=which, chunk=chunk)


def spectrum_at(
    gs: ScoreSource,
    x: Tensor,
    which: str = "delta",
    k: int = 20,
    method: str = "arnoldi",
    *,
    target: str = "magnitude",
    hvp: str = "exact",
    tol: float | None = None,
    m: int | None = None,
    chunk: int = 16,
    assume_symmetric: bool = False,
    probes: int = 8,
    steps: int = 40,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
    verify: bool = False,
    products: str = "forward",
    cancel=None,
    progress=None,
) -> Spectrum:
    """The spectrum of ``H_which`` at latent ``x`` (shape ``(1, *latent)``) for one sampling step.

    ``gs`` is a :class:`~sailscope.core.score.GuidedScore` (batch-agnostic) or a factory ``n -> GuidedScore``
    (see :func:`diffusers_score_factory`). For ``slq`` the returned :class:`Spectrum` has no eigenvalues and
    carries ``density``; ``k`` is ignored there. For ``dense``, ``k`` limits the values returned (the matrix is
    built from reverse-mode rows when exact products allow it). ``products="reverse"``: Arnoldi on ``H^T``.
    ``cancel`` (an Event or ``() -> bool``) is checked before every operator product and raises
    :class:`~sailscope.core.errors.Cancelled`; ``progress`` receives a :class:`SolverProgress` after each product.
    """
    # 1. Check inputs
    if method not in METHOD_CHOICES:
        raise UserInputError(f"method must be one of {', '.join(METHOD_CHOICES)}, got {method!r}")
    if target not in TARGET_CHOICES:
        raise UserInputError(f"target must be one of {', '.join(TARGET_CHOICES)}, got {target!r}")
    # 2. Operator
    op = spectrum_operator(gs, x, which=which, method=method, hvp=hvp, chunk=chunk, assume_symmetric=assume_symmetric,
                           products=products)
    # 3. Solve
    if method == "dense":
        return dense_spectrum(op, min(k, op.dim) if k else None, target=target, chunk=chunk, tol=tol, cancel=cancel)
    if method == "slq":
        dens = slq(op, probes=probes, steps=steps, sigma=sigma, generator=generator, cancel=cancel, progress=progress)
        empty = torch.zeros(0, dtype=torch.complex128)
        return Spectrum(eigenvalues=empty, residuals=torch.zeros(0, dtype=torch.float64),
                        converged=torch.zeros(0, dtype=torch.bool), method="slq", target=target, tol=0.0,
                        hvps=dens.hvps, seconds=dens.seconds, dim=op.dim, operator=op.description, density=dens)
    solver = arnoldi if method == "arnoldi" else lanczos
    return solver(op, k, target=target, tol=tol, m=m, generator=generator, verify=verify, cancel=cancel,
                  progress=progress)


# ----------------------------------------------------------------------------------------------
# Spectrum tracking during generation (a probe for sailscope.core.sampling)
# ----------------------------------------------------------------------------------------------
class SpectrumProbe:
    """A :data:`~sailscope.core.sampling.StepProbe` computing spectra at chosen 1-based steps.

    ``at`` is a set of steps, or ``every=n`` for steps 1, 1+n, ... It reads the step's detached latent and
    guided score only, uses its own seeded generator, and so never changes the images. Each step's record
    gets ``extras["spectrum"]`` (one JSON-ready dict per image in ``rows``); the :class:`Spectrum` objects are
    kept in ``results[step]``. With ``score_model`` and one prompt's ``embeddings = (cond, uncond)`` the
    operator batches vectors through the UNet; without them it evaluates one vector per call.
    """

    def __init__(self, at: set[int] | frozenset[int] | None = None, *, every: int | None = None, which: str = "delta",
                 k: int = 20, method: str = "arnoldi", rows: tuple[int, ...] = (0,), seed: int = 0,
                 score_model=None, embeddings: tuple[Tensor, Tensor] | None = None, **options) -> None:
        if (at is None) == (every is None):
            raise UserInputError("give exactly one of at (steps) or every (a step interval)")
        if every is not None and (not isinstance(every, int) or every < 1):
            raise UserInputError(f"every must be a positive integer, got {every!r}")
        if method not in METHOD_CHOICES:
            raise UserInputError(f"method must be one of {', '.join(METHOD_CHOICES)}, got {method!r}")
        self.at, self.every = (frozenset(at) if at is not None else None), every
        self.which, self.k, self.method, self.rows, self.seed = which, k, method, tuple(rows), seed
        self.score_model, self.embeddings, self.options = score_model, embeddings, options
        self.results: dict[int, list[Spectrum]] = {}

    def wants(self, step: int) -> bool:
        return step in self.at if self.at is not None else (step - 1) % self.every == 0

    def source(self, ctx, row: int) -> ScoreSource:
        """Batched factory from the embeddings when known, else the run's own guided score, row by row."""
        if self.score_model is not None and self.embeddings is not None:
            cond, uncond = self.embeddings
            return diffusers_score_factory(self.score_model, ctx.t, cond[row:row + 1], uncond[row:row + 1], abar=ctx.abar)
        return row_score_factory(ctx.guided, ctx.x, row)

    def __call__(self, ctx) -> dict | None:
        if not self.wants(ctx.step):
            return None
        out = []
        for row in self.rows:
            if row >= ctx.x.shape[0]:
                raise UserInputError(f"rows: image {row} is not in a batch of {ctx.x.shape[0]}")
            gen = torch.Generator("cpu").manual_seed(self.seed + 1000003 * ctx.step + row)
            s = spectrum_at(self.source(ctx, row), ctx.x[row:row + 1].detach().clone(), self.which, self.k,
                            self.method, generator=gen, **self.options)
            out.append(s)
        self.results[ctx.step] = out
        return {"spectrum": [dict(s.to_dict(), which=self.which) for s in out]}


def spectrum_at_step(pipe, settings, step: int, **probe_options):
    """Run tracked generation to ``step`` and return ``(StepRecord, Spectrum)`` computed on its latent."""
    with torch.no_grad():
        cond, uncond, _ = encode(pipe, settings, pipe._execution_device)
    probe = SpectrumProbe({step}, score_model=DiffusersScoreModel.from_pipeline(pipe), embeddings=(cond, uncond),
                          seed=settings.seed, **probe_options)
    record = None
    for item in generate(pipe, settings, probes=[probe], stop_after=step):
        if isinstance(item, StepRecord) and item.step == step:
            record = item
    return record, probe.results[step][0]
