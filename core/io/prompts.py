"""Prompt lists, one reader for every command and view.

A prompt file is ``.txt`` (one prompt per line), ``.csv`` (``prompt[,memorized]``, optional header row) or
``.jsonl`` (one object per line with ``"prompt"`` or ``"caption"`` and an optional ``"memorized"`` flag). Blank
lines are skipped, surrounding spaces stripped, duplicates kept once (first occurrence), order preserved.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import NamedTuple

from sailscope.core.errors import UserInputError

SUFFIXES = (".txt", ".csv", ".jsonl")
TRUE_WORDS = ("1", "true", "yes", "memorized")


class PromptEntry(NamedTuple):
    prompt: str
    memorized: bool | None  # None: not labelled


def _label(value: object) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip().lower() in TRUE_WORDS
    return bool(value)


def parse_prompts(text: str, suffix: str = ".txt", *, source: str = "the prompt file") -> list[PromptEntry]:
    """Entries of a prompt file's text; ``suffix`` picks the format. Errors name ``source`` and the line."""
    suffix = suffix.lower()
    entries: list[PromptEntry] = []
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise UserInputError(f"line {n} of {source} is not valid JSON") from None
            prompt = obj if isinstance(obj, str) else (obj.get("prompt") or obj.get("caption")) if isinstance(obj, dict) else None
            if not isinstance(prompt, str):
                raise UserInputError(f'line {n} of {source} has no "prompt" (or "caption") string')
            entries.append(PromptEntry(prompt.strip(), _label(obj.get("memorized") if isinstance(obj, dict) else None)))
    elif suffix == ".csv":
        for n, row in enumerate(csv.reader(io.StringIO(text))):
            if not row or not row[0].strip():
                continue
            if n == 0 and row[0].strip().lower() == "prompt":
                continue
            entries.append(PromptEntry(row[0].strip(), _label(row[1]) if len(row) > 1 else None))
    else:
        entries = [PromptEntry(line.strip(), None) for line in text.splitlines()]
    seen: set[str] = set()
    out = []
    for entry in entries:
        if entry.prompt and entry.prompt not in seen:
            seen.add(entry.prompt)
            out.append(entry)
    return out


def read_prompt_file(path: str | Path, *, what: str = "--prompts", max_bytes: int | None = None) -> list[PromptEntry]:
    """Entries of a prompt file on disk (see :func:`parse_prompts`); ``what`` names it in errors."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{what} file not found: {path}")
    if max_bytes is not None and p.stat().st_size > max_bytes:
        raise UserInputError(f"{what} is {p.stat().st_size / 1024:.0f} KB; the limit is {max_bytes / 1024:.0f} KB")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"{what} is not UTF-8 text (.txt, .csv or .jsonl)") from None
    return parse_prompts(text, p.suffix, source=what)


def prompts_of(entries: list[PromptEntry]) -> list[str]:
    return [e.prompt for e in entries]


def read_memorized(folder: str | Path) -> list[dict]:
    """Rows of a model folder's ``memorized.jsonl`` (``caption``, ``kind``, ``image``, ...), in file order."""
    path = Path(folder) / "memorized.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_heldout(folder: str | Path) -> list[str]:
    """A model folder's ``heldout_prompts.txt`` (prompts the model never saw)."""
    return prompts_of(read_prompt_file(Path(folder) / "heldout_prompts.txt", what="heldout_prompts.txt"))
