"""Is it a copy? The nearest known image of each generated image, and whether several seeds give the same image.

Two places show it: a panel under the Generate view (:func:`copies_panel`: after each finished run, the nearest
known images of its original and SAIL images; a button checks the same prompt over several seeds) and the
*Check for copies* tab (:func:`copies_view`: a prompt over several seeds, or an uploaded image). The known images
are the loaded model's memorized set when its folder ships one (the demo model) and the folder the server was
started with (``sailscope serve --reference-dir DIR``), never a path typed in the browser. The checks are
``core.copies``; this module only lays out and formats.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import numpy as np
from PIL import Image

from sailscope.core.copies import CopyCheck, ReferenceSet, check_copies, references_for
from sailscope.core.errors import SailScopeError, UserInputError
from sailscope.core.sampling import GenerationSettings, run_generation
from sailscope.ui import compat
from sailscope.ui.forms import number, whole_number
from sailscope.ui.jobs import AppContext
from sailscope.ui.widgets import bind, failure_update, session_of, status_html, wire_cancel


DISPLAY_SIDE = 192  # small images are shown at least this large, nearest-neighbour (pixels stay sharp)
MAX_SEEDS = 8
NEAREST_HEADERS = ["image", "nearest known image", "distance", "copy?", "its caption"]


@dataclass
class ReferenceProvider:
    """The known images for the loaded model, read once per model (``reference_dir``/``reference_tau``: what
    ``sailscope serve`` was given)."""

    reference_dir: str | None = None
    reference_tau: float | None = None
    _cache: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, ctx: AppContext) -> ReferenceSet | None:
        info = ctx.models.info
        folder = Path(info.path) if info is not None and info.path and Path(info.path).is_dir() else None
        key = str(folder)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = references_for(folder, self.reference_dir, self.reference_tau)
            return self._cache[key]


# ----------------------------------------------------------------------------------------------
# Formatting (core numbers -> text and tables)
# ----------------------------------------------------------------------------------------------
def display_image(image: Any) -> Image.Image:
    """An image for the page: small ones enlarged by an integer factor, nearest-neighbour."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(
        np.clip(np.round(np.asarray(image, np.float64) * (255 if np.asarray(image).dtype != np.uint8 else 1)), 0, 255)
        .astype(np.uint8))
    side = max(im.size)
    if side < DISPLAY_SIDE:
        f = -(-DISPLAY_SIDE // side)
        im = im.resize((im.width * f, im.height * f), Image.NEAREST)
    return im


def _yes_no(copy: bool | None) -> str:
    return "—" if copy is None else ("yes" if copy else "no")


def nearest_rows(labels: list[str], check: CopyCheck) -> list[list]:
    """One table row per image: its nearest known image, the distance, the verdict, that image's caption (last:
    long captions must not push the numbers off screen)."""
    rows = []
    for label, matches in zip(labels, check.nearest):
        if matches:
            m = matches[0]
            rows.append([label, m.name, f"{m.distance:.3f}", _yes_no(m.copy), m.caption or ""])
    return rows


def agreement_rows(check: CopyCheck) -> list[list]:
    """The seeds' pairwise distance matrix (3 decimals), first column the seed."""
    ag = check.agreement
    return [[f"seed {s}"] + [("—" if i == j else f"{ag.distances[i][j]:.3f}") for j in range(len(ag.seeds))]
            for i, s in enumerate(ag.seeds)]


def explain(check: CopyCheck, references: ReferenceSet | None) -> str:
    """The plain-words summary plus how it is computed (markdown)."""
    how = ("Distance = root-mean-square pixel difference after both images are averaged onto 64 × 64 "
           "(0 = identical, 1 = black vs white).")
    if check.tau is not None:
        how += f" Same image below {check.tau:.3g} ({check.tau_source})."
    else:
        how += " No copy threshold is known for these images: judge by eye."
    known = references.description if references is not None and len(references) else "no known images"
    return f"**{check.summary()}**\n\n<small>Compared with: {known}. {how}</small>"


def nearest_gallery(check: CopyCheck, references: ReferenceSet | None, labels: list[str]) -> list:
    if references is None:
        return []
    out = []
    for label, matches in zip(labels, check.nearest):
        if matches:
            m = matches[0]
            out.append((display_image(references.image(m.index)), f"{label}: nearest {m.name} ({m.distance:.3f})"))
    return out


# ----------------------------------------------------------------------------------------------
# Handlers
# ----------------------------------------------------------------------------------------------
def image_check_handler(ctx: AppContext, refs: ReferenceProvider, image: Any) -> dict[str, Any]:
    """An uploaded image against the known images (no model work)."""
    if image is None:
        return {"status": status_html("upload an image to compare", "info")}
    try:
        references = refs.get(ctx)
        check = check_copies([image], [0], references)
        return {"status": status_html("compared", "ok"), "summary": explain(check, references),
                "nearest_table": nearest_rows(["uploaded image"], check),
                "nearest_gallery": nearest_gallery(check, references, ["uploaded image"])}
    except SailScopeError as exc:
        return {"status": status_html(str(exc), "error")}


def report_check_handler(ctx: AppContext, refs: ReferenceProvider, report_file: Any) -> dict[str, Any]:
    """After a Generate run: the nearest known images of its original and SAIL images (read from its report)."""
    path = getattr(report_file, "name", report_file)
    if not path or not Path(str(path)).is_file():
        return {}
    try:
        files = json.loads(Path(str(path)).read_text(encoding="utf-8")).get("files") or {}
        labels = [run for run in ("original", "sail") if files.get(run) and Path(files[run]).is_file()]
        if not labels:
            return {}
        references = refs.get(ctx)
        images = [Image.open(files[run]).convert("RGB") for run in labels]
        check = check_copies(images, list(range(len(images))), references)
        if references is None or not len(references):
            return {"summary": "No known images to compare with (the server can be given a folder: "
                               "`sailscope serve --reference-dir DIR`)."}
        lines = []
        for run, matches in zip(labels, check.nearest):
            m = matches[0]
            verdict = {True: "a copy of", False: "not a copy; nearest is", None: "nearest known image:"}[m.copy]
            lines.append(f"**{'SAIL' if run == 'sail' else 'Original'}**: {verdict} `{m.name}` "
                         f"(distance {m.distance:.3f})")
        return {"summary": "  \n".join(lines) + f"\n\n<small>Compared with: {references.description}.</small>",
                "nearest_table": nearest_rows(labels, check),
                "nearest_gallery": nearest_gallery(check, references, labels)}
    except (OSError, ValueError, SailScopeError) as exc:
        return {"summary": f"could not compare: {exc}"}


def seeds_check_handler(ctx: AppContext, refs: ReferenceProvider, prompt: str, seed: Any, n_seeds: Any, steps: Any,
                        guidance: Any, request: Any = None, *, negative: str = "", scheduler: str = "ddim",
                        width: Any = None, height: Any = None) -> Iterator[dict[str, Any]]:
    """Generate the prompt at ``n_seeds`` consecutive seeds (one batched run) and check both: each image's
    nearest known image, and whether the seeds agree."""
    session = session_of(request)
    cancel = ctx.cancels.start(session)
    try:
        pipe = ctx.models.require()
        first = whole_number(seed, "seed")
        if first is None or first < 0:
            raise UserInputError("seed must be a whole number ≥ 0")
        n = whole_number(n_seeds, "number of seeds")
        if not 2 <= n <= MAX_SEEDS:
            raise UserInputError(f"number of seeds must be between 2 and {MAX_SEEDS}, got {n}")
        w = whole_number(width, "width", True) or None
        h = whole_number(height, "height", True) or None
        settings = GenerationSettings(prompt=prompt or "", negative_prompt=negative or "", seed=first, num_images=n,
                                      steps=whole_number(steps, "steps"), guidance=number(guidance, "guidance"),
                                      scheduler=scheduler or "ddim", width=w, height=h, sharpness_at="none")
        yield {"status": status_html(f"generating seeds {first}–{first + n - 1}…", "info")}
        result = run_generation(pipe, settings, cancel=cancel)
        seeds = [first + i for i in range(n)]
        references = refs.get(ctx)
        check = check_copies(result.images, seeds, references)
        labels = [f"seed {s}" for s in seeds]
        yield {"status": status_html(f"checked {n} seeds in {result.seconds:.1f} s", "ok"),
               "summary": explain(check, references),
               "gallery": [(display_image(im), label) for im, label in zip(result.images, labels)],
               "nearest_table": nearest_rows(labels, check),
               "nearest_gallery": nearest_gallery(check, references, labels),
               "agreement": agreement_rows(check)}
    except Exception as exc:  # cancels and user errors too: failure_update tells them apart
        yield failure_update(exc, "copy check")
    finally:
        ctx.cancels.finish(session, cancel)


# ----------------------------------------------------------------------------------------------
# Layout and wiring
# ----------------------------------------------------------------------------------------------
def _results(c: dict[str, Any], prefix: str) -> None:
    c["summary"] = compat.make(gr.Markdown, value="", elem_id=f"{prefix}-summary")
    c["nearest_table"] = compat.make(gr.Dataframe, headers=NEAREST_HEADERS, interactive=False,
                                     elem_id=f"{prefix}-nearest-table", wrap=True)
    c["nearest_gallery"] = compat.make(gr.Gallery, label="Nearest known images", columns=4, height="auto",
                                       elem_id=f"{prefix}-nearest-gallery")


def copies_panel(ctx: AppContext, generate: dict[str, Any], refs: ReferenceProvider) -> dict[str, Any]:
    """Under the Generate view: the nearest known images of each finished run (updated from its report)."""
    c: dict[str, Any] = {"report_file": generate["report_file"]}
    with compat.make(gr.Accordion, label="Is it a copy? Nearest known images", open=True, elem_id="ss-copies-panel"):
        _results(c, "ss-copies-panel")
        compat.make(gr.Markdown, value="<small>Several seeds of the same prompt: the *Check for copies* tab.</small>")

    def on_report(values: dict[str, Any], request: Any) -> dict[str, Any]:
        return report_check_handler(ctx, refs, values["report_file"]) or {"summary": gr.update()}  # {}: no change

    bind(c["report_file"].change, on_report, c, ("report_file",), ("summary", "nearest_table", "nearest_gallery"),
         **compat.event_kwargs(queue=False, show_progress="hidden"))
    return c


COPIES_INPUTS = ("prompt", "seed", "n_seeds", "steps", "guidance")
COPIES_OUTPUTS = ("status", "summary", "gallery", "nearest_table", "nearest_gallery", "agreement")


def copies_view(ctx: AppContext, refs: ReferenceProvider) -> dict[str, Any]:
    """The *Check for copies* tab: a prompt over several seeds, or an uploaded image, against the known images."""
    c: dict[str, Any] = {}
    with compat.make(gr.Row, equal_height=False):
        with gr.Column(scale=2, min_width=320):
            c["prompt"] = compat.make(gr.Textbox, label="Prompt", lines=2, elem_id="ss-copies-prompt")
            with gr.Row():
                c["seed"] = compat.make(gr.Number, label="First seed", value=0, precision=0, elem_id="ss-copies-seed")
                c["n_seeds"] = compat.make(gr.Slider, minimum=2, maximum=MAX_SEEDS, step=1, value=4,
                                           label="Seeds", elem_id="ss-copies-n")
            with gr.Row():
                c["steps"] = compat.make(gr.Slider, minimum=1, maximum=150, step=1, value=50, label="Steps")
                c["guidance"] = compat.make(gr.Slider, minimum=0, maximum=20, step=0.5, value=7.5, label="Guidance")
            with gr.Row():
                c["run"] = compat.make(gr.Button, value="Check seeds", variant="primary", elem_id="ss-copies-run")
                c["cancel"] = compat.make(gr.Button, value="Cancel", variant="stop", elem_id="ss-copies-cancel")
            c["cancel_note"] = compat.make(gr.HTML, value="", elem_id="ss-copies-cancel-note")
            c["upload"] = compat.make(gr.Image, label="…or an image to compare", type="numpy", elem_id="ss-copies-upload")
            refs_now = refs.get(ctx) if ctx.models.pipe is not None else None
            known = refs_now.description if refs_now is not None and len(refs_now) else \
                "no known images (start the server with --reference-dir DIR to add a folder)"
            compat.make(gr.Markdown, value=f"<small>Known images: {known}.</small>", elem_id="ss-copies-known")
        with gr.Column(scale=3, min_width=420):
            c["status"] = compat.make(gr.HTML, value=status_html("ready"), elem_id="ss-copies-status")
            c["gallery"] = compat.make(gr.Gallery, label="Generated (one per seed)", columns=4, height="auto",
                                       elem_id="ss-copies-gallery")
            _results(c, "ss-copies")
            c["agreement"] = compat.make(gr.Dataframe, label="Distances between the seeds' images", interactive=False,
                                         elem_id="ss-copies-agreement")

    def run(values: dict[str, Any], request: Any) -> Iterator[dict[str, Any]]:
        yield from seeds_check_handler(ctx, refs, **values, request=request)

    def upload(values: dict[str, Any], request: Any) -> dict[str, Any]:
        return image_check_handler(ctx, refs, values["upload"])

    bind(c["run"].click, run, c, COPIES_INPUTS, COPIES_OUTPUTS,
         **compat.event_kwargs(model_job=True, progress_on=c["status"], api_name="check_copies"))
    bind(c["upload"].upload if hasattr(c["upload"], "upload") else c["upload"].change, upload, c, ("upload",),
         ("status", "summary", "nearest_table", "nearest_gallery"), **compat.event_kwargs(queue=False))
    wire_cancel(ctx, c["cancel"], c["cancel_note"])
    return c
