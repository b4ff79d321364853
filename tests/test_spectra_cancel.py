"""Spectra can be watched and stopped: the solvers call ``progress`` after every operator product and check
``cancel`` before every product, so a cancel lands within one Krylov step (tested on explicit matrices)."""
from __future__ import annotations

import threading

import pytest
import torch

from sailscope.core.errors import Cancelled
from sailscope.core.spectra import SolverProgress, arnoldi, lanczos, matrix_operator, slq, spectrum_at


def _matrix(d: int = 60, symmetric: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return 0.5 * (a + a.T) if symmetric else a


@pytest.mark.parametrize("solver, symmetric", [(arnoldi, False), (lanczos, True)])
def test_cancel_from_progress_stops_before_the_next_product(solver, symmetric):
    op = matrix_operator(_matrix(symmetric=symmetric), symmetric=symmetric)
    cancel, seen = threading.Event(), []

    def progress(p: SolverProgress) -> None:
        seen.append(p)
        if p.products == 7:
            cancel.set()

    with pytest.raises(Cancelled, match="after 7 operator products"):
        solver(op, 6, m=30, generator=torch.Generator().manual_seed(1), cancel=cancel, progress=progress)
    assert op.counter.hvps == 7  # no product after the cancel
    assert [p.products for p in seen] == list(range(1, 8))
    assert all(p.wanted == 6 and p.seconds >= 0 for p in seen)


def test_progress_reports_converged_values_and_a_finished_solve_is_unchanged():
    a = _matrix()
    plain = arnoldi(matrix_operator(a), 4, m=20, generator=torch.Generator().manual_seed(2))
    seen = []
    watched = arnoldi(matrix_operator(a), 4, m=20, generator=torch.Generator().manual_seed(2), progress=seen.append,
                      cancel=threading.Event())
    assert torch.equal(plain.eigenvalues, watched.eigenvalues) and plain.hvps == watched.hvps
    assert len(seen) == watched.hvps and seen[-1].products == watched.hvps
    assert max(p.restart for p in seen) == watched.restarts
    assert all(p.converged is not None and 0 <= p.converged <= 4 for p in seen)


def test_cancel_already_set_does_no_work_and_callable_cancel_works():
    op = matrix_operator(_matrix())
    with pytest.raises(Cancelled):
        arnoldi(op, 4, cancel=lambda: True)
    assert op.counter.hvps == 0


def test_slq_and_spectrum_at_pass_cancel_and_progress_through():
    sym = _matrix(symmetric=True)
    op = matrix_operator(sym, symmetric=True)
    cancel, seen = threading.Event(), []

    def progress(p: SolverProgress) -> None:
        seen.append(p)
        cancel.set()

    with pytest.raises(Cancelled):
        slq(op, probes=2, steps=10, generator=torch.Generator().manual_seed(0), cancel=cancel, progress=progress)
    assert len(seen) == 1 and seen[0].method == "slq" and seen[0].bound == 10

    # the entry point, on Gaussians (closed-form Hessians): a cancel raised from progress after 3 products
    from sailscope.core.oracles import Gaussian, guided_from_models

    d = 40
    gs = guided_from_models(Gaussian.random(d, generator=torch.Generator().manual_seed(3)),
                            Gaussian.random(d, generator=torch.Generator().manual_seed(4)))
    calls, cancel2 = [], threading.Event()

    def stop_after_three(p: SolverProgress) -> None:
        calls.append(p.products)
        if p.products == 3:
            cancel2.set()

    x = torch.randn(1, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with pytest.raises(Cancelled):
        spectrum_at(gs, x, "delta", k=4, method="arnoldi", cancel=cancel2, progress=stop_after_three,
                    generator=torch.Generator().manual_seed(6))
    assert calls == [1, 2, 3]
