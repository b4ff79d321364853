"""``sailscope generate``: one prompt -> images, per-step records and a report (optionally with SAIL or RTA).

Engine modules (torch) are imported inside the functions that run the command: ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from typing import TYPE_CHECKING, Any

from sailscope.cli.options import add_model_arguments, load_model_from_args, parse_size
from sailscope.cli.sail_options import add_sail_arguments, mitigation_from_args
from sailscope.core.choices import SCHEDULERS
from sailscope.core.errors import UserInputError
from sailscope.core.io.files import json_safe, write_json_atomic
from sailscope.core.io.reports import save_images

if TYPE_CHECKING:
    from sailscope.core.sampling import GenerationSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the prompt ('' samples the unconditional model)")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (replaces the unconditional prompt)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (image i uses seed+i)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (1-1000)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (>= 0)")
    p.add_argument("--scheduler", default="ddim", help=f"one of {', '.join(SCHEDULERS)}")
    p.add_argument("--size", default=None, help="WxH in pixels (default: the model's native size)")
    p.add_argument("--num-images", type=int, default=1, help="images from seeds seed, seed+1, ...")
    p.add_argument("--hvp", choices=["exact", "fd"], default="fd", help="sharpness by JVP or finite difference")
    p.add_argument("--sharpness-at", default="first", help="none, first, all, or comma-separated steps")
    p.add_argument("--out", default=None, help="folder for PNG images (with infotext) and report.json")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    add_sail_arguments(p)


def settings_from_args(args: argparse.Namespace, warn: bool = False) -> GenerationSettings:
    """Settings checked before any model is loaded; ``warn``: print check_settings' warnings (e.g. an empty
    prompt) now, before the run, and remember them on ``args`` so they are not printed twice."""
    from sailscope.core.sampling import GenerationSettings, check_settings  # torch

    width, height = parse_size(args.size)
    at = args.sharpness_at
    if at not in ("none", "first", "all"):
        try:
            at = tuple(int(v) for v in at.split(","))
        except ValueError:
            raise UserInputError(f"--sharpness-at must be none, first, all or steps like 1,10,50; got {at!r}") from None
    settings = GenerationSettings(
        prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps,
        guidance=args.guidance, scheduler=args.scheduler, width=width, height=height, num_images=args.num_images,
        hvp=args.hvp, sharpness_at=at,
    )
    early = check_settings(settings)  # fail before loading a model
    if warn:
        for w in early:
            print(f"sailscope: warning: {w}", file=sys.stderr)
        args._warned = list(early)
    return settings


def run(args: argparse.Namespace) -> int:
    from sailscope.core.sampling import GenerationResult, StepRecord, generate  # torch

    settings = settings_from_args(args, warn=True)
    pipe = load_model_from_args(args)
    mitigation = mitigation_from_args(args)
    out = Path(args.out) if args.out else None
    if mitigation is not None:
        return run_pair(pipe, settings, mitigation, args, out)
    result = None
    for item in generate(pipe, settings):
        if isinstance(item, StepRecord) and not args.json:
            sh = f"  sharpness {item.sharpness[0]:.5g}" if item.sharpness else ""
            print(f"step {item.step:>4}/{item.total}  t={item.t:7.1f}  wen {item.wen[0]:.5g}{sh}", file=sys.stderr)
        elif isinstance(item, GenerationResult):
            result = item
    report = result.report()
    report["model"] = pipe.sailscope_info.__dict__
    for w in result.warnings:
        if w not in getattr(args, "_warned", ()):
            print(f"sailscope: warning: {w}", file=sys.stderr)
    if out is not None:
        report["images"] = save_images(result, out, pipe.sailscope_info.name, loras=pipe.sailscope_info.loras)
        write_json_atomic(out / "report.json", report)
    if args.json:
        print(json.dumps(json_safe(report)))
    elif out is not None:
        print(f"saved {len(report['images'])} image(s) and report.json to {out}")
    return 0


def run_pair(pipe: Any, settings: Any, mitigation: Any, args: argparse.Namespace, out: Any) -> int:
    """``sailscope generate --sail|--rta``: stream the pair to stderr, save both runs and a report; 0 on success.

    Prints SAIL's loss per step against the threshold and where the threshold came from; images are saved
    as ``original-<seed>-<i>.png`` and ``sail-…``/``rta-…`` with infotext, plus ``report.json``.
    """
    from sailscope.core.mitigation import PairResult, SailResult, SailStep, generate_pair, infotext_fields  # torch
    from sailscope.core.sampling import GenerationResult, StepRecord  # torch

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
    loras = getattr(info, "loras", ())
    if out is not None:
        out = Path(out)
        report["images"] = {
            "original": save_images(pair.original, out, name, tag="original-", loras=loras),
            pair.method: save_images(pair.mitigated, out, name, extra=infotext_fields(pair.mitigation),
                                     tag=f"{pair.method}-", loras=loras),
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
