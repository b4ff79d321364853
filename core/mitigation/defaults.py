"""Per-model SAIL defaults: settings a model folder ships next to its calibration (``sail_defaults.json``).

:class:`~sailscope.core.mitigation.settings.SailSettings`' own defaults are global (every model). A model whose
measured best settings differ ships them in its folder, with how they were chosen::

    {"settings": {"candidates": 4}, "chosen_by": "...", "command": "...", "measured": {...}}

:func:`model_sail_defaults` reads them (only ``SailSettings`` fields; anything else is ignored) and
:func:`sail_settings_for` builds ``SailSettings`` from them plus explicit values. The app's SAIL panel starts at
them (``ui.forms.GenerateForm.for_model``); the demo's bench uses them for its default stage. The command line keeps
the global defaults unless told otherwise (``--sail-candidates`` etc.).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sailscope.core.errors import UserInputError
from sailscope.core.mitigation.settings import SailSettings

DEFAULTS_FILE = "sail_defaults.json"


def _folder(model: Any) -> Path | None:
    if model is None:
        return None
    if isinstance(model, (str, Path)):
        p = Path(model)
        return p if p.is_dir() else None
    info = getattr(model, "sailscope_info", None)
    path = getattr(info, "path", None)
    if path and Path(path).is_dir():
        return Path(path)
    name = getattr(getattr(model, "config", None), "_name_or_path", None)  # a pipeline loaded by diffusers
    return Path(name) if name and Path(name).is_dir() else None


def model_sail_defaults(model: Any) -> tuple[dict, str | None]:
    """``({SailSettings field: value}, source)`` from a model folder's ``sail_defaults.json`` (a folder path or a
    loaded pipeline); ``({}, None)`` when it ships none. A malformed file is an error that names it."""
    folder = _folder(model)
    path = folder / DEFAULTS_FILE if folder is not None else None
    if path is None or not path.is_file():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        settings = dict(data.get("settings") or {})
    except (OSError, ValueError, AttributeError) as exc:
        raise UserInputError(f"cannot read the model's SAIL defaults {path.name}: {exc}") from None
    known = {k: v for k, v in settings.items() if k in SailSettings.__dataclass_fields__}
    SailSettings(**known)  # validate now, with the model's file named in the error
    return known, f"the model's {DEFAULTS_FILE}" + (f" ({data['chosen_by']})" if data.get("chosen_by") else "")


def sail_settings_for(model: Any, **explicit: Any) -> SailSettings:
    """``SailSettings`` at the model's shipped defaults, then ``explicit`` values."""
    defaults, _ = model_sail_defaults(model)
    return SailSettings(**(defaults | explicit))


__all__ = ["DEFAULTS_FILE", "model_sail_defaults", "sail_settings_for"]
