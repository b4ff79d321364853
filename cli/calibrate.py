"""``sailscope calibrate``: measure a model's SAIL objective and step-1 sharpness on non-memorized prompts.

Stores the raw values in the user's calibration file (``$SAILSCOPE_HOME/calibration.json``, default
``~/.config/sailscope/``) under the model's identity; ``--threshold auto`` (SAIL) and the detector read them.
``--output FILE`` writes elsewhere, e.g. ``<model folder>/sail_calibration.json`` to ship it with a model.

Engine modules (torch, gradio) are imported inside the functions that run the command, on purpose: ``--help`` and
argument errors answer without loading them.
"""
from __future__ import annotations



import argparse
import json
import sys
import time

from sailscope.cli.options import add_model_arguments, load_model_from_args
from sailscope.core.errors import UserInputError
from sailscope.core.io.prompts import prompts_of, read_prompt_file


def parse_seeds(text: str) -> list[int]:
    """``"0-3"`` or ``"0,1,5"`` -> seeds; errors name ``--seeds``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                out += list(range(a, b + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise UserInputError(f"--seeds must look like 0-3 or 0,1,5; got {text!r}") from None
    if not out or any(s < 0 for s in out):
        raise UserInputError(f"--seeds must list non-negative integers, got {text!r}")
    return out


def read_prompts(path: str | None, limit: int | None, model: str = "") -> list[str]:
    """One prompt per line (``.txt``), ``.csv`` or ``.jsonl`` (``sailscope.core.io.prompts``); without a file, the
    default list for the model (:func:`sailscope.core.calibration.default_calibration_prompts`)."""
    if path is None:
        from sailscope.core.calibration import default_calibration_prompts  # torch: not for --help

        prompts, source = default_calibration_prompts(model)
        print(f"sailscope: calibrating on {source}", file=sys.stderr)
        return prompts[:limit] if limit else prompts
    prompts = prompts_of(read_prompt_file(path))
    if not prompts:
        raise UserInputError(f"--prompts file {path} has no prompts")
    return prompts[:limit] if limit else prompts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompts", default=None,
                        help="non-memorized prompts (.txt one per line, .csv or .jsonl); default: 48 fresh grammar captions "
                             "for the demo model, else the 128 shipped generic prompts (assets/prompts/README.md)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--seeds", default="0-3", help="seeds, e.g. 0-3 or 0,1,5 (default 0-3)")
    parser.add_argument("--scheduler", default="ddim", help="scheduler whose first step is measured (default ddim)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (sets the first timestep; default 50)")
    parser.add_argument("--delta", type=float, default=None,
                        help="paper objective's relative step (default: by the UNet dtype, 1e-3 for fp32)")
    parser.add_argument("--output", default=None, help="calibration file to write (default: the user's settings file)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from sailscope.core import calibration as cal
    from sailscope.core.mitigation import default_alpha

    # 1. Check inputs before loading anything
    seeds = parse_seeds(args.seeds)
    prompts = read_prompts(args.prompts, args.limit, args.model)
    # 2. Measure
    pipe = load_model_from_args(args)

    start = time.perf_counter()

    def progress(i: int, n: int) -> None:
        if args.json:
            return
        elapsed = time.perf_counter() - start
        left = f", about {elapsed / i * (n - i):.0f} s left" if 0 < i < n else ""
        print(f"\rcalibrating: {i}/{n} prompts, {elapsed:.0f} s{left}   ", end="" if i < n else "\n",
              file=sys.stderr, flush=True)

    record = cal.measure(pipe, prompts, seeds, scheduler=args.scheduler, steps=args.steps, delta=args.delta,
                         progress=progress)
    path = cal.save_calibration(record, args.output)
    # 3. Report
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    summary = {"model": record.name, "key": record.key, "file": str(path), "n": record.n, "t": record.t,
               "detection_threshold": record.detection_threshold(), "sail_threshold": {}}
    for objective in ("paper", "reference"):
        alpha = record.paper_alpha() if objective == "paper" else default_alpha(objective, pred)
        summary["sail_threshold"][objective] = {
            "alpha": alpha, "q0.9": record.sail_threshold(objective, alpha, quantile=0.9),
            "q0.5": record.sail_threshold(objective, alpha, quantile=0.5),
        }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"calibrated {record.name} on {record.n} prompt×seed values (t={record.t:g}); saved to {path}")
        print(f"  step-1 sharpness detection threshold (q0.99): {summary['detection_threshold']:.6g}")
        for objective, v in summary["sail_threshold"].items():
            print(f"  SAIL {objective} (alpha={v['alpha']:g}): trigger q0.9 {v['q0.9']:.6g}, threshold q0.5 {v['q0.5']:.6g}")
    return 0
