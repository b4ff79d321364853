"""Diagnostic images for host galleries (A1111/Forge gallery, ComfyUI IMAGE): Pillow only.

Hosts show images, not plotly figures, and neither ships matplotlib reliably; these small renderers draw
the per-step Wen curves, the step-1 eigen-spectrum and side-by-side comparisons. Numbers come in from
``core``; nothing is computed here.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]
BG, FG, GRID = (255, 255, 255), (20, 20, 20), (225, 225, 225)


_ASCII = {"‖": "||", "Δ": "D", "²": "^2", "—": "-", "–": "-", "→": "->", "≤": "<=", "≥": ">=", "ε": "eps", "σ": "sigma",
          "α": "alpha", "δ": "delta", "λ": "lambda", "×": "x", "∅": "0"}


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy: tuple, text: str, fill: tuple) -> None:
    """Draw text with the default font, whose glyph set is ASCII: math symbols are spelled out."""
    for k, v in _ASCII.items():
        text = text.replace(k, v)
    draw.text(xy, text.encode("ascii", "replace").decode(), fill=fill, font=_font())


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_plot(
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
    size: tuple[int, int] = (512, 320),
    log_y: bool = False,
) -> Image.Image:
    """Curves sharing an x axis (1-based index); None/NaN points are gaps. Empty input -> a note."""
    w, h = size
    img = Image.new("RGB", size, BG)
    d = ImageDraw.Draw(img)
    _text(d, (8, 6), title, FG)
    left, right, top, bottom = 60, w - 12, 28, h - 40
    vals = [v for s in series.values() for v in _finite(s)]
    if log_y:
        vals = [math.log10(v) for v in vals if v > 0]
    if not vals:
        _text(d, (left, (top + bottom) // 2), "not available", (150, 0, 0))
        return img
    lo, hi = min(vals), max(vals)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    n = max((len(s) for s in series.values()), default=1)
    for t in _ticks(lo, hi):
        y = bottom - (t - lo) / (hi - lo) * (bottom - top)
        d.line([(left, y), (right, y)], fill=GRID)
        _text(d, (4, y - 5), _fmt(10**t if log_y else t), FG)
    d.rectangle([left, top, right, bottom], outline=FG)
    for i in range(1, n + 1, max(1, n // 6)):
        x = left + (i - 1) / max(1, n - 1) * (right - left)
        _text(d, (x - 4, bottom + 4), str(i), FG)
    _text(d, ((left + right) // 2 - 12, h - 18), xlabel, FG)
    if ylabel:
        _text(d, (left + 4, top + 2), ylabel, (90, 90, 90))
    for k, (label, ys) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        prev = None
        for i, v in enumerate(ys):
            ok = v is not None and math.isfinite(float(v)) and (not log_y or float(v) > 0)
            if not ok:
                prev = None
                continue
            yv = math.log10(float(v)) if log_y else float(v)
            pt = (left + i / max(1, n - 1) * (right - left), bottom - (yv - lo) / (hi - lo) * (bottom - top))
            if prev is not None:
                d.line([prev, pt], fill=color, width=2)
            else:
                d.ellipse([pt[0] - 2, pt[1] - 2, pt[0] + 2, pt[1] + 2], fill=color)
            prev = pt
        _text(d, (right - 150, top + 4 + 12 * k), f"— {label}", color)
    return img


def spectrum_plot(eigenvalues: Sequence[complex], *, title: str, size: tuple[int, int] = (512, 320)) -> Image.Image:
    """Real parts of eigenvalues, sorted, as stems (negative red, non-negative blue)."""
    w, h = size
    img = Image.new("RGB", size, BG)
    d = ImageDraw.Draw(img)
    _text(d, (8, 6), title, FG)
    re = sorted(float(complex(v).real) for v in eigenvalues)
    left, right, top, bottom = 60, w - 12, 28, h - 30
    if not re:
        _text(d, (left, (top + bottom) // 2), "not available", (150, 0, 0))
        return img
    lo, hi = min(re + [0.0]), max(re + [0.0])
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    y0 = bottom - (0 - lo) / (hi - lo) * (bottom - top)
    d.rectangle([left, top, right, bottom], outline=FG)
    d.line([(left, y0), (right, y0)], fill=(120, 120, 120))
    for t in _ticks(lo, hi):
        y = bottom - (t - lo) / (hi - lo) * (bottom - top)
        _text(d, (4, y - 5), _fmt(t), FG)
    for i, v in enumerate(re):
        x = left + (i + 0.5) / len(re) * (right - left)
        y = bottom - (v - lo) / (hi - lo) * (bottom - top)
        color = COLORS[1] if v < 0 else COLORS[0]
        d.line([(x, y0), (x, y)], fill=color, width=2)
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    n_neg = sum(v < 0 for v in re)
    _text(d, (left, h - 18), f"{len(re)} eigenvalues (real part), {n_neg} negative", FG)
    return img


def text_panel(lines: Sequence[str], *, size: tuple[int, int] = (512, 320), title: str = "SAIL Scope") -> Image.Image:
    """A plain panel of text lines (messages such as 'not available' get an image too)."""
    img = Image.new("RGB", size, BG)
    d = ImageDraw.Draw(img)
    _text(d, (8, 6), title, FG)
    y = 26
    for line in lines:
        for chunk in [line[i : i + 80] for i in range(0, max(1, len(line)), 80)]:
            _text(d, (8, y), chunk, FG)
            y += 13
    return img


def side_by_side(images: Sequence[Image.Image], labels: Sequence[str] = (), *, gap: int = 8) -> Image.Image:
    """Images in one row with a label strip above each (heights matched by scaling)."""
    if not images:
        return text_panel(["nothing to compare"])
    height = max(im.height for im in images)
    scaled = [im if im.height == height else im.resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    strip = 16
    out = Image.new("RGB", (sum(im.width for im in scaled) + gap * (len(scaled) - 1), height + strip), BG)
    d = ImageDraw.Draw(out)
    x = 0
    for i, im in enumerate(scaled):
        out.paste(im.convert("RGB"), (x, strip))
        if i < len(labels):
            _text(d, (x + 4, 2), str(labels[i]), FG)
        x += im.width + gap
    return out


def stack(images: Sequence[Image.Image], *, gap: int = 4) -> Image.Image:
    """Images in one column (widths padded)."""
    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images) + gap * (len(images) - 1)), BG)
    y = 0
    for im in images:
        out.paste(im.convert("RGB"), (0, y))
        y += im.height + gap
    return out
