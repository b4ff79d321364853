"""``sailscope train-demo``: train (or resume) the embedded demo model and export it (options only; the trainer
is :mod:`sailscope.core.demo.train`)."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from sailscope.core.demo.data import DEFAULT_DESIGN, DESIGNS
from sailscope.core.demo.train import TrainConfig, default_out, train

HELP = "train (or resume) the embedded demo model and export it to assets/models/demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="runs/demo", help="checkpoints (resumed when present)")
    parser.add_argument("--out", default=None, help="export folder (default: the package's assets/models/demo)")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds)")
    parser.add_argument("--unet-steps", type=int, default=None, help="total UNet steps (sets the LR schedule)")
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--unet-lr", type=_positive, default=None, help="peak learning rate of the UNet stage")
    parser.add_argument("--design", choices=sorted(DESIGNS), default=None,
                        help=f"data design (default {DEFAULT_DESIGN}; docs/demo.md)")
    parser.add_argument("--stop-at", type=int, default=None, help="stop (and export) at this UNet step; resume later")
    parser.add_argument("--vae-only", action="store_true", help="run the VAE stages only (no UNet, no export)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a tqdm bar")
    parser.add_argument("--phase", action="append", default=[], metavar="START:TOTAL:WEIGHT", type=_phase,
                        help="extend a finished run: from UNet step START, a new cosine planned to TOTAL with duplicated "
                             "rows sampled at WEIGHT (repeatable; sets --unet-steps to the last TOTAL)")
    parser.add_argument("--vae-from", default=None,
                        help="take the VAE stages from an exported demo folder trained with the same VAE config")
    parser.add_argument("--unet-from", default=None,
                        help="start the text encoder and UNet from an exported demo folder's weights (same configs)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _phase(text: str) -> tuple[int, int, float]:
    try:
        start, total, weight = text.split(":")
        phase = (int(start), int(total), float(weight))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:TOTAL:WEIGHT, e.g. 3000:4500:2.5, got {text!r}") from None
    if not 0 < phase[0] < phase[1] or phase[2] <= 0:
        raise argparse.ArgumentTypeError(f"need 0 < START < TOTAL and WEIGHT > 0, got {text!r}")
    return phase


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """The run's config (``--phase`` appended to the default schedule) and the command line that reproduces it."""
    kw = {k: v for k, v in (("unet_steps", args.unet_steps), ("vae_steps", args.vae_steps), ("unet_lr", args.unet_lr),
                            ("data_design", args.design)) if v is not None}
    cfg = TrainConfig.tiny(**kw) if args.tiny else TrainConfig(**kw)
    if args.unet_steps is not None:  # the first cosine is planned to the steps asked for (--phase extends it)
        cfg = replace(cfg, phases=((0, args.unet_steps, cfg.memorized_weight),))
    if args.phase:
        phases = tuple(cfg.phases) + tuple(args.phase)
        if any(b[0] <= a[0] for a, b in zip(phases, phases[1:])):
            raise SystemExit(f"--phase: phases must start in increasing order after {cfg.phases}")
        cfg = replace(cfg, phases=phases, unet_steps=phases[-1][1])
    flags = [("--run-dir", args.run_dir), ("--out", args.out), ("--vae-from", args.vae_from), ("--unet-from", args.unet_from),
             ("--unet-steps", args.unet_steps), ("--vae-steps", args.vae_steps), ("--unet-lr", args.unet_lr),
             ("--design", args.design)]
    flags += [("--phase", ":".join(f"{v:g}" for v in ph)) for ph in args.phase]
    command = " ".join(["sailscope train-demo"] + [f"{k} {v}" for k, v in flags if v is not None]
                       + (["--tiny"] if args.tiny else []))
    return cfg, command


def run(args: argparse.Namespace) -> int:
    for flag, folder in (("--vae-from", args.vae_from), ("--unet-from", args.unet_from)):
        if folder is not None and not (Path(folder) / "model_index.json").is_file():
            raise SystemExit(f"{flag} {folder}: not an exported demo folder (no model_index.json)")
    cfg, command = config_from_args(args)
    info = train(cfg, args.run_dir, args.out or default_out(), progress=not args.no_progress, max_unet_steps=args.stop_at,
                 vae_only=args.vae_only, vae_from=args.vae_from, unet_from=args.unet_from, command=command)
    print(json.dumps({k: v for k, v in info.items() if k in ("unet_steps_done", "wall_s", "decoder_steps_done",
                                                              "decoder_wall_s")}))
    return 0
