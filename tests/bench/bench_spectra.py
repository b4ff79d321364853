"""Benchmark: our Krylov–Schur Arnoldi/Lanczos vs SciPy ARPACK on the *same* operator, in the same run.

    OMP_NUM_THREADS=1 python tests/bench/bench_spectra.py [--model demo] [--starts 3] [--json out.json]

Both solvers see one HVP function (ARPACK through ``scipy.sparse.linalg.LinearOperator``), the same start
vector, top-10 by magnitude, relative residual 1e-3 (ARPACK's ``tol``: ``‖r‖ <= tol |θ|``; ours the same test),
the same subspace size ``ncv = m = 21``. Reported: HVPs and wall time of each, and ours/ARPACK ratios;
the Krylov basis allocation ``(m+1) d`` floats (memory ``O(m d)``). Operators:

* ``tiny-sd``: HΔ of the tiny random SD pipeline (d = 256, fp32, exact JVPs; non-symmetric -> eigs/arnoldi);
* ``tiny-sd-vjp``: the same eigenvalues through ``H^T`` (VJPs), both solvers;
* ``sym-4096``: an explicit symmetric matrix (16 spikes over a semicircle bulk), d = 4096, fp64
  (eigsh/lanczos): a cheap product (one matvec), so this measures the solvers' own overhead;
* ``nonsym-4096``: the same spikes plus a non-symmetric random bulk, d = 4096, fp64 (eigs/arnoldi);
* ``--model demo`` (or a path): HΔ of that model at step 1 of seed 0 (VJP products), the dense path's time,
  and Arnoldi top-20 (tol 1e-5) against the dense spectrum.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

from sailscope.core.spectra import LinearOp, arnoldi, dense_spectrum, lanczos, matrix_operator, score_jacobian, transposed

K, TOL, NCV = 10, 1e-3, 21


def arpack(op: LinearOp, v0: torch.Tensor, symmetric: bool) -> dict:
    """scipy eigs/eigsh on ``op`` (float64 vectors converted to the operator's dtype and back)."""
    import scipy.sparse.linalg as sla

    before = op.counter.hvps

    def matvec(v: np.ndarray) -> np.ndarray:
        w = op(torch.from_numpy(np.ascontiguousarray(v).reshape(-1)).to(op.dtype))
        return w.double().numpy()

    lin = sla.LinearOperator((op.dim, op.dim), matvec=matvec, dtype=np.float64)
    start = time.perf_counter()
    if symmetric:
        vals = sla.eigsh(lin, k=K, which="LM", tol=TOL, ncv=NCV, v0=v0.double().numpy(), return_eigenvectors=False)
    else:
        vals = sla.eigs(lin, k=K, which="LM", tol=TOL, ncv=NCV, v0=v0.double().numpy(), return_eigenvectors=False)
    seconds = time.perf_counter() - start
    vals = np.asarray(vals, dtype=np.complex128)
    return {"hvps": op.counter.hvps - before, "seconds": seconds, "eigenvalues": vals[np.argsort(-np.abs(vals))]}


def ours(op: LinearOp, v0: torch.Tensor, symmetric: bool) -> dict:
    solver = lanczos if symmetric else arnoldi
    s = solver(op, K, tol=TOL, m=NCV, v0=v0, verify=True)
    return {"hvps": s.hvps, "seconds": s.seconds, "eigenvalues": s.eigenvalues.numpy(), "converged": s.all_converged,
            "explicit_residual_max": float(s.explicit_residuals.max())}


def set_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance between two eigenvalue sets, relative to the largest magnitude.

    Conjugates are identified (``re + i|im|``): when the k-th and (k+1)-th values are a conjugate pair, a
    top-k set legitimately holds either member (ARPACK returns either; ours the positive-imaginary one)."""
    a, b = a.real + 1j * np.abs(a.imag), b.real + 1j * np.abs(b.imag)
    d = np.abs(a[:, None] - b[None, :])
    return float(max(d.min(1).max(), d.min(0).max()) / np.abs(b).max())


def compare(name: str, op: LinearOp, symmetric: bool, starts: int, reference: np.ndarray | None = None) -> dict:
    """Both solvers from the same start vectors; ``reference``: the exact top-10 (dense) when affordable."""
    rows = []
    op(torch.randn(op.dim, generator=torch.Generator().manual_seed(99), dtype=torch.float64).to(op.dtype))  # warm-up
    for seed in range(starts):
        v0 = torch.randn(op.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        # alternate who goes first: this CPU's speed drifts over a run, so a fixed order biases the ratio
        if seed % 2 == 0:
            a = arpack(op, v0, symmetric)
            o = ours(op, v0, symmetric)
        else:
            o = ours(op, v0, symmetric)
            a = arpack(op, v0, symmetric)
        row = {"seed": seed, "arpack": a, "ours": o, "eig_agreement": set_distance(o["eigenvalues"], a["eigenvalues"])}
        if reference is not None:
            row["ours_vs_dense"] = set_distance(o["eigenvalues"], reference)
            row["arpack_vs_dense"] = set_distance(a["eigenvalues"], reference)
        rows.append(row)
    tot = lambda who, key: sum(r[who][key] for r in rows)
    item = op.dtype.itemsize
    out = {
        "operator": name, "dim": op.dim, "dtype": str(op.dtype), "symmetric": symmetric, "starts": starts,
        "arpack_hvps": tot("arpack", "hvps"), "ours_hvps": tot("ours", "hvps"),
        "arpack_seconds": tot("arpack", "seconds"), "ours_seconds": tot("ours", "seconds"),
        "hvp_ratio": tot("ours", "hvps") / tot("arpack", "hvps"),
        "time_ratio": tot("ours", "seconds") / tot("arpack", "seconds"),
        "all_converged": all(r["ours"]["converged"] for r in rows),
        "explicit_residual_max": max(r["ours"]["explicit_residual_max"] for r in rows),
        "eig_agreement_max": max(r["eig_agreement"] for r in rows),
        "ours_vs_dense_max": max(r["ours_vs_dense"] for r in rows) if reference is not None else None,
        "arpack_vs_dense_max": max(r["arpack_vs_dense"] for r in rows) if reference is not None else None,
        "basis_bytes": (NCV + 1) * op.dim * item,
        "per_start": [{"seed": r["seed"], "arpack_hvps": r["arpack"]["hvps"], "ours_hvps": r["ours"]["hvps"]} for r in rows],
    }
    print(f"{name:>12}  d={op.dim:<5} HVPs ours/ARPACK {out['ours_hvps']}/{out['arpack_hvps']} = {out['hvp_ratio']:.3f}  "
          f"time {out['ours_seconds']:.2f}/{out['arpack_seconds']:.2f} s = {out['time_ratio']:.3f}  "
          f"ours vs ARPACK eigenvalue sets {out['eig_agreement_max']:.1e}  converged {out['all_converged']}"
          + (f"  vs dense top-10: ours {out['ours_vs_dense_max']:.1e}, ARPACK {out['arpack_vs_dense_max']:.1e}"
             if reference is not None else ""), flush=True)
    return out


def dense_top(op: LinearOp) -> np.ndarray:
    """The exact top-10 by magnitude from the dense path (its products are not counted in the comparison)."""
    return dense_spectrum(op, K, chunk=64).eigenvalues.numpy()


def tiny_operator():
    from sailscope.core.score import DiffusersScoreModel
    from sailscope.core.spectra import diffusers_score_factory
    from sailscope.core.testing import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    model = DiffusersScoreModel.from_pipeline(pipe)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt("a red square", torch.device("cpu"), 1, True)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(70))
    return score_jacobian(diffusers_score_factory(model, 701, cond, uncond), x, which="delta")


def model_operator(name: str, seed: int = 0):
    """HΔ of a real model at step 1 of ``seed`` (the latent tracked generation reaches)."""
    from sailscope.core.sampling import GenerationSettings
    from sailscope.core.models import load_pipeline
    from sailscope.core.spectra import operator_at_first_step

    pipe = load_pipeline(name, dtype="fp32")
    return operator_at_first_step(pipe, GenerationSettings(prompt="a photo", seed=seed, steps=50, sharpness_at="none"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=3, help="start vectors per operator (totals are summed)")
    p.add_argument("--model", default=None, help="also benchmark this model (e.g. demo) and its dense path")
    p.add_argument("--skip-tiny", action="store_true")
    p.add_argument("--skip-closed-form", action="store_true")
    p.add_argument("--json", default=None, help="write all numbers to this file")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    results = {"command": " ".join([f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}", "python"] + sys.argv),
               "torch_threads": torch.get_num_threads(), "k": K, "tol": TOL, "ncv": NCV, "rows": []}

    # 1. Explicit matrices (cheap products: this measures the solvers' own overhead)
    if not args.skip_closed_form:
        d = 4096
        g = torch.Generator().manual_seed(1)
        lam = torch.cat([torch.logspace(math.log10(40), math.log10(4), 16, dtype=torch.float64),
                         torch.linspace(2.0, 0.05, d - 16, dtype=torch.float64)])
        noise = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        sym = torch.diag(-lam) + 0.5 * (noise + noise.T)  # spiked spectrum plus a semicircle bulk
        nonsym = torch.diag(-lam) + noise
        results["rows"].append(compare("sym-4096", matrix_operator(sym, symmetric=True), True, args.starts))
        results["rows"].append(compare("nonsym-4096", matrix_operator(nonsym, symmetric=False), False, args.starts))

    # 2. The tiny SD pipeline (real UNet products)
    if not args.skip_tiny:
        op = tiny_operator()
        ref = dense_top(op)
        results["rows"].append(compare("tiny-sd", op, False, args.starts, ref))
        results["rows"].append(compare("tiny-sd-vjp", transposed(op), False, args.starts, ref))

    # 3. A real model and its dense path
    if args.model:
        op = model_operator(args.model)
        s = dense_spectrum(op, chunk=8)
        ref = s.eigenvalues[:K].numpy()
        # VJP products only: on these CPUs a JVP through the demo UNet costs ~3x a VJP (same eigenvalues)
        results["rows"].append(compare(f"{args.model}-vjp", transposed(op), False, args.starts, ref))
        results["dense"] = {"model": args.model, "dim": op.dim, "seconds": s.seconds, "hvps": s.hvps}
        print(f"dense path on {args.model}: d={op.dim}, {s.hvps} products in {s.seconds:.1f} s", flush=True)
        top = arnoldi(transposed(op), 20, tol=1e-5, generator=torch.Generator().manual_seed(0))
        err = set_distance(top.eigenvalues.numpy(), s.eigenvalues[:20].numpy())
        results["dense"].update(arnoldi_top20_rel_err=err, arnoldi_converged=top.all_converged, arnoldi_hvps=top.hvps,
                                arnoldi_seconds=top.seconds)
        print(f"arnoldi top-20 vs dense: max rel. diff {err:.2e}, converged {top.all_converged}, "
              f"{top.hvps} HVPs in {top.seconds:.1f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
