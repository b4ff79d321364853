"""Writing results so they are never lost: atomic files, PNG infotext in A1111's format, JSON reports."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

def _atomic_write(path: str | os.PathLike, write: Any, mode: str = "wb") -> Path:
    """Write through a temporary file in the same folder, then rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    data = text.encode("utf-8")
    return _atomic_write(path, lambda f: f.write(data))


def write_csv_atomic(path: str | os.PathLike, header: list[str], rows: list[list]) -> Path:
    """A CSV file (header row, then ``rows``), atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, tensors/arrays -> lists, so every report is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    data = json.dumps(json_safe(obj), indent=2, allow_nan=False).encode()
    return _atomic_write(path, lambda f: f.write(data))


def save_png_atomic(image: Any, path: str | os.PathLike, infotext: str | None = None) -> Path:
    """Save a PIL image as PNG with the infotext in the ``parameters`` text chunk, atomically."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    if infotext:
        meta.add_text("parameters", infotext)
    return _atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=meta))


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line and fsync (a streamed audit survives interruption line by line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(json_safe(obj), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Lines of a JSONL file; a torn last line (interrupted write) is ignored."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
