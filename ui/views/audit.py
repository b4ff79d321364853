"""Audit: score a prompt list (pasted or uploaded) with the engine of ``sailscope audit`` (:mod:`sailscope.core.audit`),
streamed into a table and a histogram; with labels, the same ROC report as the CLI (``report.json`` /
``report.html``). Resumable; exported as CSV and JSON (:mod:`sailscope.ui.outputs`).

An audit named ``<name>`` is a CLI audit folder, ``<outputs>/audit/<name>/`` (``settings.json``, ``shards/``,
``scores.jsonl``, ``report.json``, ``report.html``), with records equal to ``sailscope audit``'s for the same
settings. The browser never names a path: an existing report is opened by uploading its ``report.json`` or the
``scores.jsonl`` it was built from.
"""
from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import gradio as gr

from sailscope.core import audit, detect
from sailscope.core.errors import Cancelled, UserInputError
from sailscope.ui import compat, plots
from sailscope.ui.forms import marked_prompts, read_prompt_list, whole_number
from sailscope.ui.jobs import AppContext, detection_threshold
from sailscope.ui.outputs import audit_base, audit_report_folder, save_audit_exports
from sailscope.ui.plots import sig
from sailscope.ui.widgets import bind, failure_update, session_of, status_html, wire_cancel


# the last two inputs are new: positional callers of the older seven-input handler keep working
AUDIT_INPUTS = ("prompts", "upload", "memorized", "seeds", "steps", "metric", "name", "detectors")
AUDIT_OUTPUTS = ("status", "table", "histogram", "roc", "export", "summary", "top", "report_note", "report_files")
OPEN_INPUTS = ("report_upload", "memorized")
OPEN_OUTPUTS = ("status", "histogram", "roc", "summary", "top", "report_note", "report_files")
AUDIT_HEADERS = ["prompt", "memorization risk", "score", "per seed", "known memorized", "seconds"]
DEFAULT_DETECTORS = ("wen", "sharpness")
SUMMARY_HEADERS = ["detector", "AUC", "AUC CI low", "AUC CI high", "TPR at 1% FPR", "TPR CI low", "TPR CI high",
                   "memorized", "not memorized", "unlabelled"]
TOP_HEADERS = ["detector", "rank", "score", "prompt"]
# what the app scores with (the CLI's defaults): one folder holds one setting of these
FIRST_STEPS, HVP, GUIDANCE, SCHEDULER = 1, "fd", 7.5, "ddim"
MAX_REPORT_RECORDS = 20_000  # an uploaded scores.jsonl (the bootstrap costs ~n log n per resample)
_DETECTOR_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


# ----------------------------------------------------------------------------------------------
# Read-outs
# ----------------------------------------------------------------------------------------------
def _table(rows: Sequence[Mapping[str, Any]], threshold: float | None, metric: str) -> Any:
    """The scored prompts: the risk next to the prompt (never pushed off screen), the record's score and detector
    columns (4 significant digits), seeds, label, seconds. A pandas frame, so the headers follow the detectors."""
    import pandas as pd

    columns: list[str] = []
    for r in rows:
        for k in audit.detector_columns(r):
            if k != r.get("metric") and k not in columns:
                columns.append(k)
    data = []
    for r in rows:
        risk = r.get("risk") or (detect.risk_level(r["score"], threshold) if metric == "sharpness" else "")
        cols = audit.detector_columns(r)
        data.append([r["prompt"], risk, sig(r["score"]), *[sig(cols.get(k)) for k in columns],
                     ", ".join(f"{v:.4g}" for v in r.get("per_seed", [])),
                     {True: "yes", False: "no"}.get(r.get("memorized"), ""), round(r.get("seconds", 0.0), 2)])
    headers = AUDIT_HEADERS[:3] + columns + AUDIT_HEADERS[3:]
    return pd.DataFrame(data, columns=headers)


def audit_update(rows: list[dict], threshold: float | None, metric: str, message: str, done: int | None = None,
                 total: int | None = None, kind: str = "info") -> dict[str, Any]:
    """Status, table, histogram and live ROC of the rows scored so far (ROC from ``core.detect``; the report's
    ROC of every detector replaces it when the audit ends)."""
    scores = [r["score"] for r in rows]
    hist = plots.histogram_figure(scores, [r.get("memorized") for r in rows], threshold if metric == "sharpness" else None)
    labelled = [(r["score"], 1 if r["memorized"] else 0) for r in rows
                if r.get("memorized") is not None and r.get("score") is not None and math.isfinite(r["score"])]
    roc = plots.roc_figure(None, None, None)
    if labelled:
        try:
            s, y = zip(*labelled)
            fpr, tpr, _ = detect.roc_curve(list(s), list(y))
            roc = plots.roc_figure(fpr.tolist(), tpr.tolist(), detect.roc_auc(list(s), list(y)))
        except UserInputError as exc:
            roc = plots.roc_figure(None, None, None, str(exc))
    return {"status": status_html(message, kind, done, total), "table": _table(rows, threshold, metric),
            "histogram": hist, "roc": roc}


def summary_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """Per detector: AUC and TPR at the report's FPR with their bootstrap intervals (4 significant digits), and
    the label counts: :func:`sailscope.core.audit.build_report`'s numbers, nothing recomputed."""
    out = []
    for name, d in report.get("detectors", {}).items():
        auc_ci, tpr_ci = d.get("auc_ci") or [None, None], d.get("tpr_at_fpr_ci") or [None, None]
        out.append([name, sig(d.get("auc")), sig(auc_ci[0]), sig(auc_ci[1]), sig(d.get("tpr_at_fpr")), sig(tpr_ci[0]),
                    sig(tpr_ci[1]), d.get("n_memorized"), d.get("n_not_memorized"), d.get("n_unlabeled")])
    return out


def top_rows(report: Mapping[str, Any], top: int = 10) -> list[list[Any]]:
    """The highest-scoring unlabelled prompts of each detector (the report's ``top_unlabeled``, first ``top``)."""
    return [[name, i, sig(row["score"], 5), row["prompt"]]
            for name, d in report.get("detectors", {}).items()
            for i, row in enumerate((d.get("top_unlabeled") or [])[:top], 1)]


def report_note(report: Mapping[str, Any]) -> str:
    boot = report.get("bootstrap", {})
    level = 100 * float(boot.get("level", 0.95))
    return ("<div class='ss-audit-report-note'>" + status_html(
        f"Report: {report.get('n_records', 0)} prompts scored, {report.get('n_labels', 0)} labelled; AUC and TPR at "
        f"{100 * float(report.get('max_fpr', 0.01)):g}% FPR with {level:g}% stratified bootstrap intervals "
        f"({boot.get('resamples', '?')} resamples, seed {boot.get('seed', '?')}); memorized = positive.", "info")
            + "</div>")


def report_update(report: Mapping[str, Any], files: Sequence[str]) -> dict[str, Any]:
    """The report's read-outs: summary table, top unlabelled prompts, ROC and histograms by label of every
    detector, and the report's files for download."""
    return {"summary": summary_rows(report), "top": top_rows(report), "report_note": report_note(report),
            "roc": plots.audit_roc_figure(report), "histogram": plots.audit_histogram_figure(report),
            "report_files": list(files)}


# ----------------------------------------------------------------------------------------------
# Running an audit through core.audit
# ----------------------------------------------------------------------------------------------
def parse_detector_choice(value: Any) -> tuple[str, ...]:
    """The detectors checkbox group (a list, a comma string, None = the default Wen + sharpness)."""
    if value is None:
        return DEFAULT_DETECTORS
    return detect.parse_detectors(list(value) if isinstance(value, (list, tuple)) else str(value))


def audit_settings(pipe: Any, metric: str, detectors: Sequence[str], seeds: int, steps: int) -> dict[str, Any]:
    """What determines a record's values (as ``cli/audit.py``'s ``audit_settings``); one folder holds one."""
    info = getattr(pipe, "sailscope_info", None)
    return {"model": getattr(info, "key", None), "loras": [dict(x) for x in getattr(info, "loras", ()) or ()],
            "metric": metric, "detectors": list(detectors), "seeds": seeds, "first_steps": FIRST_STEPS, "hvp": HVP,
            "steps": steps, "guidance": GUIDANCE, "scheduler": SCHEDULER}


def check_folder_settings(folder: Path, settings: Mapping[str, Any], name: str) -> None:
    """Refuse (in words, without paths) to resume an audit name that holds records of other settings."""
    path = folder / audit.SETTINGS
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserInputError(f"the audit named {name!r} has an unreadable settings file; use another name") from None
    if old.get("key") == audit.settings_key(settings):
        return
    before = old.get("settings") or {}
    diff = [("another model" if k in ("model", "loras") else f"{k} {before.get(k)!r} (now {settings.get(k)!r})")
            for k in settings if json.dumps(before.get(k), default=str) != json.dumps(settings.get(k), default=str)]
    what = ", ".join(dict.fromkeys(diff)) or "changed"
    raise UserInputError(f"the audit named {name!r} was run with other settings ({what}); "
                         "use another audit name to start a new one, or the same settings to resume it")


_END = object()


def stream_audit(prompts: Sequence[str], scorer: Any, folder: Path, settings: Mapping[str, Any],
                 cancel: threading.Event) -> Iterator[tuple]:
    """:func:`sailscope.core.audit.run_audit` (one process) in a worker thread, yielding ``("start", skipped,
    total)``, ``("row", record)`` per scored prompt and ``("done", summary)``. A cancel stops before the next
    prompt (raises :class:`Cancelled` here); what was scored stays in the folder's shard for a resume."""
    q: queue.SimpleQueue = queue.SimpleQueue()
    started = [False]

    def score(prompt: str) -> Any:
        if cancel.is_set():
            raise Cancelled("cancelled")
        row = scorer(prompt)
        q.put(("row", row))
        return row

    def progress(done: int, total: int, rate: float, eta: float) -> None:
        if not started[0]:
            started[0] = True
            q.put(("start", done, total))

    def work() -> None:
        try:
            q.put(("done", audit.run_audit(prompts, score, folder, settings=settings, state=audit.ProcessState(),
                                           progress=progress)))
        except BaseException as exc:  # re-raised in the handler's thread
            q.put(("error", exc))
        finally:
            q.put(_END)

    worker = threading.Thread(target=work, name="sailscope-audit", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if item[0] == "error":
                raise item[1]
            yield item
    finally:
        if worker.is_alive():  # the consumer left early (client gone): stop before the next prompt
            cancel.set()
            worker.join()


def audit_handler(ctx: AppContext, prompts: str, upload: Any, memorized: str, seeds: Any, steps: Any, metric: str,
                  name: str, detectors: Any = None, request: Any = None) -> Iterator[dict[str, Any]]:
    """Score a prompt list with ``core.audit`` into ``<outputs>/audit/<name>/`` (streamed, resumable); with
    labels, ``core.audit.build_report`` → the tab's numbers and ``report.json``/``report.html``."""
    session = session_of(request)
    cancel = ctx.cancels.start(session, "an Audit")
    rows: dict[str, dict] = {}
    labels: dict[str, bool | None] = {}
    order: list[str] = []
    total, threshold = 0, None
    try:
        pipe = ctx.models.require()
        entries = read_prompt_list(prompts, upload, ctx.config.max_upload_bytes, ctx.config.max_audit_prompts)
        marked = marked_prompts(memorized)
        n_seeds, n_steps = whole_number(seeds, "seeds"), whole_number(steps, "steps")
        if not 1 <= n_seeds <= 16:
            raise UserInputError(f"seeds must be in 1..16, got {n_seeds}")
        if metric not in detect.METRICS:
            raise UserInputError(f"score must be one of {', '.join(detect.METRICS)}, got {metric!r}")
        wanted = parse_detector_choice(detectors)
        if ("anisotropy" in wanted or metric == "anisotropy") and n_steps < 3:
            raise UserInputError(f"the anisotropy detector evaluates the third-last timestep: steps must be >= 3, "
                                 f"got {n_steps}")
        threshold, src = detection_threshold(pipe)
        # the record's threshold and risk only where the CLI has them: step-1 sharpness on a calibrated model
        record_threshold = threshold if metric == "sharpness" and FIRST_STEPS == 1 else None
        settings = audit_settings(pipe, metric, wanted, n_seeds, n_steps)
        base = audit_base(ctx.config.outputs, name)
        folder = audit_report_folder(base)
        check_folder_settings(folder, settings, base.name)
        # marks typed in the box make every other prompt "known clean" unless the upload labelled it
        labels = {p: (True if p in marked else (False if marked and m is None else m)) for p, m in entries}
        order = [p for p, _ in entries]
        total = len(order)

        def scorer(prompt: str) -> dict:
            row = detect.score_prompt(pipe, prompt, seeds=n_seeds, first_steps=FIRST_STEPS, metric=metric, hvp=HVP,
                                      steps=n_steps, guidance=GUIDANCE, scheduler=SCHEDULER, detectors=wanted).to_dict()
            if record_threshold is not None:  # the same fields as `sailscope detect` / `sailscope audit`
                row["threshold"] = record_threshold
                row["risk"] = detect.risk_level(row["score"], record_threshold)
            return row

        def shown() -> list[dict]:
            return [dict(rows[p], memorized=labels[p]) for p in order if p in rows]

        resumed = 0
        scored = 0
        with closing(stream_audit(order, scorer, folder, settings, cancel)) as items:  # a gone client stops it
            for item in items:
                if item[0] == "start":
                    done = audit.read_done(folder)
                    rows.update({p: done[p] for p in order if p in done})
                    resumed = len(rows)
                    yield audit_update(shown(), threshold, metric, f"{resumed}/{total} scored"
                                       + (f" ({resumed} resumed)" if resumed else ""), resumed, total)
                elif item[0] == "row":
                    rows[item[1]["prompt"]] = item[1]
                    scored += 1
                    n = len(rows)
                    if scored == 1 or n == total or scored % 4 == 0:
                        yield audit_update(shown(), threshold, metric, f"{n}/{total} scored"
                                           + (f" ({resumed} resumed)" if resumed else ""), n, total)
        # the merged file is the CLI's scores.jsonl: the report is built from it, exactly as `sailscope audit` does
        records = audit.read_records(folder / audit.MERGED)
        rows = {r["prompt"]: r for r in records}
        final = shown()
        files = save_audit_exports(base, final, threshold, src)
        known = {p: bool(v) for p, v in labels.items() if v is not None}
        update = audit_update(final, threshold, metric, f"audit of {len(final)} prompts done; exported CSV and JSON"
                              + ("; report.json and report.html written" if known else ""),
                              len(final), total, kind="ok")
        update["export"] = files
        if known:
            report = audit.build_report(records, known)
            update.update(report_update(report, [str(p) for p in audit.write_report(folder, report)]))
        else:
            update.update(summary=[], top=[], report_files=[], report_note=status_html(
                "No report: mark known memorized prompts (box or the file's memorized column) for ROC, AUC and "
                "TPR at 1% FPR.", "info"))
        yield update
    except Cancelled:
        partial = [dict(rows[p], memorized=labels.get(p)) for p in order if p in rows]
        yield audit_update(partial, threshold, metric, f"cancelled after {len(partial)} of {total} prompts; run again "
                           "to resume", len(partial), total, kind="warn")
    except Exception as exc:  # user errors too: failure_update tells them apart
        yield failure_update(exc, "audit")
    finally:
        ctx.cancels.finish(session, cancel)


# ----------------------------------------------------------------------------------------------
# Opening an existing report (an uploaded report.json or scores.jsonl; never a typed path)
# ----------------------------------------------------------------------------------------------
def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def check_report(report: Any) -> dict:
    """An uploaded ``report.json`` checked against :func:`sailscope.core.audit.build_report`'s shape (plain
    names and numbers only, so it is shown and re-rendered as data)."""
    bad = UserInputError("the uploaded file is not a SAIL Scope audit report (report.json of `sailscope audit` "
                         "or of this tab)")
    if not isinstance(report, dict) or not isinstance(report.get("detectors"), dict) or not report["detectors"]:
        raise bad
    for name, d in report["detectors"].items():
        if not _DETECTOR_NAME.match(str(name)) or not isinstance(d, dict):
            raise bad
        for k in ("n", "n_memorized", "n_not_memorized", "n_unlabeled"):
            if not isinstance(d.get(k), int) or isinstance(d.get(k), bool):
                raise bad
        if not all(_number(d.get(k)) for k in ("auc", "tpr_at_fpr")):
            raise bad
        for k in ("auc_ci", "tpr_at_fpr_ci"):
            ci = d.get(k)
            if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_number(v) for v in ci)):
                raise bad
        roc, h = d.get("roc"), d.get("histogram")
        if roc is not None and not (isinstance(roc, dict) and all(
                isinstance(roc.get(k), list) and all(_number(v) for v in roc[k]) for k in ("fpr", "tpr"))):
            raise bad
        if not isinstance(h, dict) or not all(isinstance(h.get(k), list) and all(_number(v) for v in h[k])
                                              for k in ("edges", "memorized", "not_memorized", "unlabeled")):
            raise bad
        top = d.get("top_unlabeled") or []
        if not isinstance(top, list) or not all(isinstance(r, dict) and isinstance(r.get("prompt"), str)
                                                and _number(r.get("score")) for r in top):
            raise bad
    for k in ("n_records", "n_labels"):
        if k in report and not isinstance(report[k], int):
            raise bad
    return report


def open_report_handler(ctx: AppContext, report_upload: Any, memorized: str = "",
                        request: Any = None) -> dict[str, Any]:
    """Show an uploaded ``report.json`` (checked, shown as is) or build the report of an uploaded ``scores.jsonl``
    (``core.audit.build_report``; labels: the records' own ``memorized`` flags and the "known memorized" box,
    which makes every other prompt known clean). The report files offered for download are written under
    ``<outputs>/audit-opened/``."""
    try:
        path = getattr(report_upload, "name", report_upload) if report_upload is not None else None
        if not path:
            raise UserInputError("upload a report.json or a scores.jsonl of `sailscope audit` (or of this tab)")
        path = Path(path)
        limit = 2 * ctx.config.max_upload_bytes
        size = path.stat().st_size
        if size > limit:
            raise UserInputError(f"the uploaded file is {size // 1024} KB; the limit is {limit // 1024} KB "
                                 "(open larger audits' report.html in a browser)")
        if path.suffix == ".jsonl":
            records = audit.read_records(path)
            if not records:
                raise UserInputError("the uploaded scores.jsonl holds no records")
            if len(records) > MAX_REPORT_RECORDS:
                raise UserInputError(f"{len(records)} records; the limit here is {MAX_REPORT_RECORDS}")
            if not any(isinstance(r.get("score"), (int, float)) for r in records):
                raise UserInputError("the uploaded file's records have no scores (not a scores.jsonl of an audit)")
            marked = marked_prompts(memorized)
            labels = {r["prompt"]: bool(r["memorized"]) for r in records if isinstance(r.get("memorized"), bool)}
            for r in records:
                if r["prompt"] in marked:
                    labels[r["prompt"]] = True
                elif marked:
                    labels.setdefault(r["prompt"], False)
            report = audit.build_report(records, labels)
            what = f"report of the uploaded scores ({len(records)} prompts, {len(labels)} labelled)"
        else:
            try:
                report = check_report(json.loads(path.read_text(encoding="utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise UserInputError("the uploaded file is not JSON (a report.json, or a scores.jsonl)") from None
            what = f"the uploaded report ({report.get('n_records', '?')} prompts)"
        folder = Path(ctx.config.outputs) / "audit-opened" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        try:
            files = [str(p) for p in audit.write_report(folder, report)]
        except (KeyError, TypeError, ValueError, IndexError):
            raise UserInputError("the uploaded report could not be rendered (is it a SAIL Scope report.json?)") from None
        return dict(report_update(report, files), status=status_html(f"opened {what}", "ok"))
    except Exception as exc:  # user errors too: failure_update tells them apart
        return failure_update(exc, "opening an audit report")


# ----------------------------------------------------------------------------------------------
# Layout and wiring
# ----------------------------------------------------------------------------------------------
def audit_view(ctx: AppContext) -> dict[str, Any]:
    """The Audit tab's content, wired; returns its components by name."""
    cfg = ctx.config
    c: dict[str, Any] = {}
    with compat.make(gr.Row, equal_height=False):
        with gr.Column(scale=2, min_width=320):
            c["prompts"] = compat.make(gr.Textbox, label="Prompts (one per line)", lines=6, elem_id="ss-audit-prompts")
            c["upload"] = compat.make(
                gr.File, label=f"…or upload .txt / .csv (prompt,memorized) / .jsonl (≤ {cfg.max_upload_bytes // 1024} KB)",
                file_types=[".txt", ".csv", ".jsonl"], type="filepath", elem_id="ss-audit-upload")
            c["memorized"] = compat.make(gr.Textbox, label="Known memorized prompts (optional, one per line; enables the "
                                         "ROC report)", lines=3, elem_id="ss-audit-memorized")
            with gr.Row():
                c["seeds"] = compat.make(gr.Slider, minimum=1, maximum=8, step=1, value=4, label="Seeds per prompt",
                                         elem_id="ss-audit-seeds")
                c["steps"] = compat.make(gr.Slider, minimum=1, maximum=150, step=1, value=50, label="Steps (sets t at step 1)")
            with gr.Row():
                c["metric"] = compat.make(gr.Radio, choices=["sharpness", "wen", "anisotropy"], value="sharpness",
                                          label="Score (the record's score column)", elem_id="ss-audit-metric")
                c["name"] = compat.make(gr.Textbox, value="audit", label="Audit name (same name resumes)",
                                        elem_id="ss-audit-name")
            c["detectors"] = compat.make(
                gr.CheckboxGroup, choices=list(detect.DETECTORS), value=list(DEFAULT_DETECTORS),
                label="Detectors (columns from the same pass; sharpness: +1 evaluation, anisotropy: +1)",
                elem_id="ss-audit-detectors")
            with gr.Row():
                c["run"] = compat.make(gr.Button, value="Run audit", variant="primary", elem_id="ss-audit-run")
                c["cancel"] = compat.make(gr.Button, value="Cancel", variant="stop", elem_id="ss-audit-cancel")
            c["cancel_note"] = compat.make(gr.HTML, value="", elem_id="ss-audit-cancel-note")
            with compat.make(gr.Accordion, label="Open an audit report", open=False, elem_id="ss-audit-open-box"):
                c["report_upload"] = compat.make(
                    gr.File, label="report.json or scores.jsonl of `sailscope audit` (labels for scores: the box above)",
                    file_types=[".json", ".jsonl"], type="filepath", elem_id="ss-audit-report-upload")
                c["open"] = compat.make(gr.Button, value="Open report", elem_id="ss-audit-open")
        with gr.Column(scale=3, min_width=420):
            c["status"] = compat.make(gr.HTML, value=status_html("ready"), elem_id="ss-audit-status")
            c["table"] = compat.make(gr.Dataframe, headers=AUDIT_HEADERS, interactive=False, elem_id="ss-audit-table")
            with gr.Row():
                c["histogram"] = compat.make(gr.Plot, label="Histogram", value=plots.histogram_figure([]),
                                             elem_id="ss-audit-hist")
                c["roc"] = compat.make(gr.Plot, label="ROC", value=plots.roc_figure(None, None, None), elem_id="ss-audit-roc")
            c["report_note"] = compat.make(gr.HTML, value="", elem_id="ss-audit-report-note")
            c["summary"] = compat.make(gr.Dataframe, headers=SUMMARY_HEADERS, interactive=False,
                                       label="Report: per detector (95% bootstrap intervals)", elem_id="ss-audit-summary")
            c["top"] = compat.make(gr.Dataframe, headers=TOP_HEADERS, interactive=False,
                                   label="Highest-scoring unlabelled prompts", elem_id="ss-audit-top")
            with gr.Row():
                c["export"] = compat.make(gr.File, label="Export (CSV, JSON)", file_count="multiple", interactive=False,
                                          elem_id="ss-audit-export")
                c["report_files"] = compat.make(gr.File, label="Report (report.json, report.html)", file_count="multiple",
                                                interactive=False, elem_id="ss-audit-report-files")

    def run_audit(values: dict[str, Any], request: Any) -> Iterator[dict[str, Any]]:
        yield from audit_handler(ctx, **values, request=request)

    def open_report(values: dict[str, Any], request: Any) -> dict[str, Any]:
        return open_report_handler(ctx, **values, request=request)

    bind(c["run"].click, run_audit, c, AUDIT_INPUTS, AUDIT_OUTPUTS,
         **compat.event_kwargs(model_job=True, progress_on=c["status"], api_name="audit"))
    bind(c["open"].click, open_report, c, OPEN_INPUTS, OPEN_OUTPUTS, **compat.event_kwargs(api_name="audit_report"))
    wire_cancel(ctx, c["cancel"], c["cancel_note"])
    return c
