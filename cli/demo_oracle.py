"""``sailscope demo-oracle``: the perfect-denoiser ceiling of a demo data design (options only; the computation is
:mod:`sailscope.core.demo.oracle`)."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler

from sailscope.core.demo import data as demo_data
from sailscope.core.demo.oracle import ceiling, format_table
from sailscope.core.demo.train import TrainConfig, default_out

HELP = "the perfect-denoiser detection ceiling of a demo data design (model card)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--design", choices=sorted(demo_data.DESIGNS), default=demo_data.DEFAULT_DESIGN)
    parser.add_argument("--model-dir", default=None,
                        help="diffusers folder whose VAE and scheduler to use (default: the shipped demo model)")
    parser.add_argument("--heldout", type=int, default=40, help="number of held-out prompts")
    parser.add_argument("--samples", type=int, default=256, help="renders per held-out prompt")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default=None, help="write the JSON report here")


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir) if args.model_dir else default_out()
    if not (model_dir / "vae").is_dir():
        raise SystemExit(f"--model-dir {model_dir} has no vae/ folder")
    cfg = TrainConfig(data_design=args.design)
    ds = demo_data.dataset_from_config(asdict(cfg))
    vae = AutoencoderKL.from_pretrained(str(model_dir / "vae"), local_files_only=True).eval()
    scheduler = DDIMScheduler.from_pretrained(str(model_dir / "scheduler"), local_files_only=True)
    t = ceiling(ds, vae, scheduler, design=args.design, memorized_weight=cfg.memorized_weight, seeds=args.seeds,
                steps=args.steps, heldout=args.heldout, samples=args.samples)
    print(format_table(t))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(t, indent=1))
    return 0
