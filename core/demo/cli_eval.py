"""``sailscope eval-demo``: the demo model card's table (copy rate, attribute accuracy, detection)."""
from __future__ import annotations

import argparse

from .evaluate import add_arguments as _add_arguments
from .evaluate import run as _run

HELP = "evaluate the embedded demo model: copy distance/rate, attribute accuracy, step-1 detection AUC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return _run(args)
