"""Audit: score a prompt list (pasted or uploaded) by step-1 sharpness or Wen's metric, streamed into a table and
a histogram, with ROC/AUC when prompts are marked memorized. Resumable; exported as CSV and JSON
(:mod:`sailscope.ui.outputs`)."""
from __future__ import annotations

import logging
import traceback
from typing import Any, Iterator

import gradio as gr

from sailscope.core import detect
from sailscope.core.errors import Cancelled, SailScopeError, UserInputError
from sailscope.core.io.files import append_jsonl, read_jsonl
from sailscope.ui import compat, plots
from sailscope.ui.forms import marked_prompts, read_prompt_list, whole_number
from sailscope.ui.jobs import AppContext, detection_threshold
from sailscope.ui.outputs import audit_base, save_audit_exports
from sailscope.ui.plots import sig
from sailscope.ui.widgets import bind, session_of, status_html, wire_cancel

log = logging.getLogger("sailscope.ui")

AUDIT_INPUTS = ("prompts", "upload", "memorized", "seeds", "steps", "metric", "name")
AUDIT_OUTPUTS = ("status", "table", "histogram", "roc", "export")
AUDIT_HEADERS = ["prompt", "memorization risk", "score", "per seed", "known memorized", "seconds"]


def audit_update(rows: list[dict], threshold: float | None, metric: str, message: str, done: int | None = None,
                 total: int | None = None, kind: str = "info") -> dict[str, Any]:
    """Status, table, histogram and ROC for the rows scored so far (ROC from ``core.detect``)."""
    # the risk next to the prompt (never pushed off screen), numbers to 4 significant digits
    table = [[r["prompt"], detect.risk_level(r["score"], threshold) if metric == "sharpness" else "",
              sig(r["score"]), ", ".join(f"{v:.4g}" for v in r.get("per_seed", [])),
              {True: "yes", False: "no"}.get(r.get("memorized"), ""), round(r.get("seconds", 0.0), 2)]
             for r in rows]
    scores = [r["score"] for r in rows]
    hist = plots.histogram_figure(scores, [r.get("memorized") for r in rows], threshold if metric == "sharpness" else None)
    labelled = [(r["score"], 1 if r["memorized"] else 0) for r in rows if r.get("memorized") is not None]
    roc = plots.roc_figure(None, None, None)
    if labelled:
        try:
            s, y = zip(*labelled)
            fpr, tpr, _ = detect.roc_curve(list(s), list(y))
            roc = plots.roc_figure(fpr.tolist(), tpr.tolist(), detect.roc_auc(list(s), list(y)))
        except UserInputError as exc:
            roc = plots.roc_figure(None, None, None, str(exc))
    return {"status": status_html(message, kind, done, total), "table": table, "histogram": hist, "roc": roc}


def audit_handler(ctx: AppContext, prompts: str, upload: Any, memorized: str, seeds: Any, steps: Any, metric: str,
                  name: str, request: Any = None) -> Iterator[dict[str, Any]]:
    """Score a prompt list (streamed, resumable from ``<outputs>/audit/<name>.jsonl``); ROC when marked."""
    session = session_of(request)
    cancel = ctx.cancels.start(session, "an Audit")
    rows: list[dict] = []
    try:
        pipe = ctx.models.require()
        entries = read_prompt_list(prompts, upload, ctx.config.max_upload_bytes, ctx.config.max_audit_prompts)
        marked = marked_prompts(memorized)
        n_seeds, n_steps = whole_number(seeds, "seeds"), whole_number(steps, "steps")
        if not 1 <= n_seeds <= 16:
            raise UserInputError(f"seeds must be in 1..16, got {n_seeds}")
        threshold, src = detection_threshold(pipe)
        info = getattr(pipe, "sailscope_info", None)
        key = {"model": getattr(info, "key", None), "metric": metric, "seeds": n_seeds, "steps": n_steps}
        base = audit_base(ctx.config.outputs, name)
        log_file = base.with_suffix(".jsonl")
        done = {r["prompt"]: r for r in read_jsonl(log_file) if r.get("key") == key}
        # marks typed in the box make every other prompt "known clean" unless the upload labelled it
        labels = {p: (True if p in marked else (False if marked and m is None else m)) for p, m in entries}
        for i, (prompt, _) in enumerate(entries):
            if cancel.is_set():
                raise Cancelled(f"cancelled after {i} of {len(entries)} prompts; run again to resume")
            if prompt in done:
                row = dict(done[prompt], memorized=labels[prompt])
            else:
                score = detect.score_prompt(pipe, prompt, seeds=n_seeds, steps=n_steps, metric=metric)
                row = {"key": key, **score.to_dict(), "memorized": labels[prompt]}
                append_jsonl(log_file, row)
            rows.append(row)
            if i == 0 or i == len(entries) - 1 or i % 4 == 3:
                yield audit_update(rows, threshold, metric, f"{i + 1}/{len(entries)} scored"
                                   + (f" ({len(done)} resumed)" if done else ""), i + 1, len(entries))
        files = save_audit_exports(base, rows, threshold, src)
        yield dict(audit_update(rows, threshold, metric, f"audit of {len(rows)} prompts done; exported CSV and JSON",
                                len(rows), len(rows), kind="ok"), export=files)
    except Cancelled as exc:
        yield audit_update(rows, None, metric, str(exc), kind="warn")
    except SailScopeError as exc:
        compat.warn(str(exc))
        yield {"status": status_html(str(exc), "error")}
    except Exception as exc:
        log.error("audit failed:\n%s", traceback.format_exc())
        yield {"status": status_html(f"internal error: {type(exc).__name__}: {exc}", "error")}
    finally:
        ctx.cancels.finish(session, cancel)


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
            c["memorized"] = compat.make(gr.Textbox, label="Known memorized prompts (optional, one per line; enables ROC/AUC)",
                                         lines=3, elem_id="ss-audit-memorized")
            with gr.Row():
                c["seeds"] = compat.make(gr.Slider, minimum=1, maximum=8, step=1, value=4, label="Seeds per prompt",
                                         elem_id="ss-audit-seeds")
                c["steps"] = compat.make(gr.Slider, minimum=1, maximum=150, step=1, value=50, label="Steps (sets t at step 1)")
            with gr.Row():
                c["metric"] = compat.make(gr.Radio, choices=["sharpness", "wen"], value="sharpness", label="Score")
                c["name"] = compat.make(gr.Textbox, value="audit", label="Audit name (same name resumes)",
                                        elem_id="ss-audit-name")
            with gr.Row():
                c["run"] = compat.make(gr.Button, value="Run audit", variant="primary", elem_id="ss-audit-run")
                c["cancel"] = compat.make(gr.Button, value="Cancel", variant="stop", elem_id="ss-audit-cancel")
            c["cancel_note"] = compat.make(gr.HTML, value="", elem_id="ss-audit-cancel-note")
        with gr.Column(scale=3, min_width=420):
            c["status"] = compat.make(gr.HTML, value=status_html("ready"), elem_id="ss-audit-status")
            c["table"] = compat.make(gr.Dataframe, headers=AUDIT_HEADERS, interactive=False, elem_id="ss-audit-table")
            with gr.Row():
                c["histogram"] = compat.make(gr.Plot, label="Histogram", value=plots.histogram_figure([]),
                                             elem_id="ss-audit-hist")
                c["roc"] = compat.make(gr.Plot, label="ROC", value=plots.roc_figure(None, None, None), elem_id="ss-audit-roc")
            c["export"] = compat.make(gr.File, label="Export (CSV, JSON)", file_count="multiple", interactive=False,
                                      elem_id="ss-audit-export")

    def audit(values: dict[str, Any], request: Any) -> Iterator[dict[str, Any]]:
        yield from audit_handler(ctx, **values, request=request)

    bind(c["run"].click, audit, c, AUDIT_INPUTS, AUDIT_OUTPUTS,
         **compat.event_kwargs(model_job=True, progress_on=c["status"], api_name="audit"))
    wire_cancel(ctx, c["cancel"], c["cancel_note"])
    return c
