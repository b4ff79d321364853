"""``sailscope eval-demo``: the demo model card's table (copy rate, attribute accuracy, detection); options only,
the evaluation is :mod:`sailscope.core.demo.evaluate`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sailscope.core.demo.evaluate import evaluate, format_table, time_generation
from sailscope.core.demo.train import default_out

HELP = "evaluate the embedded demo model: copy distance/rate, attribute accuracy, step-1 detection AUC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", default=None, help="diffusers folder (default: the shipped demo model)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--n-heldout", type=int, default=None, help="use only the first N held-out prompts")
    parser.add_argument("--hvp", choices=("exact", "fd"), default="exact")
    parser.add_argument("--out", default=None, help="write the full JSON report here")
    parser.add_argument("--timing", action="store_true", help="also time 50-step generation (median of 5)")


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir) if args.model_dir else default_out()
    if not (model_dir / "model_index.json").exists():
        raise SystemExit(f"--model-dir {model_dir} is not a diffusers folder (no model_index.json)")
    torch.manual_seed(0)
    t = evaluate(model_dir, seeds=args.seeds, steps=args.steps, guidance=args.guidance, n_heldout=args.n_heldout,
                 hvp=args.hvp)
    if args.timing:
        t["timing"] = time_generation(model_dir)
    print(format_table(t))
    if args.timing:
        print(f"50-step generation, median of 5: {t['timing']['median_s']:.2f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(t, indent=1))
    return 0
