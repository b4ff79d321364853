"""``sailscope spectrum``: eigenvalues of the score Jacobian at one sampling step of one seed.

The latent is the one ``sailscope generate`` reaches at ``--step`` for the same prompt, seed, steps,
guidance and scheduler: the spectrum is computed by a :class:`~sailscope.core.spectra.SpectrumProbe` inside
the same tracked generation, which then stops (no decoding).

Engine modules (torch, gradio) are imported inside the functions that run the command, on purpose: ``--help`` and
argument errors answer without loading them.
"""
from __future__ import annotations



import argparse
import json
import sys
import time

from sailscope.cli.options import add_model_arguments, load_model_from_args, parse_size
from sailscope.core.errors import UserInputError
from sailscope.core.choices import HVP_CHOICES, METHOD_CHOICES, PRODUCT_CHOICES, TARGET_CHOICES, WHICH_CHOICES


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    g = p.add_argument_group("generation (as in `sailscope generate`)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    g.add_argument("--step", type=int, required=True, help="1-based sampling step (1 = first DDIM step)")
    g.add_argument("--steps", type=int, default=50, help="sampling steps of the schedule")
    g.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    g.add_argument("--scheduler", default="ddim")
    g.add_argument("--size", default=None, help="WxH in pixels (default: the model's native size)")
    s = p.add_argument_group("spectrum")
    s.add_argument("--which", choices=WHICH_CHOICES, default="delta", help="H(x,c), H(x,∅) or HΔ")
    s.add_argument("--k", type=int, default=20, help="number of eigenvalues (dense: how many to print)")
    s.add_argument("--method", choices=METHOD_CHOICES, default="arnoldi")
    s.add_argument("--target", choices=TARGET_CHOICES, default="magnitude",
                   help="largest |λ|, most negative or most positive real part")
    s.add_argument("--hvp", choices=HVP_CHOICES, default="exact", help="JVP or finite-difference products")
    s.add_argument("--products", choices=PRODUCT_CHOICES, default="forward",
                   help="reverse: Arnoldi on H^T with VJPs (same eigenvalues, often cheaper)")
    s.add_argument("--tol", type=float, default=None, help="relative residual target (default 1e-5 in fp32)")
    s.add_argument("--ncv", type=int, default=None, help="Krylov subspace size m (default max(2k+1, 20))")
    s.add_argument("--chunk", type=int, default=16, help="vectors per batched model call")
    s.add_argument("--probes", type=int, default=8, help="slq: random probe vectors")
    s.add_argument("--lanczos-steps", type=int, default=40, help="slq: Lanczos steps per probe")
    s.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def check_args(args: argparse.Namespace) -> None:
    """Errors name the argument; run before loading a model."""
    if not isinstance(args.steps, int) or args.steps < 1:
        raise UserInputError(f"--steps must be a positive integer, got {args.steps!r}")
    if not 1 <= args.step <= args.steps:
        raise UserInputError(f"--step {args.step} is outside the schedule: choose 1..{args.steps} (--steps {args.steps})")
    if args.k < 1:
        raise UserInputError(f"--k must be >= 1, got {args.k}")
    if args.tol is not None and not args.tol > 0:
        raise UserInputError(f"--tol must be > 0, got {args.tol}")
    if args.chunk < 1:
        raise UserInputError(f"--chunk must be >= 1, got {args.chunk}")


def settings_from_args(args: argparse.Namespace):
    from sailscope.core.sampling import GenerationSettings, check_settings

    width, height = parse_size(args.size)
    settings = GenerationSettings(
        prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps,
        guidance=args.guidance, scheduler=args.scheduler, width=width, height=height, num_images=1,
        sharpness_at="none",
    )
    check_settings(settings)
    return settings


def format_table(spec, record, rows: int | None = None) -> str:
    lines = [f"spectrum of {spec.operator}", f"step {record.step}/{record.total}  t={record.t:.1f}  sigma={record.sigma:.4g}  "
             f"method {spec.method}  target {spec.target}"]
    if spec.density is not None:
        d = spec.density
        lines.append(f"SLQ density: {d.nodes.shape[0]} probes x {d.nodes.shape[1]} steps, sigma {d.sigma:.3g}, "
                     f"range [{float(d.nodes.min()):.4g}, {float(d.nodes.max()):.4g}], "
                     f"estimated positive eigenvalues {d.count_positive():.1f} of {d.dim}")
    else:
        lines.append(f"{'#':>4}  {'real':>13}  {'imag':>13}  {'rel.residual':>12}  converged")
        shown = zip(spec.eigenvalues.tolist(), spec.residuals.tolist(), spec.converged.tolist())
        for i, (lam, r, c) in enumerate(list(shown)[:rows]):
            lines.append(f"{i + 1:>4}  {lam.real:>13.6e}  {lam.imag:>13.6e}  {r:>12.3e}  {'yes' if c else 'NO'}")
        pc = spec.count_positive()
        scope = "of all" if spec.method == "dense" else "among the returned"
        lines.append(f"positive {pc.positive}, negative {pc.negative}, |Re λ| <= {pc.tol:.3g}: {pc.near_zero} ({scope} {pc.total})")
        if spec.breakdown:
            lines.append(f"breakdown: exact invariant subspace of dimension {spec.invariant_dim} found")
        lines.append(f"all converged (tol {spec.tol:g}): {'yes' if spec.all_converged else 'NO'}")
    lines.append(f"HVPs {spec.hvps} in {spec.seconds:.2f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from sailscope.core.io.files import json_safe
    from sailscope.core.spectra import spectrum_at_step

    # 1. Check inputs (before loading anything heavy)
    check_args(args)
    settings = settings_from_args(args)
    # 2. Model
    pipe = load_model_from_args(args)
    # 3. Generation to the step, spectrum on its latent
    start = time.perf_counter()
    options = dict(which=args.which, k=None if args.method == "dense" else args.k, method=args.method, target=args.target, hvp=args.hvp,
                   products=args.products, tol=args.tol, m=args.ncv, chunk=args.chunk, probes=args.probes,
                   steps=args.lanczos_steps)
    record, spec = spectrum_at_step(pipe, settings, args.step, **options)
    # 4. Report
    report = {
        "model": getattr(getattr(pipe, "sailscope_info", None), "__dict__", {}),
        "settings": settings.to_dict(), "step": record.step, "t": record.t, "sigma": record.sigma,
        "which": args.which, "spectrum": spec.to_dict(), "seconds_total": time.perf_counter() - start,
    }
    if spec.method == "dense":
        pc = spec.count_positive()
        report["positive_count"] = {"positive": pc.positive, "negative": pc.negative, "near_zero": pc.near_zero,
                                    "tol": pc.tol, "total": pc.total}
    if args.json:
        print(json.dumps(json_safe(report)))
    else:
        print(format_table(spec, record, rows=args.k))
    if spec.density is None and not spec.all_converged:
        print("sailscope: warning: not all eigenvalues converged (see residuals); raise --ncv or --tol", file=sys.stderr)
    return 0
