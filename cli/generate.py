"""``sailscope generate``: one prompt -> images, per-step records and a report (optionally with SAIL)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from sailscope.core.choices import SCHEDULERS
from sailscope.cli.options import add_model_arguments, load_model_from_args, parse_size
from sailscope.core.io import infotext
from sailscope.core.io.files import json_safe, save_png_atomic, write_json_atomic
from sailscope.core.io.infotext import format_infotext

if TYPE_CHECKING:  # torch-free at import: ``sailscope generate --help`` parses without loading the engine
    from sailscope.core.sampling import GenerationResult, GenerationSettings


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
    from sailscope.cli.sail_options import add_sail_arguments

    add_sail_arguments(p)


def settings_from_args(args: argparse.Namespace, warn: bool = False) -> GenerationSettings:
    """Settings checked before any model is loaded; ``warn``: print check_settings' warnings (e.g. an empty
    prompt) now, before the run, and remember them on ``args`` so they are not printed twice."""
    from sailscope.core.sampling import GenerationSettings, check_settings

    width, height = parse_size(args.size)
    at = args.sharpness_at
    if at not in ("none", "first", "all"):
        from sailscope.core.errors import UserInputError

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


def save_result(result: "GenerationResult", out: Path, model: str, extra: dict | None = None, tag: str = "") -> list[str]:
    """PNG per image with A1111 infotext; returns the paths."""
    paths = []
    s = result.settings.to_dict()
    h, w = result.array.shape[1:3]
    s.update(model=model, width=w, height=h)
    for i, image in enumerate(result.images):
        rec = result.records[0] if result.records else None
        info = infotext.fields(wen=rec.wen[i] if rec else None, sharpness=rec.sharpness[i] if rec and rec.sharpness else None)
        info.update(extra or {})
        text = format_infotext({**s, "seed": result.settings.seed + i}, info)
        path = out / f"{tag}{result.settings.seed + i:08d}-{i}.png"
        save_png_atomic(image, path, text)
        paths.append(str(path))
    return paths


def run(args: argparse.Namespace) -> int:
    from sailscope.core.sampling import GenerationResult, StepRecord, generate

    settings = settings_from_args(args, warn=True)
    pipe = load_model_from_args(args)
    sail = None
    try:
        from sailscope.cli.sail_options import mitigation_from_args

        sail = mitigation_from_args(args)
    except ImportError:
        pass
    out = Path(args.out) if args.out else None
    if sail is not None:
        from sailscope.cli.sail_options import run_cli_pair

        return run_cli_pair(pipe, settings, sail, args, out)
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
        report["images"] = save_result(result, out, pipe.sailscope_info.name)
        write_json_atomic(out / "report.json", report)
    if args.json:
        print(json.dumps(json_safe(report)))
    elif out is not None:
        print(f"saved {len(report['images'])} image(s) and report.json to {out}")
    return 0
