"""``sailscope`` command line: one sub-command per module, loaded lazily.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``; it only parses arguments and calls
the engine. Engine modules (torch, gradio) are imported inside the functions that run the command, on purpose:
``--help`` and argument errors answer without loading them. Errors derived from
:class:`~sailscope.core.errors.SailScopeError` (and argument errors) print one line and exit non-zero; ``--debug``
shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from sailscope.cli.options import check_model_arguments

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("sailscope.cli.generate", "sample an image with per-step sharpness records (and SAIL)"),
    "detect": ("sailscope.cli.detect", "score prompts for memorization (streamed, resumable JSON lines)"),
    "audit": ("sailscope.cli.audit", "score a prompt list on one or many processes (accelerate), ROC report"),
    "spectrum": ("sailscope.cli.spectrum", "eigenvalues of the score Jacobian at a sampling step"),
    "calibrate": ("sailscope.cli.calibrate", "calibrate the SAIL/detection threshold of a model"),
    "serve": ("sailscope.cli.serve", "start the web app"),
    "train-demo": ("sailscope.cli.train_demo", "train the embedded demo model"),
    "eval-demo": ("sailscope.cli.eval_demo", "evaluate the demo model (model card table)"),
    "demo-oracle": ("sailscope.cli.demo_oracle", "perfect-denoiser detection ceiling of a demo data design"),
    "spectra-study": ("sailscope.cli.spectra_study", "memorized vs held-out Hessian spectra (docs/spectra.md)"),
}


# Development commands (the demo model's training and card, the spectra study): they import torch with their module.
DEV_COMMANDS = ("train-demo", "eval-demo", "demo-oracle", "spectra-study")
# User commands: their parser is built without importing torch/diffusers/gradio (``sailscope CMD --help`` and argument
# errors answer at once).
LIGHT_COMMANDS = ("generate", "detect", "audit", "spectrum", "calibrate", "serve")

# a missing optional/required library -> the one line that says what to install
MISSING_HINTS = {
    "gradio": 'the app needs gradio: pip install "sailscope[app]"',
    "torch": "SAIL Scope needs torch: pip install torch (or python install.py, which picks one that fits this machine)",
    "diffusers": "SAIL Scope needs diffusers: pip install sailscope (or python install.py)",
    "transformers": "SAIL Scope needs transformers: pip install sailscope (or python install.py)",
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` after an option's help unless the help already names its default or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is False or action.default is argparse.SUPPRESS
                or "default" in text or not action.option_strings or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _chosen_command(argv: Sequence[str], commands: dict[str, tuple[str, str]]) -> str | None:
    """The sub-command named in ``argv`` (the first token that is not a top-level option), if any."""
    for token in argv:
        if token in commands:
            return token
        if not token.startswith("-"):
            return None  # an unknown command: argparse reports it
    return None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every command has: ``--debug`` and ``--threads``."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--threads", default=None, metavar="N",
                        help="CPU threads for torch (default: $SAILSCOPE_THREADS, else $OMP_NUM_THREADS when set, "
                             f"else {_default_threads_text()}; 0 = torch's own default)")


def _default_threads_text() -> str:
    from sailscope.core.threads import default_threads

    return str(default_threads())


def build_parser(available: dict[str, tuple[str, str]] | None = None, argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``sailscope`` parser. With ``argv``, only the sub-command it names is imported (the others are listed by
    name and help only), so parsing does not pay for modules it does not use; without it, every command is built."""
    commands = available or COMMANDS
    chosen = _chosen_command(argv, commands) if argv is not None else None
    parser = argparse.ArgumentParser(prog="sailscope", description="SAIL Scope: memorization lens and fix for diffusion models")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in commands.items():
        if argv is not None and name != chosen:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
                continue  # command not shipped in this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter)
        add_common_arguments(p)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def quiet_libraries() -> None:
    """Library chatter (progress bars, deprecation notes) would bury our one-line messages. Sets environment
    variables and warning filters only: diffusers reads them when (and if) a command imports it."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if "diffusers" in sys.modules:  # already imported (in-process use): tell it directly
        quiet_diffusers()


def quiet_diffusers() -> None:
    """The model libraries' own progress bars ("Loading pipeline components", "Loading weights") and log levels, for
    diffusers, transformers and huggingface_hub; called once a command runs (each may have been left chatty by
    whoever imported it first in this process)."""
    try:
        from diffusers.utils import logging as diffusers_logging
    except ImportError:  # the command reports a missing diffusers itself
        return
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


def missing_dependency_message(exc: ModuleNotFoundError) -> str | None:
    """One line naming what to install for a missing third-party library (None: not one we know)."""
    top = (exc.name or "").split(".")[0]
    return MISSING_HINTS.get(top)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_libraries()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser(argv=argv)
    except ModuleNotFoundError as exc:  # a command module needs a library that is not installed
        hint = missing_dependency_message(exc)
        if hint is None or debug:
            raise
        print(f"sailscope: error: {hint}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from sailscope.core.errors import SailScopeError, UsageError
    from sailscope.core.threads import configure_threads

    try:
        configure_threads(args.threads)
    except ValueError as exc:
        print(f"sailscope: error: {exc}", file=sys.stderr)
        return 2
    try:
        check_model_arguments(args)
        quiet_diffusers()
        return int(args._run(args) or 0)
    except UsageError as exc:  # an argument that parsed but names something this machine does not have
        if args.debug:
            raise
        print(f"sailscope: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        hint = missing_dependency_message(exc)
        if hint is None or args.debug:
            raise
        print(f"sailscope: error: {hint}", file=sys.stderr)
        return 1
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
