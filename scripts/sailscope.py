"""AUTOMATIC1111 / Forge entry point of the SAIL Scope extension (thin shim).

A1111 loads every ``scripts/*.py`` of an extension with the extension folder first on ``sys.path``. This
shim registers that folder as the package ``sailscope`` by path (whatever the folder is called) and never
puts the package's own ``core``/``ui``/``extension`` folders onto ``sys.path``, so other extensions'
modules with those names are neither shadowed nor picked up. A1111 registers the ``Script`` subclass
found in this module's namespace; the callbacks are registered again on every script reload because
A1111 clears them before reloading.
"""
import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_package():
    module = sys.modules.get("sailscope")
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(
        "sailscope", os.path.join(_ROOT, "__init__.py"), submodule_search_locations=[_ROOT]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["sailscope"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["sailscope"]
        raise
    return module


_load_package()

from sailscope.extension.a1111 import SailScopeScript, register_callbacks  # noqa: E402

register_callbacks()

__all__ = ["SailScopeScript"]
