"""``sailscope train-demo``: train (or resume) the embedded demo model and export it."""
from __future__ import annotations

import argparse

from .train import add_arguments as _add_arguments
from .train import run as _run

HELP = "train (or resume) the embedded demo model and export it to assets/models/demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return _run(args)
