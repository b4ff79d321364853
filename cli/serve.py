"""``sailscope serve``: start the web app (one model job at a time through gradio's queue).

Engine modules (torch, gradio) are imported inside the functions that run the command, on purpose: ``--help`` and
argument errors answer without loading them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo",
                        help="model to load at start: demo (default), or one found in --models-dir; 'none' starts empty")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio share link")
    parser.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                        help="folder whose diffusers folders and .safetensors files are offered in the Model tab (repeatable)")
    parser.add_argument("--lora-dir", action="append", default=[], metavar="DIR",
                        help="folder whose .safetensors LoRAs are offered in the Model tab by name (repeatable)")
    parser.add_argument("--allow-paths", action="store_true",
                        help="let the browser load models from any path typed in the Model tab (off by default)")
    parser.add_argument("--outputs", default="outputs", metavar="DIR", help="where images and reports are saved (default ./outputs)")
    parser.add_argument("--reference-dir", default=None, metavar="DIR",
                        help="folder of known images (e.g. your training set) that the app compares generated images "
                             "with, to find copies (read once at start; the browser cannot choose another path)")
    parser.add_argument("--reference-tau", type=float, default=None, metavar="D",
                        help="distance under which an image counts as a copy of a --reference-dir image and two seeds "
                             "as the same image (RMSE of 64x64 pixels in [0, 1]; default: none, distances only)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    parser.add_argument("--dtype", default=None, type=str.lower, choices=("fp32", "fp16", "bf16", "float32", "float16", "bfloat16"),
                        help="weights' dtype (default: fp16 on CUDA, else fp32)")


def run(args: argparse.Namespace) -> int:
    if args.reference_dir and not Path(args.reference_dir).is_dir():
        print(f"sailscope: --reference-dir {args.reference_dir} is not a folder", file=sys.stderr)
        return 2
    from sailscope.core.errors import SailScopeError
    from sailscope.ui.app import build_ui, launch
    from sailscope.ui.jobs import AppConfig, ModelManager

    config = AppConfig(model=None if args.model == "none" else args.model, models_dirs=tuple(args.models_dir),
                       lora_dirs=tuple(args.lora_dir), allow_paths=args.allow_paths, outputs=args.outputs, device=args.device, dtype=args.dtype)
    manager = ModelManager(config)
    if config.model:
        try:
            print(f"sailscope: loading {config.model} …", file=sys.stderr)
            manager.load(config.model, config.device, config.dtype)
        except SailScopeError as exc:  # keep serving: the Model tab can load another one
            manager.error = str(exc)
            print(f"sailscope: could not load {config.model}: {exc} (choose a model in the Model tab)", file=sys.stderr)
    from sailscope.ui.app import AppContext

    demo = build_ui(context=AppContext(config=config, models=manager), reference_dir=args.reference_dir,
                    reference_tau=args.reference_tau)
    print(f"sailscope: serving on http://{args.host}:{args.port}", file=sys.stderr)
    launch(demo, config, host=args.host, port=args.port, share=args.share)
    return 0
