"""What a finished run leaves on disk: its images with A1111 infotext (one PNG per image), next to a JSON report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sailscope.core.io import infotext
from sailscope.core.io.files import save_png_atomic
from sailscope.core.io.infotext import format_infotext


def save_images(result: Any, out: Path, model: str, extra: dict | None = None, tag: str = "",
                loras: Any = ()) -> list[str]:
    """``<out>/<tag><seed>-<i>.png`` per image of a ``GenerationResult``, with its settings, step-1 metrics and
    ``extra`` as infotext; returns the paths."""
    paths = []
    s = result.settings.to_dict()
    h, w = result.array.shape[1:3]
    s.update(model=model, width=w, height=h, loras=loras)
    for i, image in enumerate(result.images):
        rec = result.records[0] if result.records else None
        info = infotext.fields(wen=rec.wen[i] if rec else None, sharpness=rec.sharpness[i] if rec and rec.sharpness else None)
        info.update(extra or {})
        text = format_infotext({**s, "seed": result.settings.seed + i}, info)
        path = out / f"{tag}{result.settings.seed + i:08d}-{i}.png"
        save_png_atomic(image, path, text)
        paths.append(str(path))
    return paths
