"""Argument groups and parsers shared by several commands (``--model`` and its loading options, ``--size``).

Engine modules (torch, gradio) are imported inside the functions that run the command, on purpose: ``--help`` and
argument errors answer without loading them.
"""
from __future__ import annotations

import argparse

from sailscope.core.errors import UserInputError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and how to load it (device, dtype, config for single files, pickle opt-in)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="demo", help="'demo', a diffusers folder, a .safetensors file, or a hub id")
    g.add_argument("--config", default=None, help="local diffusers folder with the config of a single-file model")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    g.add_argument("--dtype", default="auto", type=str.lower, choices=DTYPE_CHOICES,
                   help="weights' dtype; auto = fp16 on CUDA, else fp32 (metrics always run in fp32)")
    g.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.pt checkpoints (they can run code)")
    g.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="apply a LoRA (.safetensors, diffusers or A1111/kohya format) at SCALE (default 1); repeatable")


DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16")


def check_model_arguments(args: argparse.Namespace) -> None:
    """``--device``/``--dtype`` against this machine (imports torch), before anything is loaded or computed.
    Raises :class:`~sailscope.core.errors.UsageError` with one line that lists what is available."""
    if getattr(args, "device", None) is None and getattr(args, "dtype", None) in (None, "auto"):
        return
    from sailscope.core.models import check_device

    check_device(getattr(args, "device", None), getattr(args, "dtype", None))


def load_model_from_args(args: argparse.Namespace):
    from sailscope.core.models import LoraSpec, load_pipeline

    return load_pipeline(args.model, device=args.device, dtype=args.dtype, config=args.config,
                         allow_pickle=args.allow_pickle, loras=[LoraSpec.parse(x) for x in getattr(args, "lora", [])])


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """``"WxH"`` -> (width, height); errors name the argument."""
    if text is None:
        return None, None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserInputError(f"--size must look like 512x512, got {text!r}") from None
    return w, h
