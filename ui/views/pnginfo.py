"""PNG Info: drop a PNG (from this app, the CLI, A1111 or ComfyUI with A1111 infotext) and read its settings;
*Send to Generate* fills the Generate form with them. The parsing is ``core.io.pnginfo`` (keys from
``core.io.infotext``); this module lays out and maps parsed settings onto the form's fields."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from sailscope.core.io.pnginfo import PngInfo, read_pnginfo
from sailscope.core.mitigation.picks import PICK_KEY
from sailscope.ui import compat
from sailscope.ui.widgets import bind, status_html

# registry name (core.io.infotext.SETTINGS) -> Generate form field
SAIL_FIELDS = {"objective": "sail_objective", "threshold": "sail_threshold", "trigger": "sail_trigger",
               "max_steps": "sail_max_steps", "candidates": "sail_candidates", "lr": "sail_lr", "rounds": "sail_rounds"}
GENERATION_FIELDS = {"prompt": "prompt", "negative_prompt": "negative", "seed": "seed", "steps": "steps",
                     "guidance": "guidance", "width": "width", "height": "height", "scheduler": "scheduler"}
PASTE_FIELDS = tuple(GENERATION_FIELDS.values()) + ("sail_on",) + tuple(SAIL_FIELDS.values())


def form_values(info: PngInfo) -> dict[str, Any]:
    """The Generate form's values an image's infotext records (fields it does not record are left out)."""
    out = {GENERATION_FIELDS[k]: v for k, v in info.generation.items() if k in GENERATION_FIELDS}
    if "sail" in info.sail or info.params:  # an image made without SAIL records no SAIL key: SAIL off
        out["sail_on"] = bool(info.sail.get("sail", False))
    for name, fld in SAIL_FIELDS.items():
        if name in info.sail:
            value = info.sail[name]
            out[fld] = "none" if (name == "trigger" and value is None) else (
                str(value) if name in ("threshold", "trigger") else value)
    return out


def settings_rows(info: PngInfo) -> list[list[str]]:
    """What the image records, as two columns (key, value), prompt first; no raw JSON."""
    rows = [["Prompt", info.generation.get("prompt", "")]]
    if info.generation.get("negative_prompt"):
        rows.append(["Negative prompt", info.generation["negative_prompt"]])
    rows += [[k, v] for k, v in info.params.items()]
    return rows


def pnginfo_handler(file: Any) -> dict[str, Any]:
    """Read an uploaded image's infotext: preview, the settings table, a note, and the parsed state."""
    path = getattr(file, "name", file)
    if not path:
        return {"status": status_html("drop a PNG to read its settings", "info"), "table": [], "state": {},
                "preview": None, "text": ""}
    try:
        info = read_pnginfo(str(path))
    except (OSError, ValueError) as exc:
        return {"status": status_html(f"could not read the image: {exc}", "error"), "table": [], "state": {},
                "preview": None, "text": ""}
    if info.empty:
        return {"status": status_html("this image has no generation settings (no 'parameters' text)", "warn"),
                "table": [], "state": {}, "preview": str(path), "text": ""}
    notes = []
    if info.unknown_sampler:
        notes.append(f"sampler {info.unknown_sampler!r} is not available here: Generate keeps its own")
    if PICK_KEY in info.params:
        notes.append(f"this is SAIL candidate {info.params[PICK_KEY]} of {info.params.get('SAIL candidates', '?')}: "
                     "Send to Generate restores the settings; the panel *SAIL candidates to pick from* re-derives "
                     "the candidate")
    values = form_values(info)
    return {"status": status_html("read " + ", ".join(sorted(values)) + (" · " + "; ".join(notes) if notes else ""),
                                  "ok"),
            "table": settings_rows(info), "state": values, "preview": str(path), "text": info.text}


def send_handler(values: dict[str, Any] | None) -> dict[str, Any]:
    """The Generate form's fields from the read image (those it records) and the switch to the Generate tab."""
    values = dict(values or {})
    if not values:
        return {"status": status_html("read a PNG first", "warn")}
    return {**{k: v for k, v in values.items() if k in PASTE_FIELDS},
            "tabs": gr.update(selected="generate"),
            "status": status_html("sent to Generate: " + ", ".join(sorted(values)), "ok")}


def pnginfo_view(generate: dict[str, Any], tabs: Any) -> dict[str, Any]:
    """The PNG Info tab; ``generate``: the Generate view's components (the form's fields), ``tabs``: the app's tabs."""
    c: dict[str, Any] = {name: generate[name] for name in PASTE_FIELDS if name in generate}
    c["tabs"] = tabs
    with compat.make(gr.Row, equal_height=False):
        with gr.Column(scale=2, min_width=320):
            c["file"] = compat.make(gr.File, label="PNG with generation settings", file_types=["image"],
                                    elem_id="ss-pnginfo-file")
            c["preview"] = compat.make(gr.Image, label="Image", type="filepath", interactive=False,
                                       elem_id="ss-pnginfo-preview")
        with gr.Column(scale=3, min_width=420):
            c["status"] = compat.make(gr.HTML, value=status_html("drop a PNG to read its settings"),
                                      elem_id="ss-pnginfo-status")
            c["table"] = compat.make(gr.Dataframe, headers=["setting", "value"], interactive=False, wrap=True,
                                     elem_id="ss-pnginfo-table")
            c["send"] = compat.make(gr.Button, value="Send to Generate", variant="primary", elem_id="ss-pnginfo-send")
            with compat.make(gr.Accordion, label="Raw infotext", open=False):
                c["text"] = compat.make(gr.Textbox, lines=4, interactive=False, show_label=False,
                                        elem_id="ss-pnginfo-text")
    c["state"] = gr.State({})

    def read(values: dict[str, Any], request: Any) -> dict[str, Any]:
        return pnginfo_handler(values["file"])

    def send(values: dict[str, Any], request: Any) -> dict[str, Any]:
        return send_handler(values["state"])

    bind(c["file"].change, read, c, ("file",), ("status", "table", "state", "preview", "text"),
         **compat.event_kwargs(queue=False))
    bind(c["send"].click, send, c, ("state",), PASTE_FIELDS + ("tabs", "status"), **compat.event_kwargs(queue=False))
    return c


def history_paste(path: str | Path) -> dict[str, Any]:
    """The Generate form's values recorded in an image file (the History tab's *Send to Generate*)."""
    return form_values(read_pnginfo(str(path)))
