"""``sailscope generate``'s SAIL/RTA options and the settings they make: the command line's side of SAIL.

The options are built without importing torch (fast ``--help`` and argument errors), so the engine
(:mod:`sailscope.core.mitigation`, which imports torch) is imported inside the functions that run a command, on
purpose. ``SAIL_CLI_DEFAULTS`` are :class:`~sailscope.core.mitigation.SailSettings`' defaults as the parser shows
them; ``tests/test_cli_startup.py`` fails when they drift.
"""
from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

from sailscope.core.errors import UserInputError

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
    sail = sail_settings_from_args(args)
    n = getattr(args, "rta", None)
    if sail is not None and n is not None:
        raise UserInputError("--sail and --rta are alternatives; pass one")
    if n is not None:
        from sailscope.core.mitigation.rta import RtaSettings

        return RtaSettings(tokens=n)
    return sail
