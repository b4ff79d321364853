"""Plotly figures built from core records. Formatting only: every number plotted comes from ``core``.

Each function takes plain data (``StepRecord``-like objects or their ``to_dict()``, ``Spectrum.to_dict()``
summaries, score rows) and returns a ``plotly.graph_objects.Figure``; the same figures serve the app, the
A1111 tab and the saved reports.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import plotly.graph_objects as go
import plotly.io as pio

RUN_STYLE = {  # run name -> (label, colour, dash)
    "original": ("original", "#5b6b82", "solid"),
    "sail": ("SAIL", "#e4572e", "solid"),
}
WHICH_STYLE = {"cond": ("conditional", "#2e86de"), "uncond": ("unconditional", "#8e8e93"), "delta": ("difference", "#e4572e")}
# resolved once: figures built without validation must carry the template itself, not its name. Transparent
# backgrounds and grey grid lines read on the light and the dark theme; in the dark theme the stylesheet turns the
# text light (assets/css/app.css, ".dark .js-plotly-plot").
TEMPLATE = pio.templates["plotly_white"].to_plotly_json()
GRID = "rgba(128,128,128,0.25)"
for _axis in ("xaxis", "yaxis"):
    TEMPLATE["layout"][_axis].update(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID)
LAYOUT = dict(
    template=TEMPLATE, margin=dict(l=50, r=20, t=40, b=40), height=360, paper_bgcolor="rgba(0,0,0,0)",
    plot_bgcolor="rgba(0,0,0,0)", legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0,
                                              bgcolor="rgba(0,0,0,0)"), font=dict(size=12),
)


def sig(value: Any, digits: int = 4) -> Any:
    """A number rounded to ``digits`` significant digits for tables (None and non-numbers unchanged)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return value
    return float(f"{value:.{digits}g}")


def log_axis(values: Iterable[float]) -> dict:
    """A log axis labelled at powers of ten only (no "5, 2" minor-tick labels) when the data span a decade or more;
    within one decade, 2-3 plain labels."""
    vals = [v for v in values if v and v > 0]
    span = math.log10(max(vals) / min(vals)) if vals else 0.0
    if span >= 1.0:
        return dict(type="log", dtick=1, exponentformat="power", minor=dict(showgrid=False))
    return dict(type="log", nticks=3, tickformat=".2g")


def _as_dict(record: Any) -> dict:
    return record.to_dict() if hasattr(record, "to_dict") else dict(record)


def _figure(traces: list[dict], layout: dict) -> go.Figure:
    """A figure from plain dicts without plotly's validation (10-100× faster; figures are rebuilt live)."""
    return go.Figure(dict(data=traces, layout=dict(LAYOUT, **layout)), _validate=False)


def _note(text: str, y: float = 0.5) -> dict:
    return dict(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=y, font=dict(color="#888"))


def _empty(title: str, message: str) -> go.Figure:
    return _figure([], dict(title=dict(text=title), annotations=[_note(message)], xaxis=dict(visible=False),
                            yaxis=dict(visible=False)))


def _hline(y: float, label: str, xref: str = "paper", yref: str = "y") -> tuple[dict, dict]:
    """A dashed horizontal threshold line (shape) and its label (annotation)."""
    shape = dict(type="line", xref=xref, yref=yref, x0=0, x1=1, y0=y, y1=y, line=dict(color="#c0392b", dash="dash", width=1))
    note = dict(text=label, showarrow=False, xref="paper", yref=yref, x=1, y=y, xanchor="right", yanchor="bottom",
                font=dict(color="#c0392b", size=11))
    return shape, note


def _positive(values: Iterable[float]) -> bool:
    vals = list(values)
    return bool(vals) and all(v > 0 for v in vals)


def metrics_figure(
    runs: Mapping[str, Sequence[Any]], total_steps: int | None = None, threshold: float | None = None,
    threshold_label: str = "threshold", image: int = 0,
) -> go.Figure:
    """Per-step Wen metric (top) and sharpness (bottom) for each run, the detection threshold drawn.

    ``runs`` maps a run name (``original``, ``sail``) to its step records so far (live: the figure is rebuilt
    as records arrive, so it is built from plain dicts without plotly's validation, ~100× faster).
    """
    traces: list[dict] = []
    sharp_all: list[float] = []
    for run, records in runs.items():
        label, colour, dash = RUN_STYLE.get(run, (run, None, "solid"))
        steps, wen, s_steps, s_vals = [], [], [], []
        for r in records:
            step = r.step if hasattr(r, "step") else r["step"]
            w = r.wen if hasattr(r, "wen") else r.get("wen")
            sh = r.sharpness if hasattr(r, "sharpness") else r.get("sharpness")
            steps.append(step)
            wen.append(w[image] if w else None)
            if sh:
                s_steps.append(step)
                s_vals.append(sh[image])
        traces.append(dict(type="scatter", x=steps, y=wen, mode="lines+markers", name=f"Wen · {label}",
                           line=dict(color=colour, dash=dash), marker=dict(size=4), xaxis="x", yaxis="y"))
        if s_vals:
            sharp_all += s_vals
            traces.append(dict(type="scatter", x=s_steps, y=s_vals, mode="lines+markers", name=f"sharpness · {label}",
                               line=dict(color=colour, dash="dot"), marker=dict(size=8, symbol="diamond"),
                               xaxis="x", yaxis="y2"))
    x_range = [0.5, total_steps + 0.5] if total_steps else None
    layout = dict(height=420,
                  xaxis=dict(anchor="y2", range=x_range, title=dict(text="step")),
                  yaxis=dict(domain=[0.56, 1.0], title=dict(text="guidance strength (Wen)")),
                  yaxis2=dict(domain=[0.0, 0.44], title=dict(text="sharpness (log)"),
                              **(log_axis(sharp_all + ([threshold] if threshold else []))
                                 if _positive(sharp_all + ([threshold] if threshold else [])) else {})))
    if threshold is not None:
        traces.append(dict(type="scatter", x=[0.5, (total_steps or 1) + 0.5], y=[threshold, threshold], mode="lines",
                           name=f"{threshold_label} {threshold:.4g}", line=dict(color="#c0392b", dash="dash", width=1),
                           xaxis="x", yaxis="y2"))
    return _figure(traces, layout)


def spectrum_figure(spectra: Mapping[str, Mapping[str, Any]] | None, step: int | None = None) -> go.Figure:
    """Eigenvalues (real parts, in the order core returns them) or SLQ densities of ``H_cond``, ``H_uncond``
    and ``H_Δ`` at one step. ``spectra`` maps ``which`` to ``Spectrum.to_dict()``."""
    title = "eigen-spectrum" + (f" at step {step}" if step else "")
    if not spectra:
        return _empty(title, "no spectrum yet: choose steps under “Spectrum” and generate")
    traces = []
    density = any("density" in s for s in spectra.values())
    for which, spec in spectra.items():
        label, colour = WHICH_STYLE.get(which, (which, None))
        if "error" in spec:
            continue
        if "density" in spec:
            d = spec["density"]
            traces.append(dict(type="scatter", x=d["grid"], y=d["values"], mode="lines", name=label, line=dict(color=colour)))
        else:
            re = spec.get("eigenvalues_real", [])
            conv = spec.get("converged", [True] * len(re))
            traces.append(dict(
                type="scatter", x=list(range(1, len(re) + 1)), y=re, mode="lines+markers", name=label,
                line=dict(color=colour), marker=dict(symbol=["circle" if c else "circle-open" for c in conv], size=7),
                hovertemplate="λ%{x} = %{y:.4g}<extra>" + label + "</extra>",
            ))
    if density:
        axes = dict(xaxis=dict(title=dict(text="eigenvalue λ")), yaxis=dict(title=dict(text="density")))
    else:
        axes = dict(xaxis=dict(title=dict(text="index (by |λ|; open marker = not converged)")),
                    yaxis=dict(title=dict(text="Re λ")))
    errors = [f"{w}: {s['error']}" for w, s in spectra.items() if "error" in s]
    notes = [_note("<br>".join(errors), 0.95)] if errors else []
    return _figure(traces, dict(title=dict(text=title), annotations=notes, **axes))


def sail_loss_figure(trace: Sequence[Mapping[str, Any]] | None, threshold: float | None = None,
                     trigger: float | None = None) -> go.Figure:
    """SAIL objective per Adam step and candidate (rows ``{"step", "candidate", "loss"}``); the threshold (the
    target) and, when it differs, the trigger (a start at or below it is kept) drawn."""
    if not trace:
        return _empty("SAIL loss", "SAIL off, or no trace yet")
    by_candidate: dict[Any, list] = {}
    for row in trace:
        by_candidate.setdefault(row.get("candidate", 0), []).append(row)
    traces = [dict(type="scatter", x=[r["step"] for r in rows], y=[r["loss"] for r in rows], mode="lines+markers",
                   name=f"candidate {cand}" + (f" (round {rows[0]['round'] + 1})" if rows[0].get("round") else ""),
                   marker=dict(size=5))
              for cand, rows in sorted(by_candidate.items(), key=lambda kv: str(kv[0]))]
    shapes, notes = [], []
    for level, name in ((threshold, "threshold"), (trigger, "trigger")):
        if level is not None and not (name == "trigger" and level == threshold):
            shape, note = _hline(level, f"{name} {level:.4g}")
            shapes.append(shape)
            notes.append(note)
    return _figure(traces, dict(title=dict(text="SAIL loss"), shapes=shapes, annotations=notes,
                                xaxis=dict(title=dict(text="Adam step")), yaxis=dict(title=dict(text="objective"))))


def compare_figure(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Several prompts/seeds: their ``H_Δ`` spectra (left) and step-1 sharpness (right) on one figure.

    ``rows``: ``{"label", "sharpness", "spectrum": Spectrum.to_dict() | None}``.
    """
    if not rows:
        return _empty("compare prompts", "enter prompts (one per line) and press Compare")
    traces = []
    for r in rows:
        spec = r.get("spectrum") or {}
        if "density" in spec:
            traces.append(dict(type="scatter", x=spec["density"]["grid"], y=spec["density"]["values"], mode="lines",
                               name=r["label"], legendgroup=r["label"]))
        elif spec.get("eigenvalues_real"):
            re = spec["eigenvalues_real"]
            traces.append(dict(type="scatter", x=list(range(1, len(re) + 1)), y=re, mode="lines+markers",
                               name=r["label"], legendgroup=r["label"]))
    traces.append(dict(type="bar", x=[r["label"] for r in rows], y=[r.get("sharpness") for r in rows], name="sharpness",
                       showlegend=False, marker=dict(color="#e4572e"), xaxis="x2", yaxis="y2"))
    log = _positive(r.get("sharpness") or 0 for r in rows)
    layout = dict(height=420,
                  xaxis=dict(domain=[0.0, 0.55], title=dict(text="index (by |λ|)")),
                  yaxis=dict(title=dict(text="Re λ of H_Δ at step 1")),
                  xaxis2=dict(domain=[0.65, 1.0], anchor="y2"),
                  yaxis2=dict(anchor="x2", title=dict(text="step-1 sharpness"),
                              **(log_axis(r.get("sharpness") for r in rows) if log else {})))
    return _figure(traces, layout)


def histogram_figure(scores: Sequence[float], memorized: Sequence[bool | None] | None = None,
                     threshold: float | None = None) -> go.Figure:
    """Histogram of audit scores, split by the user's "known memorized" marks when given."""
    if not scores:
        return _empty("score histogram", "no scores yet")
    marks = list(memorized) if memorized else [None] * len(scores)
    traces = []
    for name, flag in {"known memorized": True, "not marked": None, "known clean": False}.items():
        vals = [s for s, m in zip(scores, marks) if m is flag and s is not None]
        if vals:
            traces.append(dict(type="histogram", x=vals, name=name, opacity=0.7, nbinsx=30))
    shapes, notes = [], []
    if threshold is not None:
        shapes = [dict(type="line", xref="x", yref="paper", x0=threshold, x1=threshold, y0=0, y1=1,
                       line=dict(color="#c0392b", dash="dash", width=1))]
        notes = [dict(text="threshold", showarrow=False, xref="x", yref="paper", x=threshold, y=1, yanchor="bottom")]
    return _figure(traces, dict(barmode="overlay", title=dict(text="scores"), shapes=shapes, annotations=notes,
                                xaxis=dict(title=dict(text="score"))))


def roc_figure(fpr: Sequence[float] | None, tpr: Sequence[float] | None, auc: float | None, note: str = "") -> go.Figure:
    """ROC curve from core's detection evaluation (``fpr``, ``tpr``, ``auc``)."""
    if not fpr:
        return _empty("ROC", note or "mark known memorized prompts to see the ROC curve")
    traces = [dict(type="scatter", x=list(fpr), y=list(tpr), mode="lines",
                   name=f"AUC = {auc:.3f}" if auc is not None else "ROC"),
              dict(type="scatter", x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"), showlegend=False)]
    return _figure(traces, dict(title=dict(text="ROC" + (f" (AUC {auc:.3f})" if auc is not None else "")),
                                xaxis=dict(title=dict(text="false positive rate"), range=[0, 1]),
                                yaxis=dict(title=dict(text="true positive rate"), range=[0, 1])))


AUDIT_LABEL_STYLE = {"memorized": ("memorized", "#e4572e"), "not_memorized": ("not memorized", "#29a3d1"),
                     "unlabeled": ("unlabelled", "#8c8c8c")}


def audit_roc_figure(report: Mapping[str, Any]) -> go.Figure:
    """ROC curves of every detector of a ``core.audit.build_report`` report, AUC in the legend and the title."""
    dets = report.get("detectors", {})
    curves = {name: d for name, d in dets.items() if d.get("roc")}
    if not curves:
        return _empty("ROC", "the report needs memorized and not-memorized prompts for an ROC curve")
    traces = [dict(type="scatter", x=list(d["roc"]["fpr"]), y=list(d["roc"]["tpr"]), mode="lines",
                   name=f"{name} (AUC {d['auc']:.3f})" if d.get("auc") is not None else name)
              for name, d in curves.items()]
    traces.append(dict(type="scatter", x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"),
                       showlegend=False, hoverinfo="skip"))
    best = ", ".join(f"{name} {d['auc']:.3f}" for name, d in curves.items() if d.get("auc") is not None)
    return _figure(traces, dict(title=dict(text=f"ROC (AUC: {best})"),
                                xaxis=dict(title=dict(text="false positive rate"), range=[0, 1]),
                                yaxis=dict(title=dict(text="true positive rate"), range=[0, 1])))


def audit_histogram_figure(report: Mapping[str, Any]) -> go.Figure:
    """Score histograms by label of every detector of a ``core.audit.build_report`` report (its bin edges and
    counts; one panel per detector, stacked)."""
    dets = report.get("detectors", {})
    if not dets:
        return _empty("scores by label", "no detector scores in the report")
    n = len(dets)
    gap = 0.08 / max(n - 1, 1) if n > 1 else 0.0
    height = (1.0 - gap * (n - 1)) / n
    traces, layout = [], dict(barmode="overlay", height=max(360, 170 * n + 60),
                              title=dict(text="scores by label"))
    for i, (name, d) in enumerate(dets.items()):
        h = d.get("histogram") or {}
        edges = [float(e) for e in h.get("edges", [])]
        if len(edges) < 2:
            continue
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        suffix = "" if i == 0 else str(i + 1)
        top = 1.0 - i * (height + gap)
        for group, (label, colour) in AUDIT_LABEL_STYLE.items():
            counts = h.get(group) or []
            if sum(c or 0 for c in counts):
                traces.append(dict(type="bar", x=centers, y=counts, width=widths, opacity=0.6, name=label,
                                   legendgroup=group, showlegend=group not in {t.get("legendgroup") for t in traces},
                                   marker=dict(color=colour), xaxis=f"x{suffix}", yaxis=f"y{suffix}"))
        layout[f"xaxis{suffix}"] = dict(anchor=f"y{suffix}", title=dict(text=name))
        layout[f"yaxis{suffix}"] = dict(anchor=f"x{suffix}", domain=[max(0.0, top - height), top],
                                        title=dict(text="prompts"))
    return _figure(traces, layout)
