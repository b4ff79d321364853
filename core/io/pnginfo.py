"""A PNG's A1111 infotext read back as settings: what the app's *PNG Info* tab shows and pastes into Generate.

The ``Key: value`` pairs are parsed by :mod:`sailscope.core.io.infotext` (one registry of keys); this module adds
the two lines before them (prompt, ``Negative prompt:``) and A1111's own generation keys (``Steps``, ``Sampler``,
``CFG scale``, ``Seed``, ``Size``), which are not SAIL Scope keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from sailscope.core.choices import SCHEDULER_LABELS
from sailscope.core.io import infotext

_SAMPLERS = {label.lower(): name for name, label in SCHEDULER_LABELS.items()} | {n: n for n in SCHEDULER_LABELS}
MAX_PNG_BYTES = 64 * 1024 * 1024


@dataclass
class PngInfo:
    """An image's infotext, parsed. ``generation``: GenerationSettings keyword values it records (prompt, negative
    prompt, steps, scheduler, guidance, seed, width, height); ``sail``: SailSettings keyword values
    (:func:`sailscope.core.io.infotext.parse_settings`); ``params``: every ``Key: value`` pair as text;
    ``unknown_sampler``: a sampler the app does not have (not pasted)."""

    text: str
    generation: dict[str, Any] = field(default_factory=dict)
    sail: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    unknown_sampler: str | None = None

    @property
    def empty(self) -> bool:
        return not self.text.strip()


def read_png_text(path: str | os.PathLike) -> str:
    """The ``parameters`` text chunk of an image file ("" when it has none)."""
    if os.path.getsize(path) > MAX_PNG_BYTES:
        raise ValueError(f"the file is larger than {MAX_PNG_BYTES // 2**20} MB")
    with Image.open(path) as im:
        value = im.info.get("parameters") or ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _int(text: str) -> int | None:
    try:
        f = float(text)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def parse_infotext(text: str) -> PngInfo:
    """A1111 infotext (prompt line(s), optional ``Negative prompt:`` line(s), one ``Key: value`` line) -> settings.
    Missing or unparseable values are left out, never raised (a PNG from another tool must not break a paste)."""
    text = str(text or "")
    lines = text.strip("\n").split("\n")
    out = PngInfo(text=text)
    if not text.strip():
        return out
    last = lines[-1] if lines else ""
    params = infotext.parse_line(last) if ":" in last and ("Steps:" in last or "Seed:" in last or "SAIL" in last) else {}
    body = lines[:-1] if params else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            negative.append(line[len("Negative prompt:"):].strip())
        elif in_negative:
            negative.append(line)
        else:
            prompt.append(line)
    g: dict[str, Any] = {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip()}
    if (v := _int(params.get("Steps", ""))) is not None:
        g["steps"] = v
    if (v := _int(params.get("Seed", ""))) is not None:
        g["seed"] = v
    try:
        g["guidance"] = float(params["CFG scale"])
    except (KeyError, ValueError):
        pass
    if "Size" in params:
        w, _, h = params["Size"].lower().partition("x")
        if _int(w) and _int(h):
            g["width"], g["height"] = _int(w), _int(h)
    if "Sampler" in params:
        name = _SAMPLERS.get(params["Sampler"].strip().lower())
        if name:
            g["scheduler"] = name
        else:
            out.unknown_sampler = params["Sampler"]
    out.generation, out.params, out.sail = g, params, infotext.parse_settings(params)
    return out


def read_pnginfo(path: str | os.PathLike) -> PngInfo:
    """:func:`parse_infotext` of an image file's ``parameters`` chunk."""
    return parse_infotext(read_png_text(path))


__all__ = ["PngInfo", "read_png_text", "parse_infotext", "read_pnginfo", "MAX_PNG_BYTES"]
