"""Matrix-free linear operators ``v -> H v`` on score Jacobians, for the eigen-solvers in :mod:`spectra`.

An operator acts on *flattened* vectors: ``matmat(V)`` maps ``V`` of shape ``(n, d)`` to ``(H V^T)^T``,
i.e. each row ``v`` to ``H v``. ``H`` is the Jacobian of one of ``s(x,c)``, ``s(x,∅)``, ``sΔ(x)``
(``which``) at a single latent ``x`` (docs/math.md §1). Several vectors are stacked along the model's batch
dimension and pushed through one call (chunks of ``chunk`` vectors), which needs a
:class:`~sailscope.core.score.GuidedScore` whose batch matches: pass either a batch-agnostic
``GuidedScore`` (closed-form oracles) or a factory ``n -> GuidedScore`` (diffusers: the embeddings repeated
``n`` times, see :func:`diffusers_score_factory`).

Every product is counted (``counter``): one JVP, VJP or finite-difference evaluation per vector.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Union

import torch
from torch import Tensor

from sailscope.core.choices import HVP_CHOICES, WHICH_CHOICES  # noqa: F401  (re-exports)
from sailscope.core.errors import UserInputError
from sailscope.core.metrics import DEFAULT_FD_STEP, at_least_fp32, fd_step_size, forward_ad_attention
from sailscope.core.score import Conditioning, GuidedScore, as_conditioning

Which = Literal["cond", "uncond", "delta"]
HvpMethod = Literal["exact", "fd"]
ScoreSource = Union[GuidedScore, Callable[[int], GuidedScore]]
MatMat = Callable[[Tensor], Tensor]


@dataclass
class HvpCounter:
    """How many Jacobian products an operator has applied (one per vector)."""

    jvps: int = 0  # forward-mode products H v (or finite differences)
    vjps: int = 0  # reverse-mode products H^T v
    calls: int = 0  # batched model calls

    @property
    def hvps(self) -> int:
        """Total Jacobian-vector products, forward and reverse."""
        return self.jvps + self.vjps


@dataclass
class LinearOp:
    """A square linear operator on ``R^d`` given by a batched product ``matmat: (n, d) -> (n, d)``.

    ``symmetric`` says the operator is known to be symmetric (Lanczos may use it as is); ``rmatmat``, when
    given, is the transposed product ``v -> H^T v`` (a VJP; reverse mode is ~2-3x cheaper than forward mode
    through a UNet, so the dense path prefers it).
    """

    matmat: MatMat
    dim: int
    dtype: torch.dtype
    device: torch.device
    symmetric: bool = False
    description: str = ""
    counter: HvpCounter = field(default_factory=HvpCounter)
    rmatmat: MatMat | None = None

    def __call__(self, v: Tensor) -> Tensor:
        """``H v`` for ``v`` of shape ``(d,)`` or ``(n, d)``."""
        if v.dim() == 1:
            return self.matmat(v[None])[0]
        return self.matmat(v)


# ----------------------------------------------------------------------------------------------
# Generic operators
# ----------------------------------------------------------------------------------------------
def matrix_operator(a: Tensor, *, symmetric: bool | None = None, description: str = "dense matrix") -> LinearOp:
    """Wrap an explicit ``(d, d)`` matrix (tests and benchmarks); counts one product per vector."""
    if a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise UserInputError(f"matrix must be square (d, d), got shape {tuple(a.shape)}")
    counter = HvpCounter()

    def matmat(v: Tensor) -> Tensor:
        counter.jvps += v.shape[0]
        counter.calls += 1
        return v @ a.T

    def rmatmat(v: Tensor) -> Tensor:
        counter.vjps += v.shape[0]
        counter.calls += 1
        return v @ a

    sym = bool(torch.allclose(a, a.T)) if symmetric is None else symmetric
    return LinearOp(matmat, a.shape[0], a.dtype, a.device, sym, description, counter, rmatmat)


def symmetric_part(op: LinearOp, rmatmat: MatMat | None = None) -> LinearOp:
    """``v -> (H v + H^T v) / 2`` given the transposed product (``rmatmat`` or ``op.rmatmat``, a VJP)."""
    rmatmat = rmatmat or op.rmatmat
    if rmatmat is None:
        raise UserInputError("the symmetric part needs the transposed product (exact HVPs, not 'fd')")

    def matmat(v: Tensor) -> Tensor:
        return 0.5 * (op.matmat(v) + rmatmat(v))

    return LinearOp(matmat, op.dim, op.dtype, op.device, True, f"symmetric part of {op.description}", op.counter,
                    matmat)


def transposed(op: LinearOp) -> LinearOp:
    """``v -> H^T v`` as an operator (same eigenvalues; its eigenvectors are ``H``'s left eigenvectors)."""
    if op.rmatmat is None:
        raise UserInputError("the transposed operator needs the transposed product (exact HVPs, not 'fd')")
    return LinearOp(op.rmatmat, op.dim, op.dtype, op.device, op.symmetric, f"transpose of {op.description}",
                    op.counter, op.matmat)


def _chunked(fn: MatMat, chunk: int) -> MatMat:
    def matmat(v: Tensor) -> Tensor:
        return torch.cat([fn(v[i:i + chunk]) for i in range(0, v.shape[0], chunk)]) if v.shape[0] else v

    return matmat


# ----------------------------------------------------------------------------------------------
# Score Jacobians
# ----------------------------------------------------------------------------------------------
def check_which(which: str) -> None:
    if which not in WHICH_CHOICES:
        raise UserInputError(f"which must be one of {', '.join(WHICH_CHOICES)}, got {which!r}")


def _factory(source: ScoreSource) -> Callable[[int], GuidedScore]:
    if isinstance(source, GuidedScore):
        return lambda n: source
    if callable(source):
        return source
    raise UserInputError(f"gs must be a GuidedScore or a function n -> GuidedScore, got {type(source).__name__}")


def diffusers_score_factory(model, t, cond: Tensor | Conditioning, uncond: Tensor | Conditioning, **guided_kwargs) -> Callable[[int], GuidedScore]:
    """``n -> model.guided(t, cond×n, uncond×n, **guided_kwargs)`` for a
    :class:`~sailscope.core.score.DiffusersScoreModel` and one prompt's embeddings ``(1, L, D)``: the batch an
    operator needs for ``n`` stacked vectors (``guided_kwargs``: ``abar``, ...)."""
    cond, uncond = as_conditioning(cond), as_conditioning(uncond)
    if cond.batch != 1 or uncond.batch != 1:
        raise UserInputError(f"cond/uncond must hold one prompt (batch 1), got {cond.batch} and {uncond.batch}")
    cache: dict[int, GuidedScore] = {}

    def make(n: int) -> GuidedScore:
        if n not in cache:
            cache.clear()
            cache[n] = model.guided(t, cond.broadcast(n), uncond.broadcast(n), **guided_kwargs)
        return cache[n]

    return make


def row_score_factory(gs: GuidedScore, x_all: Tensor, row: int) -> Callable[[int], GuidedScore]:
    """Batch-``n`` scores of image ``row`` of a batch-``B`` :class:`GuidedScore` (the other rows held at
    ``x_all``): each of the ``n`` vectors costs one batch-``B`` call. Exact because the UNet treats batch rows
    independently. Used by generation probes, which see the run's batch, not the embeddings."""
    if not 0 <= row < x_all.shape[0]:
        raise UserInputError(f"row must be in [0, {x_all.shape[0]}), got {row}")

    def make(n: int) -> GuidedScore:
        def eps_pair(z: Tensor) -> tuple[Tensor, Tensor]:
            outs_c, outs_u = [], []
            for i in range(z.shape[0]):
                full = torch.cat([x_all[:row].to(z.dtype), z[i:i + 1], x_all[row + 1:].to(z.dtype)])
                ec, eu = gs.eps_pair(full)
                outs_c.append(ec[row:row + 1])
                outs_u.append(eu[row:row + 1])
            return torch.cat(outs_c), torch.cat(outs_u)

        sigma = torch.as_tensor(gs.sigma)
        return GuidedScore(eps_pair=eps_pair, sigma=float(sigma.reshape(-1)[row]) if sigma.dim() else gs.sigma, t=gs.t)

    if x_all.shape[0] == 1:
        return lambda n: gs if n == 1 else make(n)
    return make


def score_jacobian(
    gs: ScoreSource,
    x: Tensor,
    *,
    which: Which = "delta",
    method: HvpMethod = "exact",
    chunk: int = 16,
    fd_step: float = DEFAULT_FD_STEP,
) -> LinearOp:
    """The operator ``v -> H v`` with ``H = ∂ s_which / ∂x`` at one latent ``x`` of shape ``(1, *latent)``.

    ``exact``: forward-mode JVP (MATH attention kernel). ``fd``: forward difference with the relative step
    of :func:`~sailscope.core.metrics.fd_jvp` (``f(x)`` is computed once and reused). The operator works in
    ``x``'s dtype promoted to at least fp32 (fp64 latents give fp64 products, for oracle tests).
    """
    # 1. Check inputs
    check_which(which)
    if method not in HVP_CHOICES:
        raise UserInputError(f"hvp method must be one of {', '.join(HVP_CHOICES)}, got {method!r}")
    if x.dim() < 2 or x.shape[0] != 1:
        raise UserInputError(f"x must be one latent of shape (1, ...), got shape {tuple(x.shape)}")
    if chunk < 1:
        raise UserInputError(f"chunk must be >= 1, got {chunk}")
    make_gs = _factory(gs)
    x = at_least_fp32(x.detach())
    shape = tuple(x.shape[1:])
    dim = int(x[0].numel())
    counter = HvpCounter()

    def fn_for(n: int) -> Callable[[Tensor], Tensor]:
        g = make_gs(n)
        return lambda z: at_least_fp32(g.score(z, which)).to(x.dtype)

    def batch(v: Tensor) -> tuple[Tensor, Tensor]:
        n = v.shape[0]
        return x.expand(n, *shape).contiguous(), v.to(x.dtype).reshape(n, *shape)

    # 2. The product
    if method == "exact":

        def one_chunk(v: Tensor) -> Tensor:
            xs, vs = batch(v)
            with torch.no_grad(), forward_ad_attention():  # forward mode needs no tape (see metrics.jvp)
                _, tangent = torch.func.jvp(fn_for(v.shape[0]), (xs,), (vs,))
            counter.jvps += v.shape[0]
            counter.calls += 1
            return tangent.detach().reshape(v.shape[0], dim)

    else:
        fx_cache: list[Tensor] = []

        @torch.no_grad()
        def one_chunk(v: Tensor) -> Tensor:
            if not fx_cache:
                fx_cache.append(fn_for(1)(x))
                counter.calls += 1
            xs, vs = batch(v)
            h = fd_step_size(xs, vs, fd_step).reshape(-1, *([1] * len(shape)))
            out = (fn_for(v.shape[0])(xs + h * vs) - fx_cache[0]) / h
            counter.jvps += v.shape[0]
            counter.calls += 1
            return out.reshape(v.shape[0], dim)

    desc = f"H_{which} ({method}) at a latent of shape {shape}"
    rmatmat = score_jacobian_transpose(gs, x, which=which, chunk=chunk, counter=counter) if method == "exact" else None
    return LinearOp(_chunked(one_chunk, chunk), dim, x.dtype, x.device, False, desc, counter, rmatmat)


def score_jacobian_transpose(gs: ScoreSource, x: Tensor, *, which: Which = "delta", chunk: int = 16,
                             counter: HvpCounter | None = None) -> MatMat:
    """``v -> H^T v`` by reverse mode (one VJP per chunk of vectors), counted in ``counter.vjps``."""
    check_which(which)
    make_gs = _factory(gs)
    x = at_least_fp32(x.detach())
    shape = tuple(x.shape[1:])
    dim = int(x[0].numel())
    counter = counter if counter is not None else HvpCounter()

    def one_chunk(v: Tensor) -> Tensor:
        n = v.shape[0]
        g = make_gs(n)
        xs = x.expand(n, *shape).contiguous()
        # reverse mode works with every attention kernel (only forward-mode JVPs need MATH)
        with torch.enable_grad():
            _, vjp_fn = torch.func.vjp(lambda z: at_least_fp32(g.score(z, which)).to(x.dtype), xs)
            (out,) = vjp_fn(v.to(x.dtype).reshape(n, *shape))
        counter.vjps += n
        counter.calls += 1
        return out.detach().reshape(n, dim)

    return _chunked(one_chunk, chunk)


def symmetrized_score_jacobian(gs: ScoreSource, x: Tensor, *, which: Which = "delta", chunk: int = 16) -> LinearOp:
    """``v -> (H + H^T) v / 2`` with ``H`` exact (JVP + VJP: two products per vector)."""
    return symmetric_part(score_jacobian(gs, x, which=which, method="exact", chunk=chunk))


def dense_matrix(op: LinearOp, *, chunk: int | None = None, mode: str = "auto") -> Tensor:
    """The full ``(d, d)`` matrix of ``op`` from ``d`` products with identity vectors.

    ``mode="forward"``: columns ``H e_i`` (JVPs); ``"reverse"``: rows ``H^T e_i`` (VJPs, ~2-3x faster through a
    UNet on CPU); ``"auto"``: reverse when ``op.rmatmat`` exists. Both give the same matrix up to rounding.
    """
    if mode not in ("auto", "forward", "reverse"):
        raise UserInputError(f"mode must be auto, forward or reverse, got {mode!r}")
    reverse = op.rmatmat is not None and mode != "forward"
    if mode == "reverse" and op.rmatmat is None:
        raise UserInputError("mode='reverse' needs the transposed product (exact HVPs)")
    product = op.rmatmat if reverse else op.matmat
    d = op.dim
    chunk = chunk or d
    rows = []
    for i in range(0, d, chunk):
        n = min(chunk, d - i)
        e = torch.zeros(n, d, dtype=op.dtype, device=op.device)
        e[torch.arange(n), torch.arange(i, i + n)] = 1
        rows.append(product(e))
    stacked = torch.cat(rows)  # row i is H^T e_i (row i of H) in reverse mode, H e_i (column i) in forward mode
    return stacked if reverse else stacked.T
