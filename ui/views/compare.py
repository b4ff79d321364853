"""Compare prompts: prompts × seeds -> step-1 sharpness bars and ``H_Δ`` spectra at step 1 on one figure, and a
table. Each item stops after step 1 (``generate(..., stop_after=1)``)."""
from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from sailscope.core.errors import Cancelled
from sailscope.core.sampling import SCHEDULERS, GenerationSettings, StepRecord, generate
from sailscope.core.detect import risk_level
from sailscope.ui import compat, plots
from sailscope.ui.plots import sig
from sailscope.ui.forms import compare_items, number, whole_number
from sailscope.ui.jobs import SPECTRUM_METHODS, AppContext, SpectrumRequest, detection_threshold, spectrum_probe
from sailscope.ui.widgets import bind, failure_update, session_of, status_html, wire_cancel


COMPARE_INPUTS = ("prompts", "seeds", "steps", "guidance", "scheduler", "method", "k")
COMPARE_OUTPUTS = ("status", "plot", "table")
# no "top eigenvalue" column: on the demo model it did not separate memorized from held-out prompts; the
# spectra stay in the plot. Numbers to 4 significant digits; the risk by core.detect.risk_level.
COMPARE_HEADERS = ["prompt", "memorization risk", "step-1 sharpness", "guidance strength (Wen)", "seed"]


def compare_table(rows: list[dict], threshold: float | None = None) -> list[list]:
    """One table row per compared item: prompt, the risk (``core.detect``; next to the prompt, so it stays on screen),
    step-1 sharpness and Wen, seed."""
    return [[r["prompt"], risk_level(r["sharpness"], threshold), sig(r["sharpness"]), sig(r["wen"]), r["seed"]]
            for r in rows]


def compare_handler(ctx: AppContext, prompts: str, seeds: str, steps: Any, guidance: Any, scheduler: str,
                    method: str, k: Any, request: Any = None) -> Iterator[dict[str, Any]]:
    """Step-1 sharpness and the ``H_Δ`` spectrum at step 1 of each prompt (and seed), on one plot."""
    session = session_of(request)
    cancel = ctx.cancels.start(session, "Compare prompts")
    rows: list[dict] = []
    try:
        pipe = ctx.models.require()
        items = compare_items(prompts, seeds, ctx.config.max_compare_items)
        spectrum = SpectrumRequest(steps=frozenset({1}), k=whole_number(k, "k"), method=method, which=("delta",))
        probe = spectrum_probe(spectrum, cancel)
        threshold, _ = detection_threshold(pipe)
        multi_seed = len({s for _, s in items}) > 1
        for i, (prompt, seed) in enumerate(items):
            if cancel.is_set():
                raise Cancelled(f"cancelled after {i} of {len(items)}")
            yield {"status": status_html(f"{i + 1}/{len(items)}: {prompt[:60]} (seed {seed})", "info", i, len(items))}
            settings = GenerationSettings(prompt=prompt, seed=seed, steps=whole_number(steps, "steps"),
                                          guidance=number(guidance, "guidance"), scheduler=scheduler, sharpness_at="first")
            record = None
            for item in generate(pipe, settings, probes=[probe], cancel=cancel, stop_after=1):
                if isinstance(item, StepRecord):
                    record = item
            label = (prompt[:28] + ("…" if len(prompt) > 28 else "")) + (f" · s{seed}" if multi_seed else "")
            rows.append({"label": label, "prompt": prompt, "seed": seed,
                         "sharpness": record.sharpness[0] if record and record.sharpness else None,
                         "wen": record.wen[0] if record else None,
                         "spectrum": (record.extras.get("spectra") or {}).get("delta") if record else None})
            yield {"plot": plots.compare_figure(rows), "table": compare_table(rows, threshold)}
        yield {"status": status_html(f"compared {len(rows)} item(s)", "ok", len(rows), len(rows)),
               "plot": plots.compare_figure(rows), "table": compare_table(rows, threshold)}
    except Exception as exc:  # cancels and user errors too: failure_update tells them apart
        yield failure_update(exc, "compare")
    finally:
        ctx.cancels.finish(session, cancel)


def compare_view(ctx: AppContext) -> dict[str, Any]:
    """The Compare prompts tab's content, wired; returns its components by name."""
    c: dict[str, Any] = {}
    with compat.make(gr.Row, equal_height=False):
        with gr.Column(scale=2, min_width=320):
            c["prompts"] = compat.make(gr.Textbox, label="Prompts (one per line)", lines=6, elem_id="ss-compare-prompts")
            c["seeds"] = compat.make(gr.Textbox, label="Seeds (comma-separated)", value="0", elem_id="ss-compare-seeds")
            with gr.Row():
                c["steps"] = compat.make(gr.Number, value=50, label="Steps", info="1–1000")
                c["guidance"] = compat.make(gr.Number, value=7.5, label="Guidance (CFG)", info="≥ 0")
            c["scheduler"] = compat.make(gr.Dropdown, choices=list(SCHEDULERS), value="ddim", label="Scheduler")
            with gr.Row():
                c["method"] = compat.make(gr.Dropdown, choices=list(SPECTRUM_METHODS), value="arnoldi",
                                          label="Spectrum method")
                c["k"] = compat.make(gr.Number, value=8, label="Eigenvalues k", info="more = slower")
            with gr.Row():
                c["run"] = compat.make(gr.Button, value="Compare", variant="primary", elem_id="ss-compare-run")
                c["cancel"] = compat.make(gr.Button, value="Cancel", variant="stop", elem_id="ss-compare-cancel")
            c["cancel_note"] = compat.make(gr.HTML, value="", elem_id="ss-compare-cancel-note")
        with gr.Column(scale=3, min_width=420):
            c["status"] = compat.make(gr.HTML, value=status_html("ready"), elem_id="ss-compare-status")
            c["plot"] = compat.make(gr.Plot, label="Spectra and step-1 sharpness", value=plots.compare_figure([]),
                                    elem_id="ss-compare-plot")
            c["table"] = compat.make(gr.Dataframe, headers=COMPARE_HEADERS, interactive=False, elem_id="ss-compare-table")

    def compare(values: dict[str, Any], request: Any) -> Iterator[dict[str, Any]]:
        yield from compare_handler(ctx, **values, request=request)

    bind(c["run"].click, compare, c, COMPARE_INPUTS, COMPARE_OUTPUTS,
         **compat.event_kwargs(model_job=True, progress_on=c["status"], api_name="compare"))
    wire_cancel(ctx, c["cancel"], c["cancel_note"])
    return c
