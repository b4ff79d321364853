"""``sailscope spectra-study``: memorized vs held-out Hessian spectra at step 1 and the last step (options only;
the study is :mod:`sailscope.core.spectra.study`)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "memorized vs held-out Hessian spectra of a model folder (docs/spectra.md)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo")
    p.add_argument("--memorized", type=int, default=4, help="memorized captions (exact first)")
    p.add_argument("--heldout", type=int, default=4, help="held-out captions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--which", choices=("cond", "uncond", "delta"), default="cond")
    p.add_argument("--method", choices=("dense", "arnoldi"), default="arnoldi")
    p.add_argument("--k", type=int, default=10, help="arnoldi: eigenvalues at each end")
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--products", choices=("forward", "reverse"), default="reverse")
    p.add_argument("--out", default="docs/spectra_memorization.png")
    p.add_argument("--json", default=None)


def run(args: argparse.Namespace) -> int:
    from sailscope.core.models import load_pipeline  # engine imports stay out of `--help` (see sailscope.cli)
    from sailscope.core.spectra.study import load_prompts, model_folder, plot_png, run_study

    prompts = load_prompts(model_folder(args.model), args.memorized, args.heldout)
    pipe = load_pipeline(args.model, dtype="fp32")
    start = time.perf_counter()
    rows, table = run_study(pipe, prompts, seed=args.seed, steps=args.steps, which=args.which, method=args.method,
                            k=args.k, chunk=args.chunk, products=args.products, log=lambda line: print(line, flush=True))
    for t in table:
        print(json.dumps(t))
    title = (f"{args.model}: H_{args.which} spectra ({args.method}{'' if args.method == 'dense' else f', k={args.k} per end'}), "
             f"seed {args.seed}, {args.steps} DDIM steps")
    plot_png(rows, args.steps, Path(args.out), title)
    report = {"args": {k: v for k, v in vars(args).items() if k != "func"}, "summary": table, "rows": rows,
              "seconds": time.perf_counter() - start}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
    return 0
