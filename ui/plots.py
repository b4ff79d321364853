"""Plotly figures built from core records. Formatting only: every number plotted comes from ``core``.

Each function takes plain data (``StepRecord``-like objects or their ``to_dict()``, ``Spectrum.to_dict()``
summaries, score rows) and returns a ``plotly.graph_objects.Figure``; the same figures serve the app, the
A1111 tab and the saved reports.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

RUN_STYLE = {  # run name -> (label, colour, dash)
    "original": ("original", "#5b6b82", "solid"),
    "sail": ("SAIL", "#e4572e", "solid"),
}
WHICH_STYLE = {"cond": ("conditional", "#2e86de"), "uncond": ("unconditional", "#8e8e93"), "delta": ("difference", "#e4572e")}
LAYOUT = dict(
    template="plotly_white", margin=dict(l=50, r=20, t=40, b=40), height=360,
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0), font=dict(size=12),
)


def _as_dict(record: Any) -> dict:
    return record.to_dict() if hasattr(record, "to_dict") else dict(record)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, **LAYOUT)
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font=dict(color="#888"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _positive(values: Iterable[float]) -> bool:
    vals = list(values)
    return bool(vals) and all(v > 0 for v in vals)


def metrics_figure(
    runs: Mapping[str, Sequence[Any]], total_steps: int | None = None, threshold: float | None = None,
    threshold_label: str = "threshold", image: int = 0,
) -> go.Figure:
    """Per-step Wen metric (top) and sharpness (bottom) for each run, the detection threshold drawn.

    ``runs`` maps a run name (``original``, ``sail``) to its step records so far (live: the figure is rebuilt
    as records arrive). ``image`` picks the batch row.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("Wen metric ‖ε_c − ε_u‖", "sharpness ‖H_Δ s_Δ‖²"))
    sharp_all: list[float] = []
    for run, records in runs.items():
        label, colour, dash = RUN_STYLE.get(run, (run, None, "solid"))
        rows = [_as_dict(r) for r in records]
        steps = [r["step"] for r in rows]
        wen = [r["wen"][image] if r.get("wen") else None for r in rows]
        fig.add_trace(go.Scatter(x=steps, y=wen, mode="lines+markers", name=f"Wen · {label}",
                                 line=dict(color=colour, dash=dash), marker=dict(size=4)), row=1, col=1)
        sharp = [(r["step"], r["sharpness"][image]) for r in rows if r.get("sharpness")]
        if sharp:
            sharp_all += [v for _, v in sharp]
            fig.add_trace(go.Scatter(x=[s for s, _ in sharp], y=[v for _, v in sharp], mode="lines+markers",
                                     name=f"sharpness · {label}", line=dict(color=colour, dash="dot"),
                                     marker=dict(size=8, symbol="diamond")), row=2, col=1)
    if threshold is not None:
        fig.add_hline(y=threshold, line=dict(color="#c0392b", dash="dash", width=1), row=2, col=1,
                      annotation_text=f"{threshold_label} {threshold:.4g}", annotation_position="top right")
    if total_steps:
        fig.update_xaxes(range=[0.5, total_steps + 0.5])
    fig.update_xaxes(title_text="step", row=2, col=1)
    if _positive(sharp_all + ([threshold] if threshold else [])):
        fig.update_yaxes(type="log", row=2, col=1)
    fig.update_layout(**{**LAYOUT, "height": 420})
    return fig


def spectrum_figure(spectra: Mapping[str, Mapping[str, Any]] | None, step: int | None = None) -> go.Figure:
    """Eigenvalues (real parts, in the order core returns them) or SLQ densities of ``H_cond``, ``H_uncond``
    and ``H_Δ`` at one step. ``spectra`` maps ``which`` to ``Spectrum.to_dict()``."""
    title = "eigen-spectrum" + (f" at step {step}" if step else "")
    if not spectra:
        return _empty(title, "no spectrum yet: choose steps under “Spectrum” and generate")
    fig = go.Figure()
    density = any("density" in s for s in spectra.values())
    for which, spec in spectra.items():
        label, colour = WHICH_STYLE.get(which, (which, None))
        if "error" in spec:
            continue
        if "density" in spec:
            d = spec["density"]
            fig.add_trace(go.Scatter(x=d["grid"], y=d["values"], mode="lines", name=label, line=dict(color=colour)))
        else:
            re = spec.get("eigenvalues_real", [])
            conv = spec.get("converged", [True] * len(re))
            fig.add_trace(go.Scatter(
                x=list(range(1, len(re) + 1)), y=re, mode="lines+markers", name=label, line=dict(color=colour),
                marker=dict(symbol=["circle" if c else "circle-open" for c in conv], size=7),
                hovertemplate="λ%{x} = %{y:.4g}<extra>" + label + "</extra>",
            ))
    if density:
        fig.update_xaxes(title_text="eigenvalue λ")
        fig.update_yaxes(title_text="density")
    else:
        fig.update_xaxes(title_text="index (by |λ|; open marker = not converged)")
        fig.update_yaxes(title_text="Re λ")
    errors = [f"{w}: {s['error']}" for w, s in spectra.items() if "error" in s]
    if errors:
        fig.add_annotation(text="<br>".join(errors), showarrow=False, xref="paper", yref="paper", x=0.5, y=0.95)
    fig.update_layout(title=title, **LAYOUT)
    return fig


def sail_loss_figure(trace: Sequence[Mapping[str, Any]] | None, threshold: float | None = None) -> go.Figure:
    """SAIL objective per Adam step and candidate (rows ``{"step", "candidate", "loss"}``), threshold drawn."""
    if not trace:
        return _empty("SAIL loss", "SAIL off, or no trace yet")
    fig = go.Figure()
    by_candidate: dict[Any, list] = {}
    for row in trace:
        by_candidate.setdefault(row.get("candidate", 0), []).append(row)
    for cand, rows in sorted(by_candidate.items(), key=lambda kv: str(kv[0])):
        fig.add_trace(go.Scatter(x=[r["step"] for r in rows], y=[r["loss"] for r in rows], mode="lines+markers",
                                 name=f"candidate {cand}", marker=dict(size=5)))
    if threshold is not None:
        fig.add_hline(y=threshold, line=dict(color="#c0392b", dash="dash", width=1),
                      annotation_text=f"threshold {threshold:.4g}", annotation_position="top right")
    fig.update_xaxes(title_text="Adam step")
    fig.update_yaxes(title_text="objective")
    fig.update_layout(title="SAIL loss", **LAYOUT)
    return fig


def compare_figure(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Several prompts/seeds: their ``H_Δ`` spectra (left) and step-1 sharpness (right) on one figure.

    ``rows``: ``{"label", "sharpness", "spectrum": Spectrum.to_dict() | None}``.
    """
    if not rows:
        return _empty("compare prompts", "enter prompts (one per line) and press Compare")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                        subplot_titles=("spectrum of H_Δ at step 1", "step-1 sharpness"))
    labels = [r["label"] for r in rows]
    for r in rows:
        spec = r.get("spectrum") or {}
        if "density" in spec:
            fig.add_trace(go.Scatter(x=spec["density"]["grid"], y=spec["density"]["values"], mode="lines",
                                     name=r["label"], legendgroup=r["label"]), row=1, col=1)
        elif spec.get("eigenvalues_real"):
            re = spec["eigenvalues_real"]
            fig.add_trace(go.Scatter(x=list(range(1, len(re) + 1)), y=re, mode="lines+markers", name=r["label"],
                                     legendgroup=r["label"]), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=[r.get("sharpness") for r in rows], name="sharpness", showlegend=False,
                         marker_color="#e4572e"), row=1, col=2)
    if _positive(r.get("sharpness") or 0 for r in rows):
        fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(**{**LAYOUT, "height": 420})
    return fig


def histogram_figure(scores: Sequence[float], memorized: Sequence[bool | None] | None = None,
                     threshold: float | None = None) -> go.Figure:
    """Histogram of audit scores, split by the user's "known memorized" marks when given."""
    if not scores:
        return _empty("score histogram", "no scores yet")
    fig = go.Figure()
    marks = list(memorized) if memorized else [None] * len(scores)
    groups = {"known memorized": True, "not marked": None, "known clean": False}
    for name, flag in groups.items():
        vals = [s for s, m in zip(scores, marks) if m is flag and s is not None]
        if vals:
            fig.add_trace(go.Histogram(x=vals, name=name, opacity=0.7, nbinsx=30))
    if threshold is not None:
        fig.add_vline(x=threshold, line=dict(color="#c0392b", dash="dash"), annotation_text="threshold")
    fig.update_layout(barmode="overlay", title="step-1 sharpness", **LAYOUT)
    fig.update_xaxes(title_text="score")
    return fig


def roc_figure(fpr: Sequence[float] | None, tpr: Sequence[float] | None, auc: float | None, note: str = "") -> go.Figure:
    """ROC curve from core's detection evaluation (``fpr``, ``tpr``, ``auc``)."""
    if not fpr:
        return _empty("ROC", note or "mark known memorized prompts to see the ROC curve")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(fpr), y=list(tpr), mode="lines", name=f"AUC = {auc:.3f}" if auc is not None else "ROC"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"), showlegend=False))
    fig.update_xaxes(title_text="false positive rate", range=[0, 1])
    fig.update_yaxes(title_text="true positive rate", range=[0, 1])
    fig.update_layout(title="ROC" + (f" (AUC {auc:.3f})" if auc is not None else ""), **LAYOUT)
    return fig
