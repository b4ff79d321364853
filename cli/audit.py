"""``sailscope audit``: score a prompt list on one or many processes (``accelerate launch``), resumable, with an
ROC report when labels are given. The engine is :mod:`sailscope.core.audit`; docs/audit.md shows the commands.

Engine modules (torch, accelerate) are imported inside the functions that run the command, on purpose: ``--help``
and argument errors answer without loading them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sailscope.cli.options import add_model_arguments, load_model_from_args
from sailscope.core.choices import SCHEDULERS

DETECTOR_CHOICES = "wen, sharpness, anisotropy, all or none"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prompts", required=True,
                   help="a .txt (one prompt per line), .csv (prompt[,memorized]) or .jsonl (prompt or caption, "
                        "optional memorized) file; its memorized flags, when present, are labels for the report")
    p.add_argument("--out", required=True,
                   help="output folder (shared by every process): shards/, scores.jsonl, report.json/.html; "
                        "re-running the same command resumes")
    p.add_argument("--seeds", type=int, default=4, help="number of seeds (0..N-1); the paper uses 4")
    p.add_argument("--first-steps", type=int, default=1, help="average wen/sharpness over the first K steps")
    p.add_argument("--metric", choices=["sharpness", "wen", "anisotropy"], default="sharpness",
                   help="the detector in the record's score field, as `sailscope detect`")
    p.add_argument("--detectors", default="all",
                   help=f"detector columns computed in the same pass: a comma list of {DETECTOR_CHOICES}")
    p.add_argument("--hvp", choices=["exact", "fd"], default="fd", help="how sharpness's Hessian product is taken")
    p.add_argument("--steps", type=int, default=50, help="schedule length (timesteps as for a full run)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--scheduler", default="ddim", help=f"one of {', '.join(SCHEDULERS)}")
    lab = p.add_argument_group("labels (for report.json / report.html)")
    lab.add_argument("--labels", default=None, metavar="FILE.jsonl",
                     help='a .jsonl of {"prompt": ..., "memorized": true/false}')
    lab.add_argument("--memorized", default=None, metavar="FILE", help="memorized prompts, one per line")
    lab.add_argument("--not-memorized", default=None, metavar="FILE", help="non-memorized prompts, one per line")
    lab.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dist-backend", default=None, choices=["nccl", "gloo"],
                   help="process-group backend under accelerate launch (default: accelerate's, nccl on GPUs); gloo "
                        "with --device cuda:0 lets several processes share one GPU")


def _check_arguments(args: argparse.Namespace) -> None:
    from sailscope.core.detect import parse_detectors
    from sailscope.core.errors import UserInputError

    if args.labels and (args.memorized or args.not_memorized):
        raise UserInputError("give --labels FILE.jsonl or --memorized FILE --not-memorized FILE, not both")
    if bool(args.memorized) != bool(args.not_memorized):
        raise UserInputError("--memorized and --not-memorized go together")
    if args.seeds < 1:
        raise UserInputError(f"--seeds must be >= 1, got {args.seeds}")
    if args.bootstrap < 1:
        raise UserInputError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    args.detector_list = parse_detectors(args.detectors)


def audit_settings(args: argparse.Namespace) -> dict:
    """What determines a record's values: one output folder holds one of these (core/audit.py checks it)."""
    return {"model": args.model, "config": args.config, "dtype": args.dtype, "metric": args.metric,
            "detectors": list(args.detector_list), "seeds": args.seeds, "first_steps": args.first_steps,
            "hvp": args.hvp, "steps": args.steps, "guidance": args.guidance, "scheduler": args.scheduler}


def read_labels(args: argparse.Namespace, entries) -> dict[str, bool]:
    """Labels from the prompt file's own ``memorized`` flags, then ``--labels`` or the two files (a prompt labelled
    both ways is an error)."""
    from sailscope.core.audit import load_labels
    from sailscope.core.errors import UserInputError

    labels = {e.prompt: bool(e.memorized) for e in entries if e.memorized is not None}
    extra = {}
    if args.labels:
        extra = load_labels(args.labels)
    elif args.memorized:
        extra = load_labels(args.memorized, args.not_memorized)
    for prompt, value in extra.items():
        if labels.get(prompt, value) != value:
            raise UserInputError(f"{prompt!r} is labelled {labels[prompt]} in --prompts and {value} in the labels")
        labels[prompt] = value
    return labels


class Progress:
    """A progress bar with rate and ETA (tqdm when installed, else a line every few seconds), main process only."""

    def __init__(self, world_size: int, enabled: bool = True) -> None:
        self.world_size, self.enabled, self.bar, self.last = world_size, enabled, None, 0.0
        self.desc = "audit" if world_size == 1 else f"audit, process 0 of {world_size} (its share)"

    def __call__(self, done: int, total: int, rate: float, eta: float) -> None:
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            if self.bar is None:
                self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="prompt", file=sys.stderr,
                                dynamic_ncols=True, mininterval=1.0)
            else:
                self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last >= 5.0 or done == total:
            self.last = now
            eta_text = "?" if eta == float("inf") else f"{eta:.0f} s"
            print(f"sailscope: {self.desc}: {done}/{total} prompts, {rate:.3g} prompts/s, ETA {eta_text}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    from sailscope.core import audit
    from sailscope.core.detect import risk_level, score_prompt
    from sailscope.core.io.prompts import prompts_of, read_prompt_file

    entries = read_prompt_file(args.prompts)
    prompts = prompts_of(entries)
    labels = read_labels(args, entries)
    state = audit.process_state(args.dist_backend)
    say = (lambda msg: print(f"sailscope: {msg}", file=sys.stderr, flush=True)) if state.is_main else (lambda msg: None)
    if state.device is not None and args.device is None:
        args.device = state.device  # one GPU per process under `accelerate launch`
    pipe = load_model_from_args(args)
    from sailscope.cli.detect import detection_threshold_for

    threshold = detection_threshold_for(pipe, args, say=say)
    done = len(audit.read_done(args.out))
    say(f"{len(prompts)} prompt(s), {args.seeds} seed(s), metric {args.metric}, detectors "
        f"{','.join(args.detector_list) or 'none'}; {state.world_size} process(es)"
        + (f"; resuming: {done} record(s) already in {args.out}" if done else ""))

    def scorer(prompt: str) -> dict:
        row = score_prompt(
            pipe, prompt, seeds=args.seeds, first_steps=args.first_steps, metric=args.metric, hvp=args.hvp,
            steps=args.steps, guidance=args.guidance, scheduler=args.scheduler, detectors=args.detector_list,
        ).to_dict()
        if threshold is not None:  # the same fields as `sailscope detect`
            row["threshold"] = threshold
            row["risk"] = risk_level(row["score"], threshold)
        return row

    progress = Progress(state.world_size, enabled=not args.no_progress)
    start = time.perf_counter()
    try:
        summary = audit.run_audit(prompts, scorer, args.out, settings=audit_settings(args), state=state,
                                  progress=progress)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    if not state.is_main:
        return 0
    merged = summary.merged
    say(f"{merged.written} record(s) in {Path(args.out) / audit.MERGED}; this process scored "
        f"{summary.shard.scored} in {seconds:.1f} s" + (f"; {len(merged.missing)} prompt(s) still missing"
                                                       if merged.missing else ""))
    if labels:
        records = audit.read_records(Path(args.out) / audit.MERGED)
        report = audit.build_report(records, labels, resamples=args.bootstrap)
        json_path, html_path = audit.write_report(args.out, report)
        for name, d in report["detectors"].items():
            if d["auc"] is not None:
                say(f"{name}: AUC {d['auc']:.3f} [{d['auc_ci'][0]:.3f}, {d['auc_ci'][1]:.3f}], TPR@1%FPR "
                    f"{d['tpr_at_fpr']:.3f} ({d['n_memorized']} memorized, {d['n_not_memorized']} not)")
        say(f"report: {json_path}, {html_path}")
    return 0 if not merged.missing else 1
