"""SAIL candidates to pick from, under the Generate view: after a run, SAIL's best ``k`` distinct noises for the
same seed and settings (``core.mitigation.picks``), each sampled, saved with the infotext that reproduces it
(seed, SAIL settings with the search's candidate count and stop rule, and the pick's index), and shown in a
gallery; selecting one shows its numbers and its file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from sailscope.core.errors import Cancelled, UserInputError
from sailscope.core.mitigation import SailResult, SailSettings, SailStep
from sailscope.core.mitigation.picks import MAX_PICKS, candidate_fields, iter_sail_candidates
from sailscope.core.sampling import GenerationSettings, run_generation
from sailscope.ui import compat
from sailscope.ui.forms import whole_number
from sailscope.ui.jobs import AppContext, detection_threshold
from sailscope.ui.outputs import infotext, new_stem, save_image
from sailscope.ui.views.copies import display_image
from sailscope.ui.widgets import bind, failure_update, session_of, status_html, wire_cancel


PICKS_INPUTS = ("report_file", "k")
PICKS_OUTPUTS = ("status", "gallery", "picks")


def settings_from_report(path: Any) -> tuple[GenerationSettings, SailSettings | None]:
    """The generation settings (one image, no sharpness) and SAIL settings a Generate report records."""
    path = getattr(path, "name", path)
    if not path or not Path(str(path)).is_file():
        raise UserInputError("generate an image first: the candidates use its prompt, seed and settings")
    report = json.loads(Path(str(path)).read_text(encoding="utf-8"))
    s = dict(report.get("settings") or {})
    if not s:
        raise UserInputError("the last run's report has no settings")
    if isinstance(s.get("sharpness_at"), list):
        s["sharpness_at"] = tuple(s["sharpness_at"])
    known = set(GenerationSettings.__dataclass_fields__)
    settings = GenerationSettings(**({k: v for k, v in s.items() if k in known} | {"num_images": 1,
                                                                                      "sharpness_at": "none"}))
    sail = report.get("sail_settings")
    return settings, (SailSettings(**{k: v for k, v in sail.items() if k in SailSettings.__dataclass_fields__})
                      if sail else None)


def pick_caption(c: dict) -> str:
    state = "reached the threshold" if c["converged"] else "best found (threshold not reached)"
    where = "the seed's own noise" if c["index"] == 0 else f"fresh noise {c['index']}"
    return f"#{c['rank'] + 1}: {where}, {c['steps']} step(s), {state}"


def picks_handler(ctx: AppContext, report_file: Any, k: Any, request: Any = None) -> Iterator[dict[str, Any]]:
    """SAIL's ``k`` best distinct noises for the last run's seed; each sampled and saved with its infotext."""
    session = session_of(request)
    cancel = ctx.cancels.start(session)
    try:
        pipe = ctx.models.require()
        n = whole_number(k, "candidates")
        settings, sail = settings_from_report(report_file)
        note = "" if sail is not None else " (the last run had SAIL off: SAIL's default settings)"
        sail = sail or SailSettings()
        yield {"status": status_html(f"searching {n} SAIL candidates for seed {settings.seed}{note}…", "info")}
        cands, result = [], None
        for item in iter_sail_candidates(pipe, settings, sail, n, cancel=cancel):
            if isinstance(item, SailStep):
                yield {"status": status_html(f"SAIL search: step {item.step} of ≤ {item.max_steps}"
                                             + (f" (round {item.round + 1})" if item.round else ""), "info")}
            elif isinstance(item, SailResult):
                result = item
            else:
                cands = item
        info = getattr(pipe, "sailscope_info", None)
        thr, src = detection_threshold(pipe)
        stem = new_stem(ctx.config.outputs, settings.seed)
        base = dict(settings.to_dict(), model=getattr(info, "name", None))
        gallery, picks = [], []
        for j, c in enumerate(cands):
            if cancel.is_set():
                raise Cancelled(f"cancelled after {j} of {len(cands)} candidate images")
            yield {"status": status_html(f"sampling candidate {j + 1} of {len(cands)}…", "info", j, len(cands))}
            g = run_generation(pipe, settings, x_T=c.x_T, cancel=cancel)
            image = g.images[0]
            text = infotext(dict(base, width=image.width, height=image.height),
                            {"Model": getattr(info, "name", None), **candidate_fields(c, result)})
            path = save_image(stem, f"sail-pick{c.index}", image, text)
            entry = c.to_dict() | {"file": str(path)}
            picks.append(entry)
            gallery.append((display_image(image), pick_caption(entry)))
            yield {"gallery": list(gallery), "picks": list(picks)}
        yield {"status": status_html(f"{len(picks)} SAIL candidate(s) for seed {settings.seed}{note}; select one "
                                     "to see its numbers and file (each PNG records what reproduces it)", "ok"),
               "gallery": gallery, "picks": picks}
    except Exception as exc:  # cancels and user errors too: failure_update tells them apart
        yield failure_update(exc, "SAIL candidates")
    finally:
        ctx.cancels.finish(session, cancel)


def pick_detail(picks: list[dict] | None, index: int | None) -> tuple[str, Any]:
    """The selected candidate's numbers (markdown) and its file."""
    if not picks or index is None or not 0 <= index < len(picks):
        return "", None
    c = picks[index]
    text = (f"**{pick_caption(c)}** · SAIL loss {c['loss']:.4g} · round {c['round'] + 1}  \n"
            f"<small>Reproduce: seed, these settings, SAIL with {c['sail']['candidates']} candidates and stop "
            f"'all', pick {c['index']} (all in the PNG's infotext).</small>")
    return text, c["file"]


def picks_panel(ctx: AppContext, generate: dict[str, Any]) -> dict[str, Any]:
    """Under the Generate view: a button for SAIL candidates of the last run, their gallery and the picked one."""
    c: dict[str, Any] = {"report_file": generate["report_file"]}
    with compat.make(gr.Accordion, label="SAIL candidates to pick from", open=False, elem_id="ss-picks-panel"):
        with gr.Row():
            c["k"] = compat.make(gr.Slider, minimum=2, maximum=min(8, MAX_PICKS), step=1, value=4,
                                 label="Candidates", elem_id="ss-picks-k")
            c["run"] = compat.make(gr.Button, value="Show SAIL candidates for the last image", variant="secondary",
                                   elem_id="ss-picks-run")
            c["cancel"] = compat.make(gr.Button, value="Cancel", variant="stop", elem_id="ss-picks-cancel", scale=0)
        c["cancel_note"] = compat.make(gr.HTML, value="", elem_id="ss-picks-cancel-note")
        c["status"] = compat.make(gr.HTML, value="", elem_id="ss-picks-status")
        c["gallery"] = compat.make(gr.Gallery, label="SAIL candidates (best first)", columns=4, height="auto",
                                   elem_id="ss-picks-gallery")
        c["detail"] = compat.make(gr.Markdown, value="", elem_id="ss-picks-detail")
        c["file"] = compat.make(gr.File, label="Picked image (PNG with infotext)", interactive=False,
                                elem_id="ss-picks-file")
        c["picks"] = gr.State([])

    def run(values: dict[str, Any], request: Any) -> Iterator[dict[str, Any]]:
        yield from picks_handler(ctx, values["report_file"], values["k"], request)

    bind(c["run"].click, run, c, PICKS_INPUTS, PICKS_OUTPUTS,
         **compat.event_kwargs(model_job=True, progress_on=c["status"], api_name="sail_candidates"))
    wire_cancel(ctx, c["cancel"], c["cancel_note"])

    def select(picks: list, evt: gr.SelectData) -> tuple[str, Any]:
        return pick_detail(picks, getattr(evt, "index", None))

    c["gallery"].select(select, [c["picks"]], [c["detail"], c["file"]], **compat.event_kwargs(queue=False))
    return c
