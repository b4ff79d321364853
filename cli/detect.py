"""``sailscope detect``: memorization scores per prompt, one JSON line each, resumable.

Engine modules (torch, gradio) are imported inside the functions that run the command, on purpose: ``--help`` and
argument errors answer without loading them.
"""
from __future__ import annotations

import argparse
import json
import sys

from sailscope.cli.options import add_model_arguments, load_model_from_args
from sailscope.core.choices import SCHEDULERS
from sailscope.core.io.files import append_jsonl, json_safe, read_jsonl
from sailscope.core.io.prompts import prompts_of, read_prompt_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help="a .txt file (one prompt per line) or .jsonl (field caption or prompt)")
    p.add_argument("--seeds", type=int, default=4, help="number of seeds (0..N-1); the paper uses 4")
    p.add_argument("--first-steps", type=int, default=1, help="average the metric over the first K steps")
    p.add_argument("--metric", choices=["sharpness", "wen", "anisotropy"], default="sharpness")
    p.add_argument("--detectors", default="none",
                   help="extra detector columns from the same pass: a comma list of wen, sharpness, anisotropy, "
                        "all or none")
    p.add_argument("--hvp", choices=["exact", "fd"], default="fd")
    p.add_argument("--steps", type=int, default=50, help="schedule length (timesteps as for a full run)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--scheduler", default="ddim", help=f"one of {', '.join(SCHEDULERS)}")
    p.add_argument("--start", type=int, default=0, help="first prompt index (split a list across machines)")
    p.add_argument("--end", type=int, default=None, help="one past the last prompt index")
    p.add_argument("--out", default=None, help="JSONL output; re-running skips prompts already in it")
    p.add_argument("--json", action="store_true", help="print JSON lines on stdout (default: also when no --out)")


def run(args: argparse.Namespace) -> int:
    prompts = [args.prompt] if args.prompt is not None else prompts_of(read_prompt_file(args.prompts))
    prompts = prompts[args.start: args.end]
    done = [row["prompt"] for row in read_jsonl(args.out)] if args.out else []
    if done:
        print(f"sailscope: resuming: {len(done)} prompt(s) already in {args.out}", file=sys.stderr)
    from sailscope.core.detect import risk_level, score_prompts

    pipe = load_model_from_args(args)
    threshold = detection_threshold_for(pipe, args)
    quiet = args.json and not args.out
    n_high = n_scored = 0
    for score in score_prompts(
        pipe, prompts, skip=done, seeds=args.seeds, first_steps=args.first_steps, metric=args.metric,
        hvp=args.hvp, steps=args.steps, guidance=args.guidance, scheduler=args.scheduler, detectors=args.detectors,
    ):
        row = score.to_dict()
        if threshold is not None:
            row["threshold"] = threshold
            row["risk"] = risk_level(row["score"], threshold)
            n_high += row["risk"] == "high"
            n_scored += 1
            if not quiet:
                op = ">=" if row["risk"] == "high" else "<"
                print(f"sailscope: {row['risk']} risk: score {row['score']:.5g} {op} threshold {threshold:.5g}: "
                      f"{row['prompt']!r}", file=sys.stderr)
        if args.out:
            append_jsonl(args.out, row)
        if args.json or not args.out:
            print(json.dumps(json_safe(row)), flush=True)
    if threshold is not None and n_scored and not quiet:
        print(f"sailscope: {n_high} of {n_scored} prompt(s) at high memorization risk (step-1 sharpness >= {threshold:.5g})",
              file=sys.stderr)
    return 0


def detection_threshold_for(pipe, args: argparse.Namespace, say=None) -> float | None:
    """The model's calibrated step-1 sharpness threshold when the scores are comparable to it (metric sharpness,
    first step only), announced with ``say`` (default: on stderr unless JSON goes to stdout); None (also
    announced) otherwise."""
    if say is None:
        quiet = getattr(args, "json", False) and not args.out
        say = (lambda msg: None) if quiet else (lambda msg: print(f"sailscope: {msg}", file=sys.stderr))
    if args.metric != "sharpness" or args.first_steps != 1:
        say("no verdict: the detection threshold is for step-1 sharpness (--metric sharpness --first-steps 1)")
        return None
    from sailscope.core.calibration import detection_threshold

    found = detection_threshold(pipe)
    if found is None:
        say("no verdict: this model has no calibrated detection threshold (run `sailscope calibrate`); scores only")
        return None
    value, source = found
    say(f"detection threshold {value:.5g} ({source}); risk is high when a prompt's score is >= it")
    return float(value)
