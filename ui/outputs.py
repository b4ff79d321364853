"""Where the app saves finished images and reports (file naming only; writing is ``core.outputs``).

Files go to ``<outputs>/<YYYY-MM-DD>/`` as ``<HHMMSS>-<id>-<seed>-<run>.png`` (one per run: ``original``,
``sail``) with A1111-style infotext in the PNG ``parameters`` chunk, and ``<HHMMSS>-<id>-<seed>-report.json``
for the job. Writes are atomic (``core.outputs``); the random id keeps concurrent sessions apart.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from sailscope.core.io.files import save_png_atomic, write_json_atomic
from sailscope.core.io.infotext import format_infotext


def new_stem(outputs: str | os.PathLike, seed: int) -> Path:
    """``<outputs>/<date>/<time>-<id>-<seed>``; files add ``-<run>.png`` / ``-report.json``."""
    now = time.localtime()
    folder = Path(outputs) / time.strftime("%Y-%m-%d", now)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{time.strftime('%H%M%S', now)}-{uuid.uuid4().hex[:6]}-{seed}"


def fmt(value: Any) -> Any:
    """Numbers with 4 significant digits, one-element lists as their element (infotext values)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, float):
        return f"{value:.4g}"
    return value


def infotext(settings: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
    """A1111 infotext for ``GenerationSettings.to_dict()`` (plus ``model``) and our extra keys."""
    return format_infotext(settings, {k: fmt(v) for k, v in (extra or {}).items() if v is not None})


def save_image(stem: Path, run: str, image: Any, text: str) -> Path:
    """``<stem>-<run>.png`` with the infotext in the ``parameters`` text chunk."""
    return save_png_atomic(image, stem.parent / f"{stem.name}-{run}.png", text)


def save_report(stem: Path, report: Mapping[str, Any]) -> Path:
    """``<stem>-report.json`` (NaN/inf written as null)."""
    return write_json_atomic(stem.parent / f"{stem.name}-report.json", report)


def read_infotext(path: str | os.PathLike) -> str | None:
    """The ``parameters`` chunk of a PNG (what A1111's PNG Info reads)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.info.get("parameters")
