"""History: this browser session's finished Generate runs, newest first, as a gallery with each image's settings and
verdict (never raw JSON); *Send to Generate* restores a selected image's settings.

Entries come from each finished run's report (the Generate view's report file), read once per run; they live in
the session's state, so two browser sessions never see each other's images and a reload starts empty. The images
stay where the Generate view saved them."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import gradio as gr

from sailscope.ui import compat
from sailscope.ui.views.copies import display_image
from sailscope.ui.views.pnginfo import PASTE_FIELDS, history_paste
from sailscope.ui.widgets import VERDICT_WORDS, bind, status_html, verdict_caption

MAX_ENTRIES = 200  # per session; the oldest go first
RISK_WORDS = {level: f"{VERDICT_WORDS[level][0]} (step-1 sharpness {'at or over' if level == 'high' else 'under'} the "
                     "alarm level)" for level in ("high", "low")} | {"unknown": "no verdict (no alarm level or no step-1 sharpness)"}


def entry_from_report(path: Any) -> dict | None:
    """One history entry per image of a finished run: settings, verdict and file (None when unreadable)."""
    path = getattr(path, "name", path)
    if not path or not Path(str(path)).is_file():
        return None
    try:
        report = json.loads(Path(str(path)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    s = report.get("settings") or {}
    files = report.get("files") or {}
    detection = (report.get("detection") or {}).get("runs") or {}
    sail = report.get("sail") or {}
    images = []
    for run in ("original", "sail"):
        if files.get(run) and Path(files[run]).is_file():
            d = detection.get(run) or {}
            images.append({"run": run, "file": files[run], "risk": d.get("risk"), "sharpness": d.get("step1_sharpness")})
    if not images:
        return None
    size = f"{s['width']}x{s['height']}" if s.get("width") and s.get("height") else "model default"
    # the key is the report's own saved path: gradio hands the same file over under a cached copy's path
    return {"report": files.get("report") or str(path), "time": time.strftime("%H:%M:%S", time.localtime(Path(str(path)).stat().st_mtime)),
            "prompt": s.get("prompt", ""), "negative": s.get("negative_prompt", ""), "seed": s.get("seed"),
            "steps": s.get("steps"), "guidance": s.get("guidance"), "scheduler": s.get("scheduler"), "size": size,
            "sail": None if not sail else {"converged": (sail.get("converged") or [None])[0],
                                           "steps": (sail.get("steps") or [None])[0]},
            "images": images}


def gallery_items(entries: list[dict]) -> list:
    """Gallery items, newest first: ``(image, caption)``."""
    out = []
    for e in entries:
        for im in e["images"]:
            out.append((display_image(_load(im["file"])), caption(e, im)))
    return out


def _load(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def caption(entry: dict, image: dict) -> str:
    run = "SAIL" if image["run"] == "sail" else "original"
    risk = verdict_caption(image.get("risk") or "unknown")
    return f"{entry['time']} · seed {entry['seed']} · {run} · {risk}"


def flat(entries: list[dict]) -> list[tuple[dict, dict]]:
    """(entry, image) pairs in gallery order."""
    return [(e, im) for e in entries for im in e["images"]]


def detail_rows(entry: dict, image: dict) -> list[list[str]]:
    """The selected image's settings and verdict, as two columns."""
    rows = [["Prompt", entry["prompt"]]]
    if entry.get("negative"):
        rows.append(["Negative prompt", entry["negative"]])
    rows += [["Seed", str(entry["seed"])], ["Steps", str(entry["steps"])], ["Guidance", str(entry["guidance"])],
             ["Sampler", str(entry["scheduler"])], ["Size", entry["size"]],
             ["Image", "SAIL (mitigated)" if image["run"] == "sail" else "original"],
             ["Verdict", RISK_WORDS.get(image.get("risk") or "unknown", str(image.get("risk")))]]
    if image.get("sharpness") is not None:
        rows.append(["Step-1 sharpness", f"{image['sharpness']:.4g}"])
    if entry.get("sail") and image["run"] == "sail":
        conv = entry["sail"]["converged"]
        rows.append(["SAIL", f"{entry['sail']['steps']} step(s), "
                             + ("reached its threshold" if conv else "did not reach its threshold")])
    rows.append(["File", Path(image["file"]).name])
    return rows


def add_handler(entries: list[dict] | None, report_file: Any, reports: Sequence[str] = ()) -> dict[str, Any]:
    """A finished run's images at the top of the session's history, with every other run of the same Generate click
    (``reports``, oldest first) not listed yet: a batch's quick successive reports cannot overwrite each other."""
    entries = list(entries or [])
    added = False
    for path in [*reports, report_file]:
        e = entry_from_report(path)
        if e is None or any(x["report"] == e["report"] for x in entries):
            continue
        entries, added = [e] + entries[: MAX_ENTRIES - 1], True
    if not added:
        return {}
    n = sum(len(x["images"]) for x in entries)
    return {"entries": entries, "gallery": gallery_items(entries),
            "status": status_html(f"{n} image(s) from {len(entries)} run(s) in this session", "info")}


def select_handler(entries: list[dict] | None, index: int | None) -> dict[str, Any]:
    pairs = flat(entries or [])
    if index is None or not 0 <= index < len(pairs):
        return {"details": [], "selected": None}
    e, im = pairs[index]
    return {"details": detail_rows(e, im), "selected": im["file"]}


def send_handler(selected: str | None) -> dict[str, Any]:
    if not selected or not Path(selected).is_file():
        return {"status": status_html("select an image first", "warn")}
    values = history_paste(selected)
    return {**values, "tabs": gr.update(selected="generate"),
            "status": status_html("sent to Generate: " + ", ".join(sorted(values)), "ok")}


def history_view(generate: dict[str, Any], tabs: Any) -> dict[str, Any]:
    """The History tab; fed by the Generate view's report file (``generate["report_file"]``)."""
    c: dict[str, Any] = {name: generate[name] for name in PASTE_FIELDS if name in generate}
    c["tabs"], c["report_file"], c["generate_state"] = tabs, generate["report_file"], generate["state"]
    c["status"] = compat.make(gr.HTML, value=status_html("no images yet in this session"), elem_id="ss-history-status")
    with compat.make(gr.Row, equal_height=False):
        with gr.Column(scale=3, min_width=420):
            c["gallery"] = compat.make(gr.Gallery, label="This session's images (newest first)", columns=4,
                                       height="auto", elem_id="ss-history-gallery")
        with gr.Column(scale=2, min_width=320):
            c["details"] = compat.make(gr.Dataframe, headers=["setting", "value"], interactive=False, wrap=True,
                                       elem_id="ss-history-details")
            c["send"] = compat.make(gr.Button, value="Send to Generate", elem_id="ss-history-send")
    c["entries"] = gr.State([])
    c["selected"] = gr.State(None)

    def add(values: dict[str, Any], request: Any) -> dict[str, Any]:
        reports = (values["generate_state"] or {}).get("reports") or ()
        return add_handler(values["entries"], values["report_file"], reports) or {"status": gr.update()}  # {}: no change

    def send(values: dict[str, Any], request: Any) -> dict[str, Any]:
        return send_handler(values["selected"])

    bind(c["report_file"].change, add, c, ("entries", "report_file", "generate_state"), ("entries", "gallery", "status"),
         **compat.event_kwargs(queue=False, show_progress="hidden"))
    bind(c["send"].click, send, c, ("selected",), PASTE_FIELDS + ("tabs", "status"), **compat.event_kwargs(queue=False))

    def select(entries: list, evt: gr.SelectData) -> tuple:
        out = select_handler(entries, getattr(evt, "index", None))
        return out["details"], out["selected"]

    c["gallery"].select(select, [c["entries"]], [c["details"], c["selected"]], **compat.event_kwargs(queue=False))
    return c
