"""SAIL Scope: a memorization lens (Hessian sharpness) and fix (SAIL) for text-to-image diffusion.

This file is also the ComfyUI entry point, so it must stay cheap to import: no torch, no models.
ComfyUI imports the folder under its own name (e.g. ``ComfyUI-SAILScope``); we register the same folder
as the package ``sailscope`` so that every internal import reads ``sailscope.core...`` in every host,
and never put top-level ``core``/``ui``/``extension`` modules into ``sys.modules``.
"""
from __future__ import annotations

import importlib.util
import os
import sys

__version__ = "0.1.0"

_ROOT = os.path.dirname(os.path.abspath(__file__))


def _ensure_sailscope_alias() -> None:
    """Make ``import sailscope`` resolve to this folder, whatever name the host loaded it under."""
    if __name__ == "sailscope" or "sailscope" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "sailscope", os.path.join(_ROOT, "__init__.py"), submodule_search_locations=[_ROOT]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["sailscope"] = module
    spec.loader.exec_module(module)


_ensure_sailscope_alias()

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
try:  # ComfyUI node registry; the node module itself imports torch lazily.
    from sailscope.extension.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
except ImportError:  # the ComfyUI adapter has not landed yet, or a dependency is missing
    pass

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
