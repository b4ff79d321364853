"""Audits of many prompts on one or many processes: deterministic split, shards, resume, merge, ROC report.

Engine only (no argparse, no UI): the caller passes the prompts, a scorer ``prompt -> record`` (a
:class:`~sailscope.core.detect.DetectionScore`, or its ``to_dict()`` plus optional extra detector columns) and the
output folder ``DIR``, which must be visible to every process (one shared filesystem across nodes):

====================================  ==============================================================================
``DIR/settings.json``                 the audit's settings and their key: one ``DIR`` holds one setting
``DIR/shards/scores.<rank>.jsonl``    what process ``rank`` scored, one JSON line per prompt, fsync'ed per record
``DIR/scores.jsonl``                  the merge: one record per prompt, in prompt-file order (written atomically)
``DIR/report.json``, ``report.html``  :func:`build_report` / :func:`report_html` via :func:`write_report`
====================================  ==============================================================================

Splitting: a prompt's owner is ``sha256(prompt) mod K`` for ``K`` processes, so the split needs no coordination,
survives restarts, and a rerun with another ``K`` still gives every unfinished prompt to exactly one process.
Resume: every process reads all shards and the merged file first and skips prompts already there (the settings
key is the directory's, checked against ``settings.json``). A process killed mid-run loses at most the prompt it
was on: a torn last line is ignored when reading and cut off before the shard is appended to again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from sailscope.core.errors import UserInputError
from sailscope.core.io.files import append_jsonl, json_safe, jsonl_line, read_jsonl, write_text_atomic

Scorer = Callable[[str], Any]  # prompt -> DetectionScore | Mapping
Progress = Callable[[int, int, float, float], None]  # (done, total, prompts/s, eta seconds)

SHARD_DIR = "shards"
MERGED = "scores.jsonl"
SETTINGS = "settings.json"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
# numeric record fields that are not detector scores
NOT_DETECTORS = frozenset({"threshold"})
_SHARD_RE = re.compile(r"^scores\.(\d+)\.jsonl$")


def _base_fields() -> tuple[str, ...]:
    """The fields every record has (:class:`~sailscope.core.detect.DetectionScore`'s, without its detector
    ``columns``, which ``to_dict`` puts next to them)."""
    from sailscope.core.detect import DetectionScore  # lazy: keeps `import audit` light for the CLI

    return tuple(f.name for f in dataclasses.fields(DetectionScore) if f.name != "columns")


# ----------------------------------------------------------------------------------------------
# Files: the project's one atomic writer and JSONL reader/appender (core/io/files.py)
# ----------------------------------------------------------------------------------------------
def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL file (:func:`~sailscope.core.io.files.read_jsonl`): only newline-terminated lines
    count, so a torn last line (a process killed mid-write) is ignored; a complete line that is not a record (a
    JSON object with a ``prompt``) is skipped with a warning."""
    out = []
    for row in read_jsonl(path, warn=True):
        if "prompt" not in row:
            warnings.warn(f"{Path(path).name}: a line without a prompt; skipped", stacklevel=2)
            continue
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------
# Processes and the split
# ----------------------------------------------------------------------------------------------
def _no_barrier() -> None:
    return None


@dataclass(frozen=True)
class ProcessState:
    """This process's place in the run: ``rank`` of ``world_size``, and a barrier across all of them."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = field(default=_no_barrier, compare=False, repr=False)
    # the device a launcher gave this process (``cuda:<local rank>`` on a multi-GPU launch, ``cpu`` on a CPU one);
    # None for a single process (the caller picks)
    device: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_state(backend: str | None = None) -> ProcessState:
    """Rank, world size and barrier from ``accelerate.PartialState`` (works under ``accelerate launch`` on GPUs,
    CPU processes or several nodes); a single process when accelerate is not installed. ``backend`` overrides
    accelerate's process-group backend (``gloo`` lets several processes share one GPU, which NCCL refuses)."""
    launched = _launched_world_size()
    try:
        from accelerate import PartialState
    except ImportError:
        if launched > 1:
            raise UserInputError(f"launched as {launched} processes, but accelerate is not installed "
                                 "(pip install accelerate)") from None
        return ProcessState()
    import torch

    # accelerate treats a multi-process launch on a machine without CUDA as one process unless told `cpu=True`
    # (each process would then score every prompt)
    kwargs = {"backend": backend} if backend and launched > 1 else {}
    state = PartialState(cpu=launched > 1 and not torch.cuda.is_available(), **kwargs)
    if int(state.num_processes) != launched:
        raise UserInputError(f"launched as {launched} processes, but accelerate sees {state.num_processes} "
                             f"({state.distributed_type}); check the launch configuration")
    return ProcessState(rank=int(state.process_index), world_size=int(state.num_processes),
                        barrier=state.wait_for_everyone, device=str(state.device) if launched > 1 else None)


def _launched_world_size() -> int:
    """The process count a launcher (torchrun/accelerate, MPI) put in the environment; 1 when none."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 1


def prompt_owner(prompt: str, world_size: int) -> int:
    """The rank that scores ``prompt``: the first 8 bytes of its SHA-256, mod ``world_size`` (stable across runs,
    machines and Python's hash seed)."""
    if world_size < 1:
        raise UserInputError(f"world_size must be >= 1, got {world_size}")
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % world_size


def settings_key(settings: Mapping[str, Any] | None) -> str:
    """A short stable key of the scoring settings (model, metric, seeds, steps, ...): canonical JSON, SHA-256."""
    text = json.dumps(json_safe(dict(settings or {})), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def unique_prompts(prompts: Iterable[str]) -> list[str]:
    """Prompts in order, each once (the first occurrence)."""
    return list(dict.fromkeys(prompts))


def _shard_paths(out_dir: Path) -> list[Path]:
    d = out_dir / SHARD_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _SHARD_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def shard_path(out_dir: str | os.PathLike, rank: int) -> Path:
    return Path(out_dir) / SHARD_DIR / f"scores.{rank}.jsonl"


def read_done(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Every finished record in ``DIR``, one per prompt: the merged file first, then the shards by rank; the first
    record of a prompt wins."""
    out = Path(out_dir)
    done: dict[str, dict] = {}
    for path in [out / MERGED, *_shard_paths(out)]:
        for row in read_records(path):
            done.setdefault(row["prompt"], row)
    return done


def _as_record(result: Any, prompt: str, required: Sequence[str]) -> dict:
    row = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    missing = [k for k in required if k not in row]
    if missing:
        raise ValueError(f"the scorer's record for {prompt!r} lacks {', '.join(missing)}")
    if row["prompt"] != prompt:
        raise ValueError(f"the scorer returned a record for {row['prompt']!r} when asked for {prompt!r}")
    return row


@dataclass(frozen=True)
class ShardResult:
    rank: int
    world_size: int
    owned: int  # prompts of this rank
    skipped: int  # already finished before this run
    scored: int  # scored now


def score_shard(
    prompts: Sequence[str],
    scorer: Scorer,
    out_dir: str | os.PathLike,
    *,
    rank: int,
    world_size: int,
    progress: Progress | None = None,
) -> ShardResult:
    """Score this rank's unfinished prompts, appending each record to ``DIR/shards/scores.<rank>.jsonl`` (flushed
    and fsync'ed per record). ``progress(done, total, rate, eta)`` covers this rank's share (under K processes,
    about 1/K of the list), ``rate`` in prompts/s of this run, ``eta`` in seconds (``inf`` before the first)."""
    if not 0 <= rank < world_size:
        raise UserInputError(f"rank must be in 0..{world_size - 1}, got {rank}")
    required = _base_fields()
    owned = [p for p in unique_prompts(prompts) if prompt_owner(p, world_size) == rank]
    done = read_done(out_dir)
    todo = [p for p in owned if p not in done]
    skipped = len(owned) - len(todo)
    total = len(owned)
    if progress is not None:
        progress(skipped, total, 0.0, 0.0 if not todo else math.inf)
    if not todo:
        return ShardResult(rank, world_size, total, skipped, 0)
    path = shard_path(out_dir, rank)
    start = time.perf_counter()
    scored = 0
    for prompt in todo:
        row = _as_record(scorer(prompt), prompt, required)
        append_jsonl(path, row)  # fsync'ed; a torn tail left by a killed run is cut off first
        scored += 1
        if progress is not None:
            rate = scored / max(time.perf_counter() - start, 1e-9)
            progress(skipped + scored, total, rate, (len(todo) - scored) / rate)
    return ShardResult(rank, world_size, total, skipped, scored)


@dataclass(frozen=True)
class MergeResult:
    written: int  # records in DIR/scores.jsonl
    missing: list[str]  # prompts with no record yet


def merge_records(out_dir: str | os.PathLike, prompts: Sequence[str]) -> MergeResult:
    """Write ``DIR/scores.jsonl`` atomically: one record per prompt that has one, in the order of ``prompts``."""
    done = read_done(out_dir)
    rows, missing = [], []
    for p in unique_prompts(prompts):
        if p in done:
            rows.append(done[p])
        else:
            missing.append(p)
    write_text_atomic(Path(out_dir) / MERGED, "".join(jsonl_line(r) for r in rows))
    return MergeResult(written=len(rows), missing=missing)


def _check_settings(out_dir: Path, settings: Mapping[str, Any]) -> bool:
    """True when ``DIR/settings.json`` must be written; raises when ``DIR`` holds another setting's audit."""
    path = out_dir / SETTINGS
    if not path.is_file():
        return True
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserInputError(f"{path} is unreadable; remove it or use another output folder") from None
    if old.get("key") != settings_key(settings):
        raise UserInputError(
            f"{out_dir} holds an audit with other settings ({old.get('settings')}); resuming would mix them: "
            "use another output folder")
    return False


@dataclass(frozen=True)
class AuditSummary:
    rank: int
    world_size: int
    total: int  # unique prompts
    shard: ShardResult
    merged: MergeResult | None  # on the main process only


def run_audit(
    prompts: Sequence[str],
    scorer: Scorer,
    out_dir: str | os.PathLike,
    *,
    settings: Mapping[str, Any] | None = None,
    state: ProcessState | None = None,
    progress: Progress | None = None,
) -> AuditSummary:
    """The whole audit on this process: check ``settings`` against ``DIR``, score this rank's unfinished prompts,
    then (main process, after every process is done) merge into ``DIR/scores.jsonl``. Call it in every process
    (``accelerate launch`` runs the same script K times); ``progress`` is used on the main process only."""
    state = process_state() if state is None else state
    out = Path(out_dir)
    write_settings = _check_settings(out, settings) if settings is not None else False  # every process, pre-write
    state.barrier()
    if state.is_main and write_settings:
        write_text_atomic(out / SETTINGS, json.dumps(
            json_safe({"key": settings_key(settings), "settings": dict(settings)}), indent=2, default=str) + "\n")
    shard = score_shard(prompts, scorer, out, rank=state.rank, world_size=state.world_size,
                        progress=progress if state.is_main else None)
    state.barrier()
    merged = merge_records(out, prompts) if state.is_main else None
    state.barrier()
    return AuditSummary(state.rank, state.world_size, len(unique_prompts(prompts)), shard, merged)


# ----------------------------------------------------------------------------------------------
# Labels and the report
# ----------------------------------------------------------------------------------------------
def _text_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserInputError(f"labels file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_labels(memorized: str | os.PathLike, not_memorized: str | os.PathLike | None = None) -> dict[str, bool]:
    """``prompt -> memorized`` from a ``.jsonl`` of ``{"prompt": ..., "memorized": true/false}`` (``caption`` is
    accepted for ``prompt``), or from two text files, memorized and not memorized prompts, one per line."""
    labels: dict[str, bool] = {}

    def put(prompt: str, value: bool, where: str) -> None:
        if labels.get(prompt, value) != value:
            raise UserInputError(f"{where}: {prompt!r} is labeled both memorized and not memorized")
        labels[prompt] = value

    first = Path(memorized)
    if not_memorized is not None:
        for path, value in ((first, True), (Path(not_memorized), False)):
            for line in _text_lines(path):
                put(line, value, path.name)
        return labels
    if first.suffix != ".jsonl":
        raise UserInputError(f"labels: give a .jsonl with a 'memorized' field, or two text files (got {first.name})")
    if not first.is_file():
        raise UserInputError(f"labels file not found: {first}")
    for i, line in enumerate(first.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        where = f"{first.name} line {i + 1}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserInputError(f"{where} is not valid JSON") from None
        prompt = row.get("prompt", row.get("caption")) if isinstance(row, dict) else None
        value = row.get("memorized") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or value not in (True, False, 0, 1):
            raise UserInputError(f"{where} needs a string 'prompt' and a true/false 'memorized'")
        put(prompt, bool(value), where)
    return labels


def detector_columns(record: Mapping[str, Any]) -> dict[str, float]:
    """The detector scores of one record: ``{record["metric"]: record["score"]}`` plus every other numeric field
    outside :class:`DetectionScore`'s (e.g. ``wen``, ``anisotropy``) except ``threshold``; None -> NaN."""
    base = set(_base_fields())
    cols = {str(record.get("metric") or "score"): record.get("score")}
    for k, v in record.items():
        if k in base or k in NOT_DETECTORS or k in cols:
            continue
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            cols[k] = v
    return {k: (math.nan if v is None else float(v)) for k, v in cols.items()}


def bootstrap_roc(
    scores: Sequence[float],
    labels: Sequence[int],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_fpr: float = 0.01,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of AUC and TPR@``max_fpr``, resampling memorized and non-memorized prompts
    separately (stratified, so every resample keeps both classes and their sizes); seeded, so reproducible."""
    from sailscope.core.detect import roc_auc, tpr_at_fpr

    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        raise UserInputError("a bootstrap of ROC statistics needs both memorized and non-memorized prompts")
    rng = np.random.default_rng(seed)
    yy = np.r_[np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)]
    aucs, tprs = np.empty(resamples), np.empty(resamples)
    for i in range(resamples):
        ss = np.r_[pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))]]
        aucs[i], tprs[i] = roc_auc(ss, yy), tpr_at_fpr(ss, yy, max_fpr)
    q = [(1 - level) / 2, (1 + level) / 2]
    return {"auc": np.quantile(aucs, q).tolist(), "tpr_at_fpr": np.quantile(tprs, q).tolist()}


def build_report(
    records: Iterable[Mapping[str, Any]],
    labels: Mapping[str, bool],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_fpr: float = 0.01,
    top: int = 20,
    bins: int = 30,
) -> dict:
    """ROC curve, AUC and TPR@``max_fpr`` (each with a stratified bootstrap interval), score histograms by label
    and the ``top`` highest-scoring unlabeled prompts, for every detector column of the records. Plain JSON data
    (no file paths); :func:`report_html` renders it, the app's Audit tab reads it."""
    from sailscope.core.detect import roc_auc, roc_curve, tpr_at_fpr

    rows: dict[str, Mapping[str, Any]] = {}
    for r in records:
        rows.setdefault(r["prompt"], r)
    columns: dict[str, list[tuple[str, float]]] = {}
    for prompt, r in rows.items():
        for name, value in detector_columns(r).items():
            columns.setdefault(name, []).append((prompt, value))
    detectors = {}
    for name, values in columns.items():
        finite = [(p, v) for p, v in values if math.isfinite(v)]
        lab = [(v, int(labels[p])) for p, v in finite if p in labels]
        unl = [(p, v) for p, v in finite if p not in labels]
        s = np.array([v for v, _ in lab], dtype=float)
        y = np.array([t for _, t in lab], dtype=int)
        entry: dict[str, Any] = {
            "n": len(values), "n_nonfinite": len(values) - len(finite), "n_memorized": int((y == 1).sum()),
            "n_not_memorized": int((y == 0).sum()), "n_unlabeled": len(unl),
            "auc": None, "auc_ci": None, "tpr_at_fpr": None, "tpr_at_fpr_ci": None, "roc": None,
        }
        if entry["n_memorized"] and entry["n_not_memorized"]:
            fpr, tpr, thr = roc_curve(s, y)
            ci = bootstrap_roc(s, y, resamples=resamples, seed=seed, level=level, max_fpr=max_fpr)
            entry.update(
                auc=roc_auc(s, y), auc_ci=ci["auc"], tpr_at_fpr=tpr_at_fpr(s, y, max_fpr),
                tpr_at_fpr_ci=ci["tpr_at_fpr"],
                roc={"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": [None, *thr[1:].tolist()]},
            )
        all_v = np.array([v for _, v in finite], dtype=float)
        edges = np.histogram_bin_edges(all_v, bins=bins) if all_v.size else np.array([0.0, 1.0])
        entry["histogram"] = {
            "edges": edges.tolist(),
            "memorized": np.histogram(s[y == 1], bins=edges)[0].tolist(),
            "not_memorized": np.histogram(s[y == 0], bins=edges)[0].tolist(),
            "unlabeled": np.histogram(np.array([v for _, v in unl], dtype=float), bins=edges)[0].tolist(),
        }
        order = sorted(range(len(unl)), key=lambda i: -unl[i][1])  # stable: ties keep prompt order
        entry["top_unlabeled"] = [{"prompt": unl[i][0], "score": unl[i][1]} for i in order[:top]]
        detectors[name] = entry
    return {
        "version": 1,
        "n_records": len(rows),
        "n_labels": len(labels),
        "n_labels_without_record": sum(1 for p in labels if p not in rows),
        "max_fpr": max_fpr,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": level, "stratified": True},
        "detectors": detectors,
    }


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------
_COLORS = ["#e4572e", "#29a3d1", "#9a6fd6", "#2ca02c", "#d4a017", "#e377c2"]
_LABEL_COLORS = {"memorized": "#e4572e", "not_memorized": "#29a3d1", "unlabeled": "#8c8c8c"}
_CSS = """
:root { color-scheme: light dark; --fg: #1d1d1f; --bg: #ffffff; --muted: #666; --grid: rgba(128,128,128,.3);
        --rule: rgba(128,128,128,.35); }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e6e6; --bg: #16171a; --muted: #a0a0a0; } }
body { font: 15px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; }
h1, h2, h3 { font-weight: 600; } .muted { color: var(--muted); }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; } td, th { padding: .3rem .7rem; text-align: left;
        border-bottom: 1px solid var(--rule); vertical-align: top; } td.num { text-align: right;
        font-variant-numeric: tabular-nums; white-space: nowrap; }
.js-plotly-plot .plotly text { fill: var(--fg) !important; }
.js-plotly-plot .plotly .gridlayer path, .js-plotly-plot .plotly .zerolinelayer path { stroke: var(--grid) !important; }
"""


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _fmt_ci(ci: Any) -> str:
    return "" if not ci else f" <span class=muted>[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>"


def _layout(fig: Any, title: str, xtitle: str, ytitle: str) -> None:
    fig.update_layout(
        title=title, paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", height=420,
        font={"color": "#888"}, legend={"bgcolor": "rgba(0,0,0,0)"}, margin={"l": 60, "r": 20, "t": 50, "b": 50},
        xaxis={"title": xtitle, "gridcolor": "rgba(128,128,128,.3)", "zerolinecolor": "rgba(128,128,128,.3)"},
        yaxis={"title": ytitle, "gridcolor": "rgba(128,128,128,.3)", "zerolinecolor": "rgba(128,128,128,.3)"},
    )


def report_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page of a :func:`build_report` report: summary table, ROC curves, histograms by
    label, top unlabeled prompts. plotly.js is inlined once; colours follow the reader's light/dark setting."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    dets = report.get("detectors", {})
    pct = f"{100 * report.get('max_fpr', 0.01):g}"
    level = f"{100 * report.get('bootstrap', {}).get('level', 0.95):g}"
    figs: list[str] = []

    def add(fig: Any) -> None:
        figs.append(pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig{len(figs)}",
                                config={"displaylogo": False, "responsive": True}))

    roc = go.Figure()
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             line={"dash": "dot", "color": "#8c8c8c"}, hoverinfo="skip"))
    for i, (name, d) in enumerate(dets.items()):
        if d.get("roc"):
            roc.add_trace(go.Scatter(x=d["roc"]["fpr"], y=d["roc"]["tpr"], mode="lines",
                                     name=f"{name} (AUC {_fmt(d['auc'])})", line={"color": _COLORS[i % len(_COLORS)]}))
    if len(roc.data) > 1:
        _layout(roc, "ROC (memorized = positive)", "false-positive rate", "true-positive rate")
        add(roc)
    for name, d in dets.items():
        h = d["histogram"]
        edges = np.asarray(h["edges"], dtype=float)
        centers, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        fig = go.Figure()
        for group in ("memorized", "not_memorized", "unlabeled"):
            if sum(h[group]):
                fig.add_trace(go.Bar(x=centers.tolist(), y=h[group], width=widths.tolist(), opacity=0.6,
                                     name=group.replace("_", " "), marker={"color": _LABEL_COLORS[group]}))
        _layout(fig, f"{name}: scores by label", name, "prompts")
        fig.update_layout(barmode="overlay")
        add(fig)

    boot = report.get("bootstrap", {})
    summary = (f"{report.get('n_records', 0)} prompts scored, {report.get('n_labels', 0)} labels "
               f"({report.get('n_labels_without_record', 0)} without a score). Intervals: {level} % stratified "
               f"bootstrap, {boot.get('resamples', '?')} resamples, seed {boot.get('seed', '?')}.")
    head = ("<table><tr><th>detector</th><th>AUC</th>"
            f"<th>TPR at {pct} % FPR</th><th>memorized</th><th>not memorized</th><th>unlabeled</th></tr>")
    out = [
        "<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        "<title>SAIL Scope audit report</title>", f"<style>{_CSS}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>" if figs else "",
        "</head><body>", "<h1>SAIL Scope audit report</h1>", f"<p class=muted>{summary}</p>", head,
    ]
    for name, d in dets.items():
        out.append(
            f"<tr><td>{html.escape(name)}</td><td class=num>{_fmt(d['auc'])}{_fmt_ci(d['auc_ci'])}</td>"
            f"<td class=num>{_fmt(d['tpr_at_fpr'])}{_fmt_ci(d['tpr_at_fpr_ci'])}</td>"
            f"<td class=num>{d['n_memorized']}</td><td class=num>{d['n_not_memorized']}</td>"
            f"<td class=num>{d['n_unlabeled']}</td></tr>")
    out.append("</table>")
    out.extend(figs)
    for name, d in dets.items():
        if not d.get("top_unlabeled"):
            continue
        out.append(f"<h3>Highest {html.escape(name)} among unlabeled prompts</h3>")
        out.append("<table><tr><th>#</th><th>score</th><th>prompt</th></tr>")
        for i, row in enumerate(d["top_unlabeled"], 1):
            out.append(f"<tr><td class=num>{i}</td><td class=num>{_fmt(row['score'], 5)}</td>"
                       f"<td>{html.escape(row['prompt'])}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``DIR/report.json`` and ``DIR/report.html``, each atomically."""
    out = Path(out_dir)
    page = report_html(report)  # render first: a rendering error leaves both files as they were
    j = write_text_atomic(out / REPORT_JSON, json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    h = write_text_atomic(out / REPORT_HTML, page)
    return j, h
