"""Generate: one prompt sampled with live metrics, the SAIL pair, the risk badge, spectra and the report.

``generate_handler(ctx, form)`` runs one job (plain or SAIL pair) and yields ``{name: value}`` updates for
:data:`GENERATE_OUTPUTS`; :func:`generate_panel` lays the components out under the names of
:data:`~sailscope.ui.forms.GENERATE_FIELDS` and :data:`GENERATE_OUTPUTS`; :func:`wire_generate` connects them.
"""
from __future__ import annotations

import logging
import random
import time
import traceback
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from sailscope.core.choices import SCHEDULER_LABELS
from sailscope.core.errors import Cancelled, NonFiniteError, SailScopeError, UserInputError
from sailscope.core.io.files import write_json_atomic
from sailscope.core.sampling import MAX_STEPS, SCHEDULERS, check_settings_for
from sailscope.ui import compat, plots
from sailscope.ui.forms import GENERATE_FIELDS, MAX_BATCH_COUNT, SHARPNESS_CHOICES, GenerateForm, whole_number
from sailscope.ui.jobs import (
    SPECTRUM_METHODS, AppContext, JobView, detection_for_run, free_memory, in_background, noise_checker, run_job,
)
from sailscope.ui.outputs import save_outputs
from sailscope.ui.widgets import (
    bind, risk_html, session_of, status_html, verdict_caption, wire_busy_note, wire_cancel,
)

log = logging.getLogger("sailscope.ui")

IMAGE_HEIGHT = 400  # px on screen: a 64-px demo image is shown about 6× larger
GENERATE_OUTPUTS = ("status", "risk", "image_original", "image_sail", "image_slider", "metrics_plot", "spectrum_plot",
                    "spectrum_step", "sail_plot", "report_file", "state", "queue_note", "sail_box", "batch_gallery")


# ----------------------------------------------------------------------------------------------
# Handlers
# ----------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A Generate click's images (batch count): the seeds, which one is sampling, and the finished images with
    their captions for the batch gallery."""

    seeds: list[int]
    index: int = 0
    gallery: list[tuple[str, str]] = field(default_factory=list)  # (file, caption)
    levels: list[str] = field(default_factory=list)  # each finished image's verdict
    reports: list[str] = field(default_factory=list)  # each finished image's report
    started: float = field(default_factory=time.perf_counter)

    @property
    def count(self) -> int:
        return len(self.seeds)

    def label(self, message: str) -> str:
        """``message`` prefixed with the image's place in the batch (unchanged for a single image)."""
        if self.count == 1:
            return message
        return f"image {self.index + 1} of {self.count} (seed {self.seeds[self.index]}) · {message}"

    def add(self, view: JobView, threshold: tuple[float | None, str]) -> None:
        """A finished job's images into the gallery, captioned with seed, run and verdict."""
        thr, _ = threshold
        for run in view.runs:
            if not view.files.get(run):
                continue
            s1, _ = view.step1(run)
            name = "SAIL not needed" if view.sail_not_needed else "SAIL" if run == "sail" else "original"
            level = view.verdict(run, thr)
            self.gallery.append((view.files[run], f"seed {view.settings.seed} · {name} · {verdict_caption(level, s1, thr)}"))
            if run == view.runs[0]:
                self.levels.append(level)
        if view.files.get("report"):
            self.reports.append(view.files["report"])

    def summary(self) -> str:
        counts = {k: self.levels.count(k) for k in ("high", "low", "sharp-noise", "uncalibrated", "unknown")
                  if k in self.levels}
        words = {"high": "likely copies", "low": "without sign of memorization", "uncalibrated": "not calibrated",
                 "sharp-noise": "without a verdict at a sharp noise", "unknown": "without a verdict"}
        return ", ".join(f"{n} {words[k]}" for k, n in counts.items())


def render_generate(view: JobView | None, threshold: tuple[float | None, str], status: str, kind: str = "info",
                    final: bool = False, spectrum_run: str | None = None, with_report: bool = True,
                    batch: Batch | None = None) -> dict[str, Any]:
    """A :class:`JobView` -> ``{output name: value}`` for the outputs that changed (``batch``: the status names the
    image's place, the progress bar covers the whole batch, the gallery holds the finished images)."""
    batch = batch or Batch(seeds=[view.settings.seed] if view is not None else [0])
    if view is None:
        return {"status": status_html(batch.label(status), kind)}
    thr, src = threshold
    done, total, _ = view.progress()
    s1, _ = view.step1("original")
    after, _ = view.step1("sail")
    if s1 is None:
        s1, after = after, None
    if view.sail_not_needed:
        after = None  # the same image: the verdict says SAIL was not needed
    out: dict[str, Any] = {
        "status": status_html(batch.label(status), kind, batch.index * total + done, batch.count * total),
        "risk": risk_html(s1, thr, src, after, mismatch=view.mismatch, calibrated=view.calibrated,
                          sail_not_needed=view.sail_not_needed, noise=view.noise),
        "metrics_plot": plots.metrics_figure({r: view.records.get(r, []) for r in view.runs}, view.settings.steps, thr,
                                             "detection threshold"),
    }
    # the spectrum and SAIL plots are rebuilt only when their data changed (live updates stay light)
    n_spectra, n_sail = sum(len(v) for v in view.spectra.values()), len(view.sail_steps)
    if n_spectra and (final or view.shown.get("spectra") != n_spectra):
        view.shown["spectra"] = n_spectra
        run = spectrum_run if spectrum_run in view.spectra else ("original" if "original" in view.spectra else "sail")
        step, spectra = view.spectrum_for(run, None)
        out["spectrum_plot"] = plots.spectrum_figure(spectra, step)
        steps = view.spectrum_steps(run)
        out["spectrum_step"] = gr.update(minimum=min(steps), maximum=max(steps) if len(steps) > 1 else min(steps) + 1,
                                         value=step, interactive=len(steps) > 1)
    if view.sail is not None and (final or view.shown.get("sail") != n_sail):
        view.shown["sail"] = n_sail
        out["sail_plot"] = plots.sail_loss_figure(view.sail_trace(), view.sail_threshold(), view.sail_trigger())
    if final:
        for run in ("original", "sail"):
            if view.files.get(run):
                out[f"image_{run}"] = view.files[run]
        # SAIL not needed: one image on screen (the SAIL file, same pixels, still records SAIL's settings)
        out["sail_box"] = gr.update(visible=view.sail is not None and not (view.sail_not_needed
                                                                          and view.files.get("original")))
        if view.files.get("original") and view.files.get("sail") and not view.sail_not_needed:
            out["image_slider"] = gr.update(value=(view.files["original"], view.files["sail"]), visible=True)
        if with_report:
            out["report_file"] = view.files.get("report") or None
        # every report of the click so far: History adds them all, whichever report_file change it sees
        reports = batch.reports + [r for r in [view.files.get("report")] if r and r not in batch.reports]
        out["state"] = {"spectra": view.spectra, "steps": view.settings.steps, "reports": reports}
        if batch.count > 1:
            out["batch_gallery"] = gr.update(value=list(batch.gallery), visible=True)
    return out


STARTING_NOTE_AFTER_S = 0.3  # a job whose first step comes later than this shows "starting…" first


def sample_one(ctx: AppContext, pipe: Any, view: JobView, spectrum: Any, threshold: tuple[float | None, str],
               session: str, cancel: Any, batch: Batch) -> Iterator[dict[str, Any]]:
    """Stream one image's job (plain or SAIL pair) into ``view``: "starting…" when the batch's first job has no
    step within :data:`STARTING_NOTE_AFTER_S`, live plots every ``live_interval`` seconds (the first step at once),
    files saved as soon as each run exists (spectra, when asked, come after the images), the report rewritten at
    the end. Ends with the image's final update."""
    def render(message: str, kind: str = "info", final: bool = False) -> dict[str, Any]:
        return render_generate(view, threshold, message, kind, final=final, batch=batch)

    settings, info = view.settings, getattr(pipe, "sailscope_info", None)
    last = 0.0
    # the job runs in a worker thread: drawing and sending one update overlap the next steps
    check = noise_checker(pipe, settings, view.references, threshold[0], view.mismatch, cancel)
    job = run_job(pipe, settings, sail=view.sail, compare=view.compare, spectrum=spectrum, cancel=cancel,
                  check_noise=check)
    with closing(in_background(job, cancel)) as batches:  # sampling starts now, before the first update is sent
        if batch.index == 0:
            # "starting…" only when the first step takes a while (or there are warnings to show): every update
            # costs the server a round of work
            if view.warnings or not batches.wait(STARTING_NOTE_AFTER_S):
                yield render("starting…" + (" " + "; ".join(view.warnings) if view.warnings else ""))
        for items in batches:
            urgent = False
            for item in items:
                kind = view.apply(item)
                if kind == "result" and item.images:
                    # save each run as soon as it exists: the original is shown before SAIL's run is sampled
                    save_outputs(view, ctx.config.outputs, info, threshold)
                    now = time.perf_counter()
                    last, urgent = now, False
                    if view.images_done() and spectrum is None:
                        continue  # nothing follows the images: the job's final update comes next
                    if not view.images_done():
                        msg = f"original saved at {now - view.started:.1f} s · sampling SAIL's image next…"
                    else:
                        msg = f"images saved at {now - view.started:.1f} s"
                        if view.sail_not_needed:
                            msg = f"SAIL not needed: this seed's start is already flat · image saved at " \
                                  f"{now - view.started:.1f} s"
                        msg += " · computing eigen-spectra (Cancel stops them; the images stay saved)…"
                    # the report is offered at once; it is rewritten when the job ends
                    yield render(msg, final=True)
                    continue
                first_point = kind == "record" and len(view.records.get(item.run, [])) == 1
                urgent = urgent or first_point or kind in ("sail_result", "spectra")
            now = time.perf_counter()
            if urgent or now - last >= ctx.config.live_interval:
                last = now
                _, _, label = view.progress()
                ctx.cancels.describe(session, f"Generate ({batch.label(label)})")
                yield render(f"{label} · {now - view.started:.1f} s")
    # the report with everything (spectra included), and the final view
    view.phase = "done"
    if "report" not in view.files:
        save_outputs(view, ctx.config.outputs, info, threshold)
    else:
        write_json_atomic(view.files["report"], view.report(info, threshold))
    msg = f"done in {time.perf_counter() - view.started:.1f} s · seed {settings.seed} · saved {Path(view.files['report']).name}"
    if view.sail_not_needed:
        msg = "SAIL not needed: this seed's start is already flat, so its image is kept (sampled once) · " + msg
    if view.sail_result is not None and not all(view.sail_result.converged):
        msg += " · SAIL did not reach its threshold (best noise used, see the report)"
    if view.warnings:
        msg += " · " + "; ".join(view.warnings)
    batch.add(view, threshold)
    if batch.index + 1 < batch.count:
        yield render(msg + " · next image…", final=True)
    elif batch.count > 1:
        yield render(f"batch done: {batch.count} images (seeds {batch.seeds[0]}–{batch.seeds[-1]}) in "
                     f"{time.perf_counter() - batch.started:.1f} s, {batch.summary()} · last: " + msg,
                     "ok", final=True)
    else:
        yield render(msg, "ok", final=True)


def generate_handler(ctx: AppContext, form: GenerateForm, request: Any = None) -> Iterator[dict[str, Any]]:
    """Run one Generate click: one job (plain or SAIL pair) per image of the batch count, at seeds seed, seed+1, …
    The click's first update, whatever it says, clears the "waiting for the model" note."""
    with closing(_generate_click(ctx, form, request)) as updates:
        for i, update in enumerate(updates):
            yield dict(update, queue_note="") if i == 0 else update


def _generate_click(ctx: AppContext, form: GenerateForm, request: Any) -> Iterator[dict[str, Any]]:
    session = session_of(request)
    cancel = ctx.cancels.start(session, "Generate")
    view: JobView | None = None
    threshold: tuple[float | None, str] = (None, "")
    batch: Batch | None = None
    ok = False
    try:
        # 1. Check inputs (before touching the model), the batch's last seed included
        pipe = ctx.models.require()
        first = form.settings()
        seeds = form.batch_seeds(first.seed)
        sail = form.sail_settings()
        spectrum = form.spectrum(first.steps)
        warnings = check_settings_for(pipe, first)
        try:
            check_settings_for(pipe, replace(first, seed=seeds[-1]))
        except UserInputError as exc:
            raise UserInputError(f"the batch's last seed: {exc}") from None
        threshold, calibrated, mismatch, references = detection_for_run(pipe, first)
        batch = Batch(seeds=seeds)
        # 2. One job per image; each is saved as soon as it exists and stays saved whatever happens next
        for batch.index, seed in enumerate(seeds):
            view = JobView(settings=replace(first, seed=seed), sail=sail, compare=bool(form.compare),
                           warnings=list(warnings), calibrated=calibrated, mismatch=mismatch, references=references)
            yield from sample_one(ctx, pipe, view, spectrum, threshold, session, cancel, batch)
        ok = True
    except Cancelled as exc:
        earlier = f"; the batch's {len(batch.levels)} earlier image(s) are saved" if batch and batch.levels else ""
        if view is not None and view.files.get("report") and view.images_done():  # during spectra: the images stay
            yield render_generate(view, threshold, f"spectra cancelled after {time.perf_counter() - view.started:.1f} s "
                                  f"({exc}); the images and the report (without spectra) are saved" + earlier, "warn",
                                  final=True, batch=batch)
        elif view is not None and view.files.get("report"):
            yield render_generate(view, threshold, f"cancelled ({exc}): SAIL's image was not made; the original and "
                                  "its report are saved" + earlier, "warn", final=True, batch=batch)
        else:
            yield render_generate(view, threshold, f"cancelled ({exc}); nothing of this image was saved" + earlier
                                  if earlier else f"cancelled ({exc}); nothing was saved", "warn", batch=batch)
    except (UserInputError, NonFiniteError, SailScopeError) as exc:
        compat.warn(str(exc))
        yield render_generate(view, threshold, str(exc), "error", batch=batch)
    except Exception as exc:  # keep serving; the traceback goes to the server log
        log.error("generation failed:\n%s", traceback.format_exc())
        yield render_generate(view, threshold, f"internal error: {type(exc).__name__}: {exc} (details in the server log)",
                              "error", batch=batch)
    finally:
        ctx.cancels.finish(session, cancel)
        if not ok and view is not None:
            free_memory()


def spectrum_view_handler(state: dict | None, run: str, step: Any) -> Any:
    """The spectrum plot for another step/run of the finished job (no model work; one output: the plot)."""
    spectra = (state or {}).get("spectra") or {}
    steps = spectra.get(run) or {}
    if not steps:
        return plots.spectrum_figure(None)
    target = whole_number(step, "step", True) or min(steps)
    chosen = min(steps, key=lambda s: (abs(int(s) - target), int(s)))
    return plots.spectrum_figure(steps[chosen], int(chosen))


def random_seed() -> int:
    return random.randrange(2**32)


# ----------------------------------------------------------------------------------------------
# Layout and wiring
# ----------------------------------------------------------------------------------------------
def generate_panel(ctx: AppContext) -> dict[str, Any]:
    """The Generate view's components inside the current ``gr.Blocks``, by name: the form's fields
    (:data:`GENERATE_FIELDS`, starting at :class:`GenerateForm`'s defaults), :data:`GENERATE_OUTPUTS` and the
    buttons. Uses only API shared by gradio 3.41, 4.40 and 6 (see ``compat``)."""
    c: dict[str, Any] = {}
    pipe = ctx.models.pipe
    form = GenerateForm.for_model(pipe)  # the SAIL panel at the model's shipped SAIL defaults, if any
    default_size = pipe.unet.config.sample_size * pipe.vae_scale_factor if pipe is not None else None
    with compat.make(gr.Row, equal_height=False):
        with gr.Column(scale=2, min_width=320):
            c["prompt"] = compat.make(gr.Textbox, label="Prompt", lines=2, elem_id="ss-prompt",
                                      placeholder="a prompt; try one the model memorized")
            c["negative"] = compat.make(gr.Textbox, label="Negative prompt", lines=1, elem_id="ss-negative")
            with gr.Row():
                c["seed"] = compat.make(gr.Number, label="Seed (-1 = random)", value=form.seed, precision=0,
                                        elem_id="ss-seed")
                c["random_seed"] = compat.make(gr.Button, value="🎲", elem_id="ss-random-seed", scale=0, min_width=48)
                # ♻ = the last run's seed (wired in ui/views/shortcuts.py)
                c["reuse_seed"] = compat.make(gr.Button, value="♻", elem_id="ss-reuse-seed", scale=0, min_width=48)
            with gr.Row():
                # number boxes, not sliders: a value out of range gets a message, never a silent clamp
                c["steps"] = compat.make(gr.Number, value=form.steps, label="Steps", elem_id="ss-steps",
                                         info=f"sampling steps, 1–{MAX_STEPS}; more = slower")
                c["guidance"] = compat.make(gr.Number, value=form.guidance, label="Guidance (CFG)",
                                            elem_id="ss-guidance",
                                            info="how strongly the image follows the prompt, ≥ 0 (7.5 is usual)")
            with gr.Row():
                c["width"] = compat.make(gr.Number, label="Width (0 = model default)", value=default_size or form.width,
                                         precision=0, elem_id="ss-width")
                c["height"] = compat.make(gr.Number, label="Height", value=default_size or form.height, precision=0,
                                          elem_id="ss-height")
                c["batch_count"] = compat.make(gr.Number, label="Batch count", value=form.batch_count, precision=0,
                                               elem_id="ss-batch-count",
                                               info=f"images one after another at seeds seed, seed+1, … (1–"
                                                    f"{MAX_BATCH_COUNT}); each gets its own check and SAIL")
            with gr.Row():
                c["scheduler"] = compat.make(gr.Dropdown, choices=[(SCHEDULER_LABELS.get(k, k), k) for k in SCHEDULERS]
                                             if compat.GRADIO_MAJOR >= 4 else list(SCHEDULERS), value=form.scheduler,
                                             label="Scheduler", elem_id="ss-scheduler")
                c["sharpness_at"] = compat.make(gr.Dropdown, choices=list(SHARPNESS_CHOICES), value=form.sharpness_at,
                                                label="Measure sharpness at", elem_id="ss-sharpness-at",
                                                info="step 1 is what the memorization check reads")
            c["sail_on"] = compat.make(gr.Checkbox, label="SAIL (mitigate memorization)", value=form.sail_on,
                                       elem_id="ss-sail",
                                       info="moves the starting noise to a flatter spot so the model does not "
                                            "reproduce a training image; the prompt and the model stay as they are")
            c["compare"] = compat.make(gr.Checkbox, label="Compare with original", value=form.compare, elem_id="ss-compare",
                                       info="also make the image without SAIL, side by side")
            with compat.make(gr.Accordion, label="SAIL advanced", open=False, elem_id="ss-sail-advanced"):
                c["sail_objective"] = compat.make(
                    gr.Radio, choices=["paper", "reference"], value=form.sail_objective, label="What SAIL minimizes",
                    elem_id="ss-sail-objective",
                    info="paper: the sharpness the paper defines (‖H_Δ s_Δ‖², by finite differences); reference: "
                         "the authors' code's cheaper stand-in in noise space (‖ε_c − ε_u‖ change). Both add a "
                         "term that keeps the noise Gaussian.")
                with gr.Row():
                    c["sail_threshold"] = compat.make(
                        gr.Textbox, value=form.sail_threshold, label="Target flatness (threshold)",
                        elem_id="ss-sail-threshold",
                        info="SAIL stops once the loss is at or below this; auto = as flat as a typical ordinary "
                             "prompt's start (the calibrated median)")
                    c["sail_trigger"] = compat.make(
                        gr.Textbox, value=form.sail_trigger, label="Leave alone below (trigger)",
                        elem_id="ss-sail-trigger",
                        info="a start this flat is kept unchanged; auto = the level 90 % of ordinary prompts stay "
                             "under; none = same as the target")
                with gr.Row():
                    c["sail_max_steps"] = compat.make(gr.Number, value=form.sail_max_steps, label="Max steps",
                                                      elem_id="ss-sail-max-steps",
                                                      info="optimizer steps per starting noise (0–1000)")
                    c["sail_candidates"] = compat.make(gr.Number, value=form.sail_candidates, label="Candidates",
                                                       elem_id="ss-sail-candidates",
                                                       info="starting noises tried at once, 1–64 (the seed's own first)")
                    c["sail_lr"] = compat.make(gr.Number, value=form.sail_lr, label="Step size (learning rate)",
                                               elem_id="ss-sail-lr", info="> 0")
                    c["sail_rounds"] = compat.make(gr.Number, value=form.sail_rounds, label="Rounds",
                                                   elem_id="ss-sail-rounds",
                                                   info="1–16: fresh noise when no candidate gets flat enough")
            c["spectra_on"] = compat.make(
                gr.Checkbox, label="Eigen-spectra of the Hessian (slow: minutes on a CPU)", value=form.spectra_on,
                elem_id="ss-spectra-on",
                info="Computed after the images are saved, with a progress bar; Cancel stops them. Settings below.")
            with compat.make(gr.Accordion, label="Spectrum settings", open=False, elem_id="ss-spectrum-settings"):
                c["spectrum_steps"] = compat.make(gr.Textbox, value=form.spectrum_steps,
                                                  label="At sampling steps (comma-separated)", elem_id="ss-spectrum-steps")
                with gr.Row():
                    c["spectrum_method"] = compat.make(
                        gr.Dropdown, choices=list(SPECTRUM_METHODS), value=form.spectrum_method, label="Method",
                        elem_id="ss-spectrum-method",
                        info="arnoldi: largest |λ| (the paper's); lanczos: symmetric part; slq: density")
                    c["spectrum_k"] = compat.make(gr.Number, value=form.spectrum_k, label="Eigenvalues k",
                                                  elem_id="ss-spectrum-k", info="more = slower")
            with gr.Row():
                c["generate"] = compat.make(gr.Button, value="Generate", variant="primary", elem_id="ss-generate")
                c["cancel"] = compat.make(gr.Button, value="Cancel", variant="stop", elem_id="ss-cancel")
            # the Cancel acknowledgement has its own output: an event never waits on the running job's outputs
            c["cancel_note"] = compat.make(gr.HTML, value="", elem_id="ss-cancel-note")
        with gr.Column(scale=3, min_width=420):
            c["status"] = compat.make(gr.HTML, value=status_html("ready"), elem_id="ss-status")
            c["queue_note"] = compat.make(gr.HTML, value="", elem_id="ss-queue-note")
            c["risk"] = compat.make(gr.HTML, value=risk_html(None, None, ""), elem_id="ss-risk")
            # small models' images are upscaled with nearest-neighbour (pixels stay crisp) to a size one can judge
            pixel = ["ss-pixelated"] if default_size is not None and default_size <= 256 else []
            with gr.Row(elem_classes=["ss-images"]):
                with gr.Column(min_width=240):
                    c["image_original"] = compat.make(gr.Image, label="Original", type="filepath", interactive=False,
                                                      elem_id="ss-image-original", height=IMAGE_HEIGHT, elem_classes=pixel)
                with compat.make(gr.Column, min_width=240, elem_id="ss-sail-box", visible=False) as c["sail_box"]:
                    c["image_sail"] = compat.make(gr.Image, label="SAIL (mitigated)", type="filepath",
                                                  interactive=False, elem_id="ss-image-sail", height=IMAGE_HEIGHT,
                                                  elem_classes=pixel)
            if compat.HAS_IMAGE_SLIDER:
                c["image_slider"] = compat.make(gr.ImageSlider, label="Original ↔ SAIL", type="filepath",
                                                interactive=False, visible=False, elem_id="ss-image-slider",
                                                elem_classes=pixel)
            else:
                c["image_slider"] = compat.make(gr.HTML, value="", visible=False, elem_id="ss-image-slider")
            # batch count > 1: every finished image of the click, captioned with its seed and verdict
            c["batch_gallery"] = compat.make(gr.Gallery, label="This batch", visible=False, columns=4, height="auto",
                                             object_fit="contain", elem_id="ss-batch-gallery", elem_classes=pixel,
                                             interactive=False)
            c["metrics_plot"] = compat.make(gr.Plot, label="Per-step metrics (live)", elem_id="ss-metrics-plot",
                                            value=plots.metrics_figure({}, None))
            with gr.Row():
                c["spectrum_run"] = compat.make(gr.Radio, choices=["original", "sail"], value="original",
                                                label="Spectrum of run", elem_id="ss-spectrum-run")
                c["spectrum_step"] = compat.make(gr.Slider, minimum=1, maximum=2, step=1, value=1, label="Spectrum step",
                                                 interactive=False, elem_id="ss-spectrum-step")
            c["spectrum_plot"] = compat.make(gr.Plot, label="Eigen-spectrum", elem_id="ss-spectrum-plot",
                                             value=plots.spectrum_figure(None))
            c["sail_plot"] = compat.make(gr.Plot, label="SAIL loss", elem_id="ss-sail-plot", value=plots.sail_loss_figure(None))
            c["report_file"] = compat.make(gr.File, label="JSON report", interactive=False, elem_id="ss-report")
    c["state"] = gr.State({})
    missing = [name for name in GENERATE_FIELDS + GENERATE_OUTPUTS if name not in c]
    assert not missing, f"generate_panel lacks components for {missing}"
    return c


def wire_generate(ctx: AppContext, c: dict[str, Any]) -> None:
    """Connect the Generate view's events (model work through the one-slot ``model`` queue)."""

    def generate(values: dict[str, Any], request: Any) -> Iterator[dict[str, Any]]:
        yield from generate_handler(ctx, GenerateForm(**values), request)

    # outside the queue, registered before the queued job: they answer at once even while the job waits
    wire_busy_note(ctx, c["generate"], c["queue_note"])
    c["generate"].click(lambda: "", None, [c["cancel_note"]], **compat.event_kwargs(queue=False))
    bind(c["generate"].click, generate, c, GENERATE_FIELDS, GENERATE_OUTPUTS,
         **compat.event_kwargs(model_job=True, progress_on=c["status"], api_name="generate"))
    wire_cancel(ctx, c["cancel"], c["cancel_note"], api_name="cancel")
    c["random_seed"].click(random_seed, None, [c["seed"]], **compat.event_kwargs(queue=False))
    for trigger in (c["spectrum_step"], c["spectrum_run"]):
        trigger.change(spectrum_view_handler, [c["state"], c["spectrum_run"], c["spectrum_step"]], [c["spectrum_plot"]],
                       **compat.event_kwargs(queue=False))


def generate_view(ctx: AppContext) -> dict[str, Any]:
    """The Generate tab's content, wired; returns its components by name."""
    c = generate_panel(ctx)
    wire_generate(ctx, c)
    return c
