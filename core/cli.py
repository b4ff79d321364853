"""``sailscope`` command line: one sub-command per module, loaded lazily.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Errors derived from
:class:`~sailscope.core.errors.SailScopeError` (and argument errors) print one line and exit non-zero;
``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("sailscope.core.cli_generate", "sample an image with per-step sharpness records (and SAIL)"),
    "detect": ("sailscope.core.cli_detect", "score prompts for memorization (streamed, resumable JSON lines)"),
    "spectrum": ("sailscope.core.cli_spectrum", "eigenvalues of the score Jacobian at a sampling step"),
    "calibrate": ("sailscope.core.cli_calibrate", "calibrate the SAIL/detection threshold of a model"),
    "serve": ("sailscope.ui.cli_serve", "start the web app"),
    "train-demo": ("sailscope.core.demo.cli_train", "train the embedded demo model"),
    "eval-demo": ("sailscope.core.demo.cli_eval", "evaluate the demo model (model card table)"),
}


def build_parser(available: dict[str, tuple[str, str]] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sailscope", description="SAIL Scope: memorization lens and fix for diffusion models")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in (available or COMMANDS).items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
                continue  # command not shipped in this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def quiet_libraries() -> None:
    """Library chatter (progress bars, deprecation notes) would bury our one-line messages."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    quiet_libraries()
    from sailscope.core.errors import SailScopeError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (SailScopeError, ValueError, FileNotFoundError, MemoryError, KeyboardInterrupt) as exc:
        if args.debug:
            raise
        if isinstance(exc, KeyboardInterrupt):
            print("sailscope: interrupted; finished outputs were kept", file=sys.stderr)
            return 130
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, MemoryError) or "out of memory" in msg.lower():
            msg = f"out of memory: {msg} (try a smaller size, --hvp fd, or fewer images)"
        print(f"sailscope: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())


# ----------------------------------------------------------------------------------------------
# Shared argument groups for command modules
# ----------------------------------------------------------------------------------------------
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and how to load it (device, dtype, config for single files, pickle opt-in)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="demo", help="'demo', a diffusers folder, a .safetensors file, or a hub id")
    g.add_argument("--config", default=None, help="local diffusers folder with the config of a single-file model")
    g.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    g.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16 (metrics always run in fp32)")
    g.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.pt checkpoints (they can run code)")


def load_model_from_args(args: argparse.Namespace):
    from sailscope.core.models import load_pipeline

    return load_pipeline(args.model, device=args.device, dtype=args.dtype, config=args.config, allow_pickle=args.allow_pickle)


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """``"WxH"`` -> (width, height); errors name the argument."""
    from sailscope.core.errors import UserInputError

    if text is None:
        return None, None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserInputError(f"--size must look like 512x512, got {text!r}") from None
    return w, h
