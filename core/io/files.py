"""Writing results so they are never lost: atomic files, PNG infotext in A1111's format, JSON reports."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import warnings
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


def jsonl_line(obj: Any) -> str:
    """One JSON line (with its newline) as every JSONL file here is written: NaN/inf -> null, UTF-8 kept as is."""
    return json.dumps(json_safe(obj), allow_nan=False, ensure_ascii=False) + "\n"


def cut_torn_tail(f: Any) -> None:
    """Truncate an open binary file after its last newline (a record torn by a kill), so the next appended record
    starts on a line of its own; a file that ends with a newline (or is empty) is left as it is."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    pos, keep = end, 0
    while pos > 0:
        start = max(0, pos - 65536)
        f.seek(start)
        chunk = f.read(pos - start)
        k = chunk.rfind(b"\n")
        if k >= 0:
            keep = start + k + 1
            break
        pos = start
    f.truncate(keep)
    f.flush()
    os.fsync(f.fileno())


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line and fsync (a streamed audit survives interruption line by line). A torn last line left
    by a killed writer is cut off first, so it never swallows the new record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = jsonl_line(obj).encode("utf-8")
    with open(path, "ab+") as f:  # append mode: every write goes to the end
        cut_torn_tail(f)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, *, warn: bool = False) -> list[dict]:
    """The JSON objects of a JSONL file, in order. Only newline-terminated lines count: a torn last line (a writer
    killed mid-write) is ignored; a complete line that is not a JSON object is skipped (with a warning if
    ``warn``)."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for i, line in enumerate(p.read_bytes().split(b"\n")[:-1]):  # after the last newline: torn (or empty)
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if not isinstance(row, dict):
            if warn:
                warnings.warn(f"{p.name} line {i + 1} is not a JSON object; skipped", stacklevel=2)
            continue
        out.append(row)
    return out
