"""Eigen-solvers over matrix-free operators (:class:`~sailscope.core.spectra.operators.LinearOp`).

=============  ===========================================================================================
``d``          dimension of the operator (flattened latent)
``m``          Krylov subspace size (ARPACK's ``ncv``); memory is ``O(m d)``
``k``          number of wanted eigenvalues; ``p`` the number kept at a thick restart (``k <= p < m``)
``V``          orthonormal basis, rows ``V[0..m]``; ``H`` the ``(m+1, m)`` projected matrix with
               ``A V[:m]^T = V[:m+1]^T H`` (a Krylov decomposition, Hessenberg before the first restart)
``theta, S``   Ritz values / primitive Ritz vectors (eigenpairs of ``H[:m, :m]``); Ritz vector ``y = V^T s``
residual       ``‖A y - θ y‖ = |H[m, :] s|`` for unit ``s``; reported relative: ``/ |θ|`` (ARPACK's test)
=============  ===========================================================================================

* :func:`krylov_schur` — Arnoldi (modified Gram–Schmidt plus one re-orthogonalization pass) with thick
  (Krylov–Schur) restarts: the kept Ritz subspace is an exactly invariant subspace of ``H``, rebuilt from the
  wanted Ritz vectors (conjugate pairs kept together, real arithmetic). ``symmetric=True`` is Lanczos with
  full re-orthogonalization (``eigh`` of the projected matrix, thick-restart Lanczos).
* :func:`dense_spectrum` — full Jacobian from ``d`` batched products, ``torch.linalg.eig``/``eigh``.
* :func:`slq` — stochastic Lanczos quadrature: a Gaussian-broadened spectral density (integrates to 1).
* :func:`count_positive` — the workshop paper's positive-eigenvalue count, with its tolerance stated.

Long solves can be watched and stopped: ``cancel`` (a ``threading.Event`` or ``() -> bool``) is checked before
every operator product and raises :class:`~sailscope.core.errors.Cancelled`, so a cancel lands within one
Krylov step; ``progress`` is called with a :class:`SolverProgress` after every product.

Breakdown (``h[j+1, j] <= breakdown_tol · ‖A v_j‖``) means ``V[:j+1]`` spans an invariant subspace: the
solver returns its eigenvalues (exact, up to rounding) and basis with ``breakdown=True``, not an error.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from sailscope.core.errors import Cancelled, NonFiniteError, UserInputError, cancel_requested
from sailscope.core.spectra.operators import LinearOp, dense_matrix

Target = Literal["magnitude", "most_negative", "most_positive"]
from sailscope.core.choices import TARGET_CHOICES  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PositiveCount:
    """Eigenvalues with real part ``> tol``, ``< -tol`` and within ``±tol`` (``tol`` absolute)."""

    positive: int
    negative: int
    near_zero: int
    tol: float
    total: int


def count_positive(eigenvalues: Tensor, *, rtol: float = 1e-5, atol: float = 0.0) -> PositiveCount:
    """Count eigenvalues by sign of the real part; ``tol = max(atol, rtol · max|λ|)``.

    The default ``rtol = 1e-5`` sits above the rounding noise of an fp32 Jacobian (relative ``~1e-6``):
    eigenvalues within ``±tol`` are counted as zero, not positive (docs/math.md §2).
    """
    lam = torch.as_tensor(eigenvalues)
    re = lam.real.double() if lam.is_complex() else lam.double()
    scale = float(lam.abs().max()) if lam.numel() else 0.0
    tol = max(atol, rtol * scale)
    pos, neg = int((re > tol).sum()), int((re < -tol).sum())
    return PositiveCount(pos, neg, lam.numel() - pos - neg, tol, lam.numel())


@dataclass(frozen=True)
class SpectralDensity:
    """SLQ estimate ``ρ(λ) = mean_probes Σ_j τ_j g_σ(λ - θ_j)`` of the normalized eigenvalue density."""

    nodes: Tensor  # (probes, steps) Ritz values of each probe's Lanczos tridiagonal
    weights: Tensor  # (probes, steps) squared first components; each row sums to 1
    sigma: float  # Gaussian broadening (standard deviation)
    dim: int
    hvps: int
    seconds: float

    def evaluate(self, grid: Tensor) -> Tensor:
        """Broadened density at the points ``grid`` (integrates to 1 over the real line)."""
        g = torch.as_tensor(grid, dtype=torch.float64)
        z = (g[:, None, None] - self.nodes[None]) / self.sigma
        kernel = torch.exp(-0.5 * z**2) / (self.sigma * math.sqrt(2 * math.pi))
        return (kernel * self.weights[None]).sum(-1).mean(-1)

    def mass(self, lo: float, hi: float) -> float:
        """Broadened probability of ``lo < λ < hi`` (the fraction of eigenvalues there)."""
        cdf = lambda b: 0.5 * (1 + torch.erf((b - self.nodes) / (self.sigma * math.sqrt(2))))
        return float(((cdf(torch.tensor(hi, dtype=torch.float64)) - cdf(torch.tensor(lo, dtype=torch.float64)))
                      * self.weights).sum(-1).mean())

    def grid(self, points: int = 400, pad: float = 5.0) -> Tensor:
        """A grid covering every node ± ``pad`` broadening widths."""
        return torch.linspace(float(self.nodes.min()) - pad * self.sigma, float(self.nodes.max()) + pad * self.sigma,
                              points, dtype=torch.float64)

    def count_positive(self, tol: float = 0.0) -> float:
        """Estimated number of eigenvalues ``> tol``: ``d ·`` (quadrature weight of nodes above ``tol``)."""
        return float(self.dim * (self.weights * (self.nodes > tol)).sum(-1).mean())


@dataclass(frozen=True)
class SolverProgress:
    """Where a solve stands, passed to a ``progress`` callback after every operator product.

    ``converged`` of ``wanted`` eigenvalues met the tolerance at the last check (``None`` where the solver does
    not check until the end: dense, slq); ``bound`` is the product count the solve cannot exceed (``None``
    when only ``max_restarts`` bounds it)."""

    method: str
    products: int
    restart: int
    converged: int | None
    wanted: int
    seconds: float
    bound: int | None = None


ProgressFn = Callable[[SolverProgress], Any]


def check_cancel(cancel: Any, what: str, products: int) -> None:
    """Raise :class:`Cancelled` when ``cancel`` is set (checked before each operator product)."""
    if cancel_requested(cancel):
        raise Cancelled(f"cancelled during {what} after {products} operator products")


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of an operator with a per-value convergence report.

    ``eigenvalues`` (complex128) are ordered by ``target``; ``residuals`` are relative,
    ``‖H y - θ y‖ / |θ|``; ``converged`` is ``residuals <= tol``. ``hvps`` counts the solver's Jacobian
    products (``verify_hvps`` the extra ones spent checking residuals explicitly).
    """

    eigenvalues: Tensor
    residuals: Tensor
    converged: Tensor
    method: str
    target: str
    tol: float
    hvps: int
    seconds: float
    dim: int
    restarts: int = 0
    breakdown: bool = False
    invariant_dim: int | None = None
    basis: Tensor | None = None  # (invariant_dim, d) orthonormal basis of the invariant subspace found
    eigenvectors: Tensor | None = None  # (k, d) complex unit Ritz vectors
    explicit_residuals: Tensor | None = None
    verify_hvps: int = 0
    operator: str = ""
    density: SpectralDensity | None = field(default=None, repr=False)
    matrix: Tensor | None = field(default=None, repr=False)  # the dense path's full Jacobian (fp64)

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all()) if self.converged.numel() else self.density is not None

    def count_positive(self, *, rtol: float = 1e-5, atol: float = 0.0) -> PositiveCount:
        """Sign counts of the eigenvalues *returned* (the whole spectrum only for ``dense``)."""
        return count_positive(self.eigenvalues, rtol=rtol, atol=atol)

    def to_dict(self) -> dict:
        """JSON-ready summary (no vectors)."""
        out = {
            "method": self.method, "target": self.target, "operator": self.operator, "dim": self.dim,
            "eigenvalues_real": self.eigenvalues.real.tolist(), "eigenvalues_imag": self.eigenvalues.imag.tolist(),
            "residuals": self.residuals.tolist(), "converged": self.converged.tolist(),
            "all_converged": self.all_converged, "tol": self.tol, "hvps": self.hvps, "verify_hvps": self.verify_hvps,
            "restarts": self.restarts, "seconds": self.seconds, "breakdown": self.breakdown,
            "invariant_dim": self.invariant_dim,
        }
        if self.explicit_residuals is not None:
            out["explicit_residuals"] = self.explicit_residuals.tolist()
        if self.density is not None:
            g = self.density.grid(200)
            out["density"] = {"grid": g.tolist(), "values": self.density.evaluate(g).tolist(),
                              "sigma": self.density.sigma, "positive_estimate": self.density.count_positive()}
        return out


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def check_target(target: str) -> None:
    if target not in TARGET_CHOICES:
        raise UserInputError(f"target must be one of {', '.join(TARGET_CHOICES)}, got {target!r}")


def check_k(k: int, dim: int, name: str = "k") -> None:
    if not isinstance(k, int) or k < 1:
        raise UserInputError(f"{name} must be a positive integer, got {k!r}")
    if k >= dim:
        raise UserInputError(f"{name}={k} must be smaller than the dimension {dim} (use method 'dense' for all)")


def default_tol(dtype: torch.dtype) -> float:
    """Relative residual target: ``1e-10`` in fp64, ``1e-5`` in fp32 (≈ 100 × rounding of ``‖A‖``)."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def order_by(theta: Tensor, target: str) -> list[int]:
    """Indices of ``theta`` best-first for ``target``; conjugate pairs adjacent (positive imaginary first)."""
    t = theta.to(torch.complex128)
    re, im, ab = t.real.tolist(), t.imag.tolist(), t.abs().tolist()
    keys = {
        "magnitude": lambda i: (-ab[i], -re[i], -im[i]),
        "most_negative": lambda i: (re[i], -im[i]),
        "most_positive": lambda i: (-re[i], -im[i]),
    }[target]
    return sorted(range(len(re)), key=keys)


def _apply(op: LinearOp, v: Tensor, iteration: int, what: str) -> Tensor:
    w = op.matmat(v[None])[0] if v.dim() == 1 else op.matmat(v)
    if not torch.isfinite(w).all():
        raise NonFiniteError(f"non-finite Hessian-vector product at {what} iteration {iteration} "
                             f"(operator: {op.description or 'user operator'})")
    return w


def _orthogonalize(basis: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Modified Gram–Schmidt of ``w`` against the rows of ``basis``, then one re-orthogonalization pass."""
    h = torch.zeros(basis.shape[0], dtype=w.dtype, device=w.device)
    for i in range(basis.shape[0]):
        c = basis[i] @ w
        w = w - c * basis[i]
        h[i] += c
    c = basis @ w  # "twice is enough" (Kahan–Parlett): second pass, classical
    return h + c, w - c @ basis


def _ritz(hm: Tensor, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Eigenpairs of the projected matrix in complex128 (unit-norm columns)."""
    if symmetric:
        theta, s = torch.linalg.eigh(0.5 * (hm + hm.T).double())
        return theta.to(torch.complex128), s.to(torch.complex128)
    theta, s = torch.linalg.eig(hm.double())
    return theta, s


def _real_basis(s: Tensor, theta: Tensor, sel: list[int]) -> Tensor:
    """Orthonormal real basis of the span of the selected (conjugate-closed) eigenvectors."""
    cols, used = [], set()
    for i in sel:
        if i in used:
            continue
        used.add(i)
        if theta[i].imag == 0:
            cols.append(s[:, i].real)
        else:
            partner = int((theta - theta[i].conj()).abs().argmin())
            used.add(partner)
            cols += [s[:, i].real, s[:, i].imag]
    q, _ = torch.linalg.qr(torch.stack(cols, 1))
    return q


def _conjugate_closed(order: list[int], theta: Tensor, p: int) -> list[int]:
    """The first ``p`` of ``order``, plus the partner of a conjugate pair split at the boundary."""
    sel = order[:p]
    last = sel[-1]
    if theta[last].imag != 0:
        partner = int((theta - theta[last].conj()).abs().argmin())
        if partner not in sel:
            sel = sel + [partner]
    return sel


def _adaptive_keep(k: int, m: int, nconv: int, p: int) -> int:
    """Kept Ritz vectors at a restart: the wanted ``k``, plus one per converged one (ARPACK's ``nev + nconv``
    adjustment) and a small margin, at most ``p``. Tuned on synthetic spectra against ARPACK (docs/spectra.md)."""
    return min(k + nconv + max(1, (m - k) // 6), p)


def _relative(res: Tensor, theta: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    floor = torch.finfo(dtype).eps * max(scale, torch.finfo(torch.float64).tiny)
    return res / theta.abs().clamp_min(floor)


# ----------------------------------------------------------------------------------------------
# Krylov–Schur (Arnoldi / Lanczos)
# ----------------------------------------------------------------------------------------------
def krylov_schur(
    op: LinearOp,
    k: int,
    *,
    target: Target = "magnitude",
    symmetric: bool = False,
    m: int | None = None,
    keep: int | None = None,
    tol: float | None = None,
    max_restarts: int = 300,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
    breakdown_tol: float | None = None,
    verify: bool = False,
    return_vectors: bool = False,
    check_every_step: bool = True,
    cancel: Any = None,
    progress: ProgressFn | None = None,
) -> Spectrum:
    """``k`` eigenvalues of ``op`` (best first for ``target``) by thick-restarted Arnoldi/Lanczos.

    ``m`` defaults to ARPACK's ``ncv = max(2k+1, 20)`` (capped at ``d``); ``keep`` (``p``) to
    ``k + (m-k)//2``. Stops when all ``k`` relative residuals are ``<= tol`` or after ``max_restarts``
    (then ``converged`` says which are not). ``verify`` recomputes residuals with explicit products.
    ``check_every_step`` tests convergence after every product (an ``O(m^3)`` eig of the small projected
    matrix, negligible next to an HVP) instead of only at full ``m`` like ARPACK, so it stops earlier.
    ``cancel`` is checked before every product (raises :class:`Cancelled`); ``progress`` gets a
    :class:`SolverProgress` after every product.
    """
    # 1. Check inputs
    check_target(target)
    d = op.dim
    check_k(k, d)
    tol = default_tol(op.dtype) if tol is None else float(tol)
    if not tol > 0:
        raise UserInputError(f"tol must be positive, got {tol}")
    m = min(d, m if m is not None else max(2 * k + 1, 20))
    if m <= k or (not symmetric and m < min(d, k + 2)):
        raise UserInputError(f"m={m} must exceed k={k} (by 2 for Arnoldi: conjugate pairs)")
    p = keep if keep is not None else k + (m - k) // 2
    p = max(1, min(p, m - (1 if symmetric else 2)))
    breakdown_tol = breakdown_tol if breakdown_tol is not None else torch.finfo(op.dtype).eps ** 0.75
    name = "lanczos" if symmetric else "arnoldi"
    start, hvp0 = time.perf_counter(), op.counter.hvps

    # 2. Starting vector
    dtype, device = op.dtype, op.device
    v = v0.reshape(-1).to(dtype=dtype, device=device) if v0 is not None else \
        torch.randn(d, generator=generator, dtype=dtype, device="cpu" if generator is None else generator.device).to(device)
    if v.numel() != d or not torch.isfinite(v).all() or float(v.norm()) == 0:
        raise UserInputError(f"v0 must be a finite nonzero vector of length {d}")
    V = torch.zeros(m + 1, d, dtype=dtype, device=device)
    H = torch.zeros(m + 1, m, dtype=dtype, device=device)
    V[0] = v / v.norm()
    j, scale, steps, nconv = 0, 0.0, 0, 0

    # 3. Expand / extract / restart
    for restart in range(max_restarts + 1):
        for jj in range(j, m):
            check_cancel(cancel, name, steps)
            w = _apply(op, V[jj], steps, name)
            steps += 1
            wnorm = float(w.norm())
            h, w = _orthogonalize(V[: jj + 1], w)
            beta = float(w.norm())
            H[: jj + 1, jj] = h
            H[jj + 1, jj] = beta
            scale = max(scale, wnorm)
            if beta <= breakdown_tol * wnorm or wnorm == 0.0:
                return _finish(op, V[: jj + 1], H[: jj + 1, : jj + 1], torch.zeros(jj + 1, dtype=dtype, device=device),
                               k, target, symmetric, tol, scale, name, start, hvp0, restart, verify, return_vectors,
                               breakdown=True)
            V[jj + 1] = w / beta
            n = jj + 1
            checked = n > k and (n == m or check_every_step)
            if checked:  # Ritz pairs of the current decomposition
                theta, s = _ritz(H[:n, :n], symmetric)
                order = order_by(theta, target)
                rel = _relative((H[n, :n].double().to(torch.complex128) @ s).abs(), theta, scale, dtype)
                nconv = int((rel[order[:k]] <= tol).sum())
            if progress is not None:
                progress(SolverProgress(name, steps, restart, nconv, k, time.perf_counter() - start))
            if checked and (nconv == k or (n == m and restart == max_restarts)):
                return _finish(op, V[:n], H[:n, :n], H[n, :n], k, target, symmetric, tol, scale, name, start,
                               hvp0, restart, verify, return_vectors, theta_s=(theta, s))
        # thick restart: keep the invariant subspace of the p best Ritz vectors
        nconv = int((rel[order[:k]] <= tol).sum())
        sel = _conjugate_closed(order, theta, p if keep is not None else _adaptive_keep(k, m, nconv, p))
        if symmetric:
            q = s[:, sel].real.to(dtype)
            t = torch.diag(theta[sel].real).to(dtype)
        else:
            q = _real_basis(s, theta, sel).to(dtype)
            t = q.T @ H[:m, :m] @ q
        j = q.shape[1]
        b = H[m, :m] @ q
        V[:j] = q.T @ V[:m]
        V[j] = V[m]
        H.zero_()
        H[:j, :j] = t
        H[j, :j] = b
    raise AssertionError("unreachable")


def _finish(op: LinearOp, basis: Tensor, hm: Tensor, brow: Tensor, k: int, target: str, symmetric: bool, tol: float,
            scale: float, name: str, start: float, hvp0: int, restarts: int, verify: bool, return_vectors: bool,
            breakdown: bool = False, theta_s: tuple[Tensor, Tensor] | None = None) -> Spectrum:
    """Ritz pairs of a Krylov decomposition ``A basis^T = basis^T hm + r brow`` (``‖r‖ = 1``) -> :class:`Spectrum`."""
    theta, s = theta_s if theta_s is not None else _ritz(hm, symmetric)
    order = order_by(theta, target)[:k]
    res = (brow.double().to(torch.complex128) @ s).abs()
    rel = _relative(res, theta, scale, op.dtype)[order]
    hvps = op.counter.hvps - hvp0
    seconds = time.perf_counter() - start
    y = None
    if verify or return_vectors:
        y = s[:, order].T.to(torch.complex128) @ basis.to(torch.complex128)  # (k, d)
    explicit, verify_hvps = None, 0
    if verify:
        explicit, verify_hvps = _explicit_residuals(op, y, theta[order])
    return Spectrum(
        eigenvalues=theta[order], residuals=rel, converged=rel <= tol, method=name, target=target, tol=tol,
        hvps=hvps, seconds=seconds, dim=op.dim, restarts=restarts, breakdown=breakdown,
        invariant_dim=basis.shape[0] if breakdown else None, basis=basis.clone() if breakdown else None,
        eigenvectors=y if return_vectors else None, explicit_residuals=explicit, verify_hvps=verify_hvps,
        operator=op.description,
    )


def _explicit_residuals(op: LinearOp, y: Tensor, theta: Tensor) -> tuple[Tensor, int]:
    """``‖A y - θ y‖ / |θ|`` with explicit products: one per real Ritz vector, two per complex one."""
    before = op.counter.hvps
    cplx = (y.imag.abs().amax(dim=1) > 0).nonzero().flatten()
    parts = torch.cat([y.real, y.imag[cplx]]).to(op.dtype)
    ap = op.matmat(parts).to(torch.complex128)
    ay = ap[: y.shape[0]].clone()
    ay[cplx] += 1j * ap[y.shape[0]:]
    r = (ay - theta[:, None] * y).norm(dim=1) / theta.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return r, op.counter.hvps - before


def arnoldi(op: LinearOp, k: int, **kwargs) -> Spectrum:
    """Thick-restarted Arnoldi (complex Ritz values): :func:`krylov_schur` with ``symmetric=False``."""
    return krylov_schur(op, k, symmetric=False, **kwargs)


def lanczos(op: LinearOp, k: int, *, assume_symmetric: bool = False, **kwargs) -> Spectrum:
    """Thick-restarted Lanczos with full re-orthogonalization on a symmetric operator.

    ``op`` must be symmetric (``op.symmetric``, e.g. from ``symmetric_part``) unless ``assume_symmetric``.
    """
    if not (op.symmetric or assume_symmetric):
        raise UserInputError("lanczos needs a symmetric operator: pass symmetric_part(op, vjp) or assume_symmetric=True")
    return krylov_schur(op, k, symmetric=True, **kwargs)


# ----------------------------------------------------------------------------------------------
# Dense exact path
# ----------------------------------------------------------------------------------------------
def dense_spectrum(op: LinearOp, k: int | None = None, *, target: Target = "magnitude", chunk: int | None = 64,
                   tol: float | None = None, mode: str = "auto", cancel: Any = None) -> Spectrum:
    """All (or the best ``k``) eigenvalues from the full matrix built with ``d`` batched products
    (``mode``: see :func:`~sailscope.core.spectra.operators.dense_matrix`). ``cancel`` is checked before the
    products and before the eigen-decomposition."""
    check_target(target)
    d = op.dim
    if k is not None and (not isinstance(k, int) or k < 1 or k > d):
        raise UserInputError(f"k must be between 1 and the dimension {d}, got {k!r}")
    start, hvp0 = time.perf_counter(), op.counter.hvps
    check_cancel(cancel, "dense", 0)
    a = dense_matrix(op, chunk=chunk, mode=mode)
    check_cancel(cancel, "dense", op.counter.hvps - hvp0)
    if not torch.isfinite(a).all():
        raise NonFiniteError("non-finite Hessian-vector product while building the dense Jacobian")
    a = a.double()
    if op.symmetric:
        theta, y = torch.linalg.eigh(0.5 * (a + a.T))
        theta, y = theta.to(torch.complex128), y.to(torch.complex128)
    else:
        theta, y = torch.linalg.eig(a)
    order = order_by(theta, target)[: (k or d)]
    theta, y = theta[order], y[:, order]
    res = (a.to(torch.complex128) @ y - y * theta).norm(dim=0)
    rel = _relative(res, theta, float(torch.linalg.matrix_norm(a, 2)) if d <= 4096 else float(a.abs().max()), op.dtype)
    tol = default_tol(op.dtype) if tol is None else tol
    return Spectrum(eigenvalues=theta, residuals=rel, converged=rel <= tol, method="dense", target=target, tol=tol,
                    hvps=op.counter.hvps - hvp0, seconds=time.perf_counter() - start, dim=d,
                    operator=op.description, matrix=a)


# ----------------------------------------------------------------------------------------------
# Stochastic Lanczos quadrature
# ----------------------------------------------------------------------------------------------
def slq(op: LinearOp, *, probes: int = 8, steps: int = 40, sigma: float | None = None,
        generator: torch.Generator | None = None, breakdown_tol: float | None = None, cancel: Any = None,
        progress: ProgressFn | None = None) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; PyHessian ``density``).

    ``probes`` Rademacher vectors run ``steps`` Lanczos steps *together* (one batched product per step, full
    re-orthogonalization per probe). Nodes/weights are the eigenvalues and squared first eigenvector
    components of each tridiagonal. ``sigma`` defaults to 1 % of the node range. Needs a symmetric operator.
    ``cancel`` is checked before every (batched) product; ``progress`` is called after each.
    """
    d = op.dim
    if not op.symmetric:
        raise UserInputError("slq needs a symmetric operator: use its symmetric part")
    if probes < 1:
        raise UserInputError(f"probes must be >= 1, got {probes}")
    if steps < 1:
        raise UserInputError(f"steps must be >= 1, got {steps}")
    steps = min(steps, d)
    start, hvp0 = time.perf_counter(), op.counter.hvps
    dtype, device = op.dtype, op.device
    breakdown_tol = breakdown_tol if breakdown_tol is not None else torch.finfo(dtype).eps ** 0.75
    gen_device = "cpu" if generator is None else generator.device
    v = (torch.randint(0, 2, (probes, d), generator=generator, device=gen_device) * 2 - 1).to(device, dtype)
    V = torch.zeros(steps, probes, d, dtype=dtype, device=device)
    V[0] = v / math.sqrt(d)
    alpha = torch.zeros(probes, steps, dtype=torch.float64)
    beta = torch.zeros(probes, max(steps - 1, 0), dtype=torch.float64)
    for j in range(steps):
        check_cancel(cancel, "slq", j)
        w = _apply(op, V[j], j, "slq")
        if progress is not None:
            progress(SolverProgress("slq", j + 1, 0, None, steps, time.perf_counter() - start, bound=steps))
        wnorm = w.norm(dim=1)
        c = torch.einsum("jnd,nd->jn", V[: j + 1], w)
        w = w - torch.einsum("jn,jnd->nd", c, V[: j + 1])
        c2 = torch.einsum("jnd,nd->jn", V[: j + 1], w)
        w = w - torch.einsum("jn,jnd->nd", c2, V[: j + 1])
        alpha[:, j] = (c[j] + c2[j]).double()
        if j + 1 < steps:
            b = w.norm(dim=1)
            alive = b > breakdown_tol * wnorm
            beta[:, j] = torch.where(alive, b, torch.zeros_like(b)).double()
            V[j + 1] = torch.where(alive[:, None], w / b.clamp_min(torch.finfo(dtype).tiny)[:, None], torch.zeros_like(w))
    t = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    nodes, u = torch.linalg.eigh(t)
    weights = u[:, 0, :] ** 2
    if sigma is None:
        span = float(nodes.max() - nodes.min())
        sigma = 0.01 * span if span > 0 else 1e-3 * max(float(nodes.abs().max()), 1.0)
    if not sigma > 0:
        raise UserInputError(f"sigma must be positive, got {sigma}")
    return SpectralDensity(nodes=nodes, weights=weights, sigma=float(sigma), dim=d,
                           hvps=op.counter.hvps - hvp0, seconds=time.perf_counter() - start)
