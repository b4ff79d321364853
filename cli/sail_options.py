"""``sailscope generate``'s SAIL/RTA options and the pair run they start: the command line's side of SAIL.

The options are built without importing torch (fast ``--help`` and argument errors), so the engine
(:mod:`sailscope.core.mitigation`, which imports torch) is imported inside the functions that run a command, on
purpose. ``SAIL_CLI_DEFAULTS`` are :class:`~sailscope.core.mitigation.SailSettings`' defaults as the parser shows
them; ``tests/test_cli_startup.py`` fails when they drift.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

OBJECTIVES: tuple[str, ...] = ("paper", "reference")

# SailSettings() defaults used by the parser (see the module docstring)
SAIL_CLI_DEFAULTS = SimpleNamespace(objective="paper", threshold="auto", trigger="auto", trigger_noises=4, max_steps=6,
                                    candidates=1, rounds=2, lr=0.3)


def _threshold_arg(text: str) -> float | str:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sail-threshold must be a number or 'auto', got {text!r}") from None


def _trigger_arg(text: str) -> float | str | None:
    if text == "none":
        return None
    try:
        return _threshold_arg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--sail-trigger must be a number, 'auto' or 'none', got {text!r}") from None


def add_sail_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sail`` and its options, plus ``--rta N`` (Random Token Addition baseline)."""
    d = SAIL_CLI_DEFAULTS
    g = parser.add_argument_group("mitigation (SAIL, or the RTA baseline)")
    g.add_argument("--sail", action="store_true", help="also generate the SAIL-mitigated image (a pair)")
    g.add_argument("--sail-objective", choices=OBJECTIVES, default=d.objective,
                   help="paper: ‖sΔ(x+δsΔ)-sΔ(x)‖²/δ²+α‖x‖² (score space); reference: the authors' eps-space proxy")
    g.add_argument("--sail-threshold", type=_threshold_arg, default=d.threshold,
                   help="optimize a noise until its loss is <= this; 'auto' = this model's calibration (median)")
    g.add_argument("--sail-trigger", type=_trigger_arg, default=d.trigger,
                   help="keep the seed's noise when its loss is already <= this; 'auto' = calibrated q0.9 "
                        "(the threshold without a calibration); 'none' = the threshold")
    g.add_argument("--sail-trigger-noises", type=int, default=d.trigger_noises,
                   help="the trigger keeps a seed's noise only if the prompt's mean loss over it and N-1 fresh noises "
                        "is under the trigger too (1 = judge the seed alone)")
    g.add_argument("--sail-no-sphere", action="store_true",
                   help="let Adam change the noise's norm (default: keep it on the sphere of the seed's noise)")
    g.add_argument("--sail-max-steps", type=int, default=d.max_steps, help="Adam steps per candidate (cap)")
    g.add_argument("--sail-candidates", type=int, default=d.candidates,
                   help="noises optimized together (1 = only the seed's own)")
    g.add_argument("--sail-rounds", type=int, default=d.rounds,
                   help="rounds: a seed whose noise does not reach the threshold within the step cap gets fresh "
                        "candidates, up to this many rounds in all (1 = never re-draw)")
    g.add_argument("--sail-lr", type=float, default=d.lr, help="Adam learning rate")
    g.add_argument("--sail-alpha", type=float, default=None, help="prior weight α (default: per objective and model)")
    g.add_argument("--sail-delta", type=float, default=None,
                   help="paper objective's relative finite-difference step (default: 1e-3 fp32, 3e-2 fp16, 1e-1 bf16)")
    g.add_argument("--rta", type=int, default=None, metavar="N",
                   help="baseline instead of SAIL: add N random tokens to the prompt (Random Token Addition)")


def sail_settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~sailscope.core.mitigation.SailSettings` of ``--sail ...`` (None without ``--sail``)."""
    if not getattr(args, "sail", False):
        return None
    from sailscope.core.mitigation import SailSettings  # torch: only when a command runs

    return SailSettings(
        objective=args.sail_objective, threshold=args.sail_threshold, max_steps=args.sail_max_steps,
        candidates=args.sail_candidates, lr=args.sail_lr, alpha=args.sail_alpha, delta=args.sail_delta,
        trigger=args.sail_trigger, sphere=not args.sail_no_sphere, rounds=args.sail_rounds,
        trigger_noises=args.sail_trigger_noises,
    )


def mitigation_from_args(args: argparse.Namespace) -> Any:
    """``SailSettings`` (``--sail``), ``RtaSettings`` (``--rta N``) or None; both at once is an error."""
    from sailscope.core.errors import UserInputError

    sail = sail_settings_from_args(args)
    n = getattr(args, "rta", None)
    if sail is not None and n is not None:
        raise UserInputError("--sail and --rta are alternatives; pass one")
    if n is not None:
        from sailscope.core.mitigation.rta import RtaSettings

        return RtaSettings(tokens=n)
    return sail


def run_cli_pair(pipe: Any, settings: Any, mitigation: Any, args: argparse.Namespace, out: Any) -> int:
    """``sailscope generate --sail|--rta``: stream the pair to stderr, save both runs and a report; 0 on success.

    Prints SAIL's loss per step against the threshold and where the threshold came from; images are saved
    as ``original-<seed>-<i>.png`` and ``sail-…``/``rta-…`` with infotext, plus ``report.json``.
    """
    from sailscope.cli.generate import save_result
    from sailscope.core.sampling import GenerationResult, StepRecord
    from sailscope.core.io.files import json_safe, write_json_atomic
    from sailscope.core.mitigation import PairResult, SailResult, SailStep, generate_pair, infotext_fields

    quiet = bool(getattr(args, "json", False))
    say = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    pair = None
    for item in generate_pair(pipe, settings, mitigation):
        if isinstance(item, SailStep):
            losses = ", ".join("-" if v is None else f"{v:.5g}" for v in item.loss)
            acc = f"  accepted {item.accepted}" if item.accepted else ""
            rnd = f"  (round {item.round + 1}: fresh noise)" if item.round else ""
            say(f"SAIL step {item.step:>3}/{item.max_steps}  loss [{losses}]  threshold {item.threshold:.5g}{acc}{rnd}")
        elif isinstance(item, SailResult):
            if item.trigger is not None:
                say(f"SAIL trigger {item.trigger:.6g} ({item.trigger_source}): starts at or below it are kept")
            for i, (over, pl) in enumerate(zip(item.trigger_overruled, item.prompt_loss)):
                if over:
                    say(f"SAIL image {i}: the seed's noise is under the trigger, but the prompt's mean loss over "
                        f"{item.settings.trigger_noises} noises ({pl:.5g}) is not: optimized")
            say(f"SAIL threshold {item.threshold:.6g} ({item.threshold_source}); objective {item.objective}, "
                f"alpha {item.alpha:.4g} ({item.alpha_source}); {item.unet_calls} UNet calls, {item.seconds:.2f}s")
            for w in item.warnings:
                say(f"sailscope: warning: {w}")
        elif isinstance(item, StepRecord):
            sh = f"  sharpness {item.sharpness[0]:.5g}" if item.sharpness else ""
            say(f"[{item.run}] step {item.step:>4}/{item.total}  t={item.t:7.1f}  wen {item.wen[0]:.5g}{sh}")
        elif isinstance(item, PairResult):
            pair = item
        elif not isinstance(item, GenerationResult):  # RtaResult
            say(f"RTA prompt: {item.prompt!r}")
    assert pair is not None
    report = pair.report()
    info = getattr(pipe, "sailscope_info", None)
    report["model"] = info.__dict__ if info is not None else None
    name = info.name if info is not None else "model"
    if out is not None:
        out = Path(out)
        report["images"] = {
            "original": save_result(pair.original, out, name, tag="original-"),
            pair.method: save_result(pair.mitigated, out, name, extra=infotext_fields(pair.mitigation), tag=f"{pair.method}-"),
        }
        write_json_atomic(out / "report.json", report)
    if quiet:
        print(json.dumps(json_safe(report)))
    else:
        say(f"original {pair.original.seconds:.2f}s; mitigated {pair.mitigated_seconds:.2f}s "
            f"({pair.method} {pair.mitigation.seconds:.2f}s + sampling {pair.mitigated.seconds:.2f}s)")
        if out is not None:
            print(f"saved the original and {pair.method} images and report.json to {out}")
    return 0
