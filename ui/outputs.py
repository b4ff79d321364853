"""What the app saves and where: file names and formats (the atomic writes are ``core.io.files``).

A Generate job writes to ``<outputs>/<YYYY-MM-DD>/``: ``<HHMMSS>-<id>-<seed>-<run>.png`` (one per run:
``original``, ``sail``) with A1111-style infotext in the PNG ``parameters`` chunk, and
``<HHMMSS>-<id>-<seed>-report.json`` for the job; the random id keeps concurrent sessions apart. An audit named
``<name>`` is a ``sailscope audit`` folder, ``<outputs>/audit/<name>/`` (``settings.json``, ``shards/``,
``scores.jsonl``, with labels ``report.json`` and ``report.html``: :mod:`sailscope.core.audit`), and exports
``<name>.csv`` and ``<name>.json`` next to it.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from sailscope.core.io.files import save_png_atomic, write_csv_atomic, write_json_atomic
from sailscope.core.io.infotext import format_infotext

AUDIT_CSV_COLUMNS = ["prompt", "score", "metric", "per_seed", "memorized", "seconds"]
# record fields after those (detector columns, the calibrated threshold and risk), in this order when present
AUDIT_CSV_EXTRA = ["wen", "sharpness", "anisotropy", "anisotropy_norm", "anisotropy_alignment", "threshold", "risk"]


# ----------------------------------------------------------------------------------------------
# Generate: images and report
# ----------------------------------------------------------------------------------------------
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


def save_outputs(view: Any, outputs: str | os.PathLike, model_info: Any,
                 threshold: tuple[float | None, str]) -> dict[str, str]:
    """Every finished image of a :class:`~sailscope.ui.jobs.JobView` not saved yet as PNG (infotext) plus the
    job's JSON report (rewritten); records the paths in ``view.files`` and returns them. Called again as more
    runs finish (the original is saved before SAIL's run is sampled), it keeps the job's file stem."""
    stem = Path(view.files["stem"]) if view.files.get("stem") else new_stem(outputs, view.settings.seed)
    view.files["stem"] = str(stem)
    settings = dict(view.settings.to_dict(), model=getattr(model_info, "name", None),
                    loras=getattr(model_info, "loras", ()))
    for run, res in view.results.items():
        if view.files.get(run):
            continue
        for i, image in enumerate(res.images):
            text = infotext(dict(settings, width=image.width, height=image.height, seed=view.settings.seed + i),
                            view.infotext_extra(run, model_info, threshold))
            view.files[f"{run}" + (f"_{i}" if i else "")] = str(save_image(stem, run if not i else f"{run}-{i}", image, text))
    view.files["report"] = str(stem.parent / f"{stem.name}-report.json")
    save_report(stem, view.report(model_info, threshold))
    return view.files


def read_infotext(path: str | os.PathLike) -> str | None:
    """The ``parameters`` chunk of a PNG (what A1111's PNG Info reads)."""
    with Image.open(path) as im:
        return im.info.get("parameters")


# ----------------------------------------------------------------------------------------------
# Audit: resume log and exports
# ----------------------------------------------------------------------------------------------
def audit_name(name: str | None) -> str:
    """A file-name-safe audit name (letters, digits, ``-``, ``_``; at most 64 characters; default ``audit``)."""
    clean = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "audit").strip())[:64].strip("-")
    return clean or "audit"


def audit_base(outputs: str | os.PathLike, name: str | None) -> Path:
    """``<outputs>/audit/<name>``: the exports add ``.csv`` and ``.json``; the audit folder is
    :func:`audit_report_folder`."""
    return Path(outputs) / "audit" / audit_name(name)


def audit_report_folder(base: Path) -> Path:
    """The ``sailscope audit`` folder of an audit (``<outputs>/audit/<name>/``): its records and its report."""
    return base.parent / base.name


def save_audit_exports(base: Path, rows: Sequence[Mapping[str, Any]], threshold: float | None,
                       threshold_source: str) -> list[str]:
    """``<base>.csv`` (one row per prompt: :data:`AUDIT_CSV_COLUMNS`, then the detector columns and threshold/risk
    the records have) and ``<base>.json`` (the rows and the threshold); returns both paths."""
    extra = [k for k in AUDIT_CSV_EXTRA if any(k in r for r in rows)]
    extra += sorted({k for r in rows for k, v in r.items() if k not in AUDIT_CSV_COLUMNS and k not in extra
                     and isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("first_steps",)})
    csv_path = write_csv_atomic(base.with_suffix(".csv"), AUDIT_CSV_COLUMNS + extra,
                                [[r["prompt"], r["score"], r["metric"], json.dumps(r.get("per_seed")), r.get("memorized"),
                                  r.get("seconds"), *[r.get(k) for k in extra]] for r in rows])
    json_path = write_json_atomic(base.with_suffix(".json"),
                                  {"threshold": threshold, "threshold_source": threshold_source, "rows": list(rows)})
    return [str(csv_path), str(json_path)]
