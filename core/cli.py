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


def main(argv: Sequence[str] | None = None) -> int:
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
