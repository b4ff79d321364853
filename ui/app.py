"""The SAIL Scope web app: ``build_ui(...) -> gr.Blocks`` (never launches on import).

Views: Generate (live metrics, spectra, SAIL pair, risk badge, report), Compare prompts, Audit, Model.
Handlers are module-level functions of an :class:`AppContext` and the components' values; ``build_ui``
binds them. They stream tuples in the order of the ``*_OUTPUTS`` lists below, so tests call them directly.
Every number shown comes from ``core`` (records, spectra, SAIL, detection); this module only formats.
"""


import json
import logging
import random
import time
import traceback
from contextlib import closing
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from sailscope.core.errors import Cancelled, NonFiniteError, SailScopeError, UserInputError
from sailscope.core.io.files import write_csv_atomic, write_json_atomic
from sailscope.core.io.prompts import PromptEntry, parse_prompts, read_prompt_file
from sailscope.core.choices import SCHEDULER_LABELS
from sailscope.core.sampling import SCHEDULERS, GenerationSettings, StepRecord
from sailscope.ui import compat, plots
from sailscope.ui.jobs import (
    DEVICES, DTYPES, SPECTRUM_METHODS, AppConfig, CancelRegistry, JobView, ModelManager, SpectrumRequest,
    detection_threshold, free_memory, in_background, parse_steps, risk_level, run_job, sail_available, save_outputs,
)

log = logging.getLogger("sailscope.ui")
ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHARPNESS_CHOICES = {"step 1 (detection)": "first", "every step": "all", "none": "none"}
MAX_PROMPT_CHARS = 4000


@dataclass
class AppContext:
    """Shared by every session: configuration, the loaded model, cancel flags."""

    config: AppConfig = field(default_factory=AppConfig)
    models: ModelManager = None  # type: ignore[assignment]
    cancels: CancelRegistry = field(default_factory=CancelRegistry)

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = ModelManager(self.config)


def _session(request: Any) -> str:
    return getattr(request, "session_hash", None) or "local"


def _css() -> str:
    path = ASSETS / "css" / "app.css"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


# ----------------------------------------------------------------------------------------------
# Small HTML read-outs
# ----------------------------------------------------------------------------------------------
def status_html(message: str, kind: str = "info", done: int | None = None, total: int | None = None) -> str:
    """A message with an optional progress bar (``kind``: info, ok, warn, error)."""
    bar = ""
    if done is not None and total:
        pct = max(0.0, min(100.0, 100.0 * done / total))
        bar = (f'<div class="ss-progress" role="progressbar" aria-valuemin="0" aria-valuemax="{total}" '
               f'aria-valuenow="{done}"><div class="ss-progress-fill" style="width:{pct:.1f}%"></div></div>')
    return f'<div class="ss-status ss-{kind}">{bar}<div class="ss-status-text">{escape(message)}</div></div>'


def risk_html(sharpness: float | None, threshold: float | None, source: str, after: float | None = None) -> str:
    """The memorization-risk badge: level, step-1 sharpness, threshold and its source."""
    if sharpness is None:
        return '<div class="ss-risk ss-risk-none">Memorization risk: not measured yet (step-1 sharpness)</div>'
    level = risk_level(sharpness, threshold)
    cmp = {"high": "≥", "low": "<"}.get(level, "vs")
    thr = f"{cmp} threshold {threshold:.4g} ({escape(source)})" if threshold is not None else f"(no threshold: {escape(source)})"
    extra = f" · after SAIL {after:.4g}" if after is not None else ""
    return (f'<div class="ss-risk ss-risk-{level}" data-risk="{level}"><b>Memorization risk: {level.upper()}</b> · '
            f'step-1 sharpness {sharpness:.4g} {thr}{extra}</div>')


def _int(value: Any, name: str, allow_none: bool = False) -> int | None:
    if value is None or value == "":
        if allow_none:
            return None
        raise UserInputError(f"{name} is empty")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a whole number, got {value!r}") from None
    if f != f or f in (float("inf"), float("-inf")) or not f.is_integer():
        raise UserInputError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def _float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a number, got {value!r}") from None


def build_settings(prompt: str, negative: str, seed: Any, steps: Any, guidance: Any, width: Any, height: Any,
                   scheduler: str, sharpness_at: str) -> GenerationSettings:
    """Component values -> validated :class:`GenerationSettings` (``UserInputError`` names the field)."""
    prompt = prompt or ""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserInputError(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    seed_i = _int(seed, "seed")
    if seed_i == -1:
        seed_i = random.randrange(2**32)
    w, h = _int(width, "width", True) or None, _int(height, "height", True) or None
    settings = GenerationSettings(
        prompt=prompt, negative_prompt=negative or "", seed=seed_i, steps=_int(steps, "steps"),
        guidance=_float(guidance, "guidance"), scheduler=scheduler, width=w, height=h,
        sharpness_at=SHARPNESS_CHOICES.get(sharpness_at, sharpness_at or "first"),
    )
    return settings


def _sail_default(name: str, fallback: Any = None) -> Any:
    """A field of core's default ``SailSettings`` (the advanced panel starts there)."""
    if not sail_available():
        return fallback
    from sailscope.core.mitigation import SailSettings

    return getattr(SailSettings(), name)


def build_sail(enabled: bool, objective: str, threshold: Any, max_steps: Any, candidates: Any,
               trigger: Any = "auto", lr: Any = None, rounds: Any = None) -> Any:
    """SAIL settings from the advanced panel; ``trigger``: a number, ``auto`` or ``none`` (= the threshold)."""
    if not enabled:
        return None
    if not sail_available():
        raise UserInputError("SAIL is not available in this build (core.sail missing)")
    from sailscope.core.mitigation import SailSettings

    text = str(threshold if threshold is not None else "auto").strip().lower() or "auto"
    thr: float | str = "auto" if text == "auto" else _float(text, "SAIL threshold")
    ttext = str(trigger if trigger is not None else "auto").strip().lower() or "auto"
    trig: float | str | None = ttext if ttext == "auto" else None if ttext == "none" else _float(ttext, "SAIL trigger")
    extra = {} if lr in (None, "") else {"lr": _float(lr, "SAIL learning rate")}
    if rounds not in (None, ""):
        extra["rounds"] = _int(rounds, "SAIL rounds")
    return SailSettings(objective=objective, threshold=thr, trigger=trig, max_steps=_int(max_steps, "SAIL max steps"),
                        candidates=_int(candidates, "SAIL candidates"), **extra)


# ----------------------------------------------------------------------------------------------
# Generate view
# ----------------------------------------------------------------------------------------------
GEN_OUTPUTS = ("status", "risk", "image_original", "image_sail", "image_slider", "metrics_plot", "spectrum_plot",
               "spectrum_step", "sail_plot", "report_file", "state")


def render_generate(view: JobView | None, threshold: tuple[float | None, str], status: str, kind: str = "info",
                    final: bool = False, spectrum_run: str | None = None, with_report: bool = True) -> tuple:
    """A :class:`JobView` -> one update per ``GEN_OUTPUTS`` entry."""
    if view is None:
        return (status_html(status, kind), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(),
                gr.update(), gr.update(), gr.update(), gr.update(), gr.update())
    thr, src = threshold
    done, total, _ = view.progress()
    s1, _ = view.step1("original")
    after, _ = view.step1("sail")
    if s1 is None:
        s1, after = after, None
    metrics = plots.metrics_figure({r: view.records.get(r, []) for r in view.runs}, view.settings.steps, thr,
                                   "detection threshold")
    # the spectrum and SAIL plots are rebuilt only when their data changed (live updates stay light)
    n_spectra, n_sail = sum(len(v) for v in view.spectra.values()), len(view.sail_steps)
    spec_fig = slider = sail_fig = gr.update()
    if n_spectra and (final or view.shown.get("spectra") != n_spectra):
        view.shown["spectra"] = n_spectra
        run = spectrum_run if spectrum_run in view.spectra else ("original" if "original" in view.spectra else "sail")
        step, spectra = view.spectrum_for(run, None)
        spec_fig = plots.spectrum_figure(spectra, step)
        steps = view.spectrum_steps(run)
        slider = gr.update(minimum=min(steps), maximum=max(steps) if len(steps) > 1 else min(steps) + 1, value=step,
                           interactive=len(steps) > 1)
    if view.sail is not None and (final or view.shown.get("sail") != n_sail):
        view.shown["sail"] = n_sail
        sail_fig = plots.sail_loss_figure(view.sail_trace(), view.sail_threshold(), view.sail_trigger())
    img_o = img_s = slider_img = report = state = gr.update()
    if final:
        img_o = view.files.get("original") or gr.update()
        img_s = view.files.get("sail") or gr.update()
        if view.files.get("original") and view.files.get("sail"):
            slider_img = gr.update(value=(view.files["original"], view.files["sail"]), visible=True)
        report = (view.files.get("report") or None) if with_report else gr.update()
        state = {"spectra": view.spectra, "steps": view.settings.steps}
    return (status_html(status, kind, done, total), risk_html(s1, thr, src, after), img_o, img_s, slider_img,
            metrics, spec_fig, slider, sail_fig, report, state)


def generate_handler(ctx: AppContext, prompt: str, negative: str, seed: Any, steps: Any, guidance: Any, width: Any,
                     height: Any, scheduler: str, sharpness_at: str, sail_on: bool, sail_objective: str,
                     sail_threshold: Any, sail_max_steps: Any, sail_candidates: Any, compare: bool,
                     spectrum_steps: str, spectrum_method: str, spectrum_k: Any, sail_trigger: Any = "auto",
                     sail_lr: Any = None, sail_rounds: Any = None, request: Any = None) -> Iterator[tuple]:
    """Run one job (plain or SAIL pair) and stream the view: live plots every ``live_interval`` seconds."""
    session = _session(request)
    cancel = ctx.cancels.start(session)
    view: JobView | None = None
    threshold: tuple[float | None, str] = (None, "")
    ok = False
    try:
        # 1. Check inputs (before touching the model)
        pipe = ctx.models.require()
        settings = build_settings(prompt, negative, seed, steps, guidance, width, height, scheduler, sharpness_at)
        sail = build_sail(sail_on, sail_objective, sail_threshold, sail_max_steps, sail_candidates, sail_trigger, sail_lr,
                          sail_rounds)
        spec_steps = parse_steps(spectrum_steps, settings.steps)
        spectrum = SpectrumRequest(steps=spec_steps, k=_int(spectrum_k, "spectrum k"), method=spectrum_method) if spec_steps else None
        from sailscope.core.sampling import check_settings

        n_down = len(pipe.unet.config.block_out_channels) - 1
        warnings = check_settings(settings, pipe.vae_scale_factor, 2**n_down if n_down > 0 else 1)
        threshold = detection_threshold(pipe)
        view = JobView(settings=settings, sail=sail, compare=bool(compare), warnings=list(warnings))
        yield render_generate(view, threshold, "starting…" + (" " + "; ".join(warnings) if warnings else ""))
        # 2. Stream the job; save as soon as sampling is over (spectra, when asked, come after the images)
        last = 0.0
        info = getattr(pipe, "sailscope_info", None)
        # the job runs in a worker thread: drawing and sending one update overlap the next steps
        job = run_job(pipe, settings, sail=sail, compare=bool(compare), spectrum=spectrum, cancel=cancel)
        with closing(in_background(job, cancel)) as batches:
            for batch in batches:
                urgent = False
                for item in batch:
                    kind = view.apply(item)
                    if kind == "pair" or (sail is None and kind == "result"):
                        save_outputs(view, ctx.config.outputs, info, threshold)
                        more = " · computing spectra…" if spectrum is not None else ""
                        # the report is offered once it is complete (spectra come after the images)
                        now = time.perf_counter()
                        yield render_generate(view, threshold, f"images saved at {now - view.started:.1f} s{more}",
                                              final=True, with_report=spectrum is None)
                        last, urgent = now, False
                        continue
                    first_point = kind == "record" and len(view.records.get(item.run, [])) == 1
                    urgent = urgent or first_point or kind in ("sail_result", "spectra")
                now = time.perf_counter()
                if urgent or now - last >= ctx.config.live_interval:
                    last = now
                    _, _, label = view.progress()
                    yield render_generate(view, threshold, f"{label} · {now - view.started:.1f} s")
        # 3. The report with everything (spectra included), and the final view
        view.phase = "done"
        if "report" not in view.files:
            save_outputs(view, ctx.config.outputs, info, threshold)
        elif view.spectra:
            from sailscope.core.io.files import write_json_atomic

            write_json_atomic(view.files["report"], view.report(info, threshold))
        msg = f"done in {time.perf_counter() - view.started:.1f} s · seed {settings.seed} · saved {Path(view.files['report']).name}"
        if view.sail_result is not None and not all(view.sail_result.converged):
            msg += " · SAIL did not reach its threshold (best noise used, see the report)"
        if view.warnings:
            msg += " · " + "; ".join(view.warnings)
        ok = True
        yield render_generate(view, threshold, msg, "ok", final=True)
    except Cancelled as exc:
        yield render_generate(view, threshold, f"cancelled ({exc}); nothing was saved", "warn")
    except (UserInputError, NonFiniteError, SailScopeError) as exc:
        compat.warn(str(exc))
        yield render_generate(view, threshold, str(exc), "error")
    except Exception as exc:  # keep serving; the traceback goes to the server log
        log.error("generation failed:\n%s", traceback.format_exc())
        yield render_generate(view, threshold, f"internal error: {type(exc).__name__}: {exc} (details in the server log)", "error")
    finally:
        ctx.cancels.finish(session, cancel)
        if not ok and view is not None:
            free_memory()


def cancel_handler(ctx: AppContext, request: Any = None) -> str:
    if ctx.cancels.cancel(_session(request)):
        return status_html("cancelling… (stops before the next step)", "warn")
    return status_html("nothing to cancel", "info")


def spectrum_view_handler(state: dict | None, run: str, step: Any) -> Any:
    """The spectrum plot for another step/run of the finished job (no model work)."""
    spectra = (state or {}).get("spectra") or {}
    steps = spectra.get(run) or {}
    if not steps:
        return plots.spectrum_figure(None)
    target = _int(step, "step", True) or min(steps)
    chosen = min(steps, key=lambda s: (abs(int(s) - target), int(s)))
    return plots.spectrum_figure(steps[chosen], int(chosen))


def random_seed() -> int:
    return random.randrange(2**32)


# ----------------------------------------------------------------------------------------------
# Compare prompts view
# ----------------------------------------------------------------------------------------------
COMPARE_OUTPUTS = ("status", "plot", "table")


def compare_items(prompts_text: str, seeds_text: str, limit: int) -> list[tuple[str, int]]:
    prompts = [p.strip() for p in (prompts_text or "").splitlines() if p.strip()]
    if not prompts:
        raise UserInputError("enter at least one prompt (one per line)")
    seeds = [_int(s, "seed") for s in (seeds_text or "0").replace(";", ",").split(",") if s.strip()] or [0]
    items = [(p, s) for p in prompts for s in seeds]
    if len(items) > limit:
        raise UserInputError(f"{len(items)} prompt × seed combinations; the limit is {limit}")
    return items


def compare_handler(ctx: AppContext, prompts_text: str, seeds_text: str, steps: Any, guidance: Any, scheduler: str,
                    method: str, k: Any, request: Any = None) -> Iterator[tuple]:
    """Step-1 sharpness and the ``H_Δ`` spectrum at step 1 of each prompt (and seed), on one plot."""
    from sailscope.core.sampling import generate

    session = _session(request)
    cancel = ctx.cancels.start(session)
    rows: list[dict] = []
    try:
        pipe = ctx.models.require()
        items = compare_items(prompts_text, seeds_text, ctx.config.max_compare_items)
        spectrum = SpectrumRequest(steps=frozenset({1}), k=_int(k, "k"), method=method, which=("delta",))
        from sailscope.ui.jobs import spectrum_probe

        probe = spectrum_probe(spectrum)
        multi_seed = len({s for _, s in items}) > 1
        for i, (prompt, seed) in enumerate(items):
            if cancel.is_set():
                raise Cancelled(f"cancelled after {i} of {len(items)}")
            yield (status_html(f"{i + 1}/{len(items)}: {prompt[:60]} (seed {seed})", "info", i, len(items)),
                   gr.update(), gr.update())
            settings = GenerationSettings(prompt=prompt, seed=seed, steps=_int(steps, "steps"),
                                          guidance=_float(guidance, "guidance"), scheduler=scheduler, sharpness_at="first")
            record = None
            for item in generate(pipe, settings, probes=[probe], cancel=cancel, stop_after=1):
                if isinstance(item, StepRecord):
                    record = item
            label = (prompt[:28] + ("…" if len(prompt) > 28 else "")) + (f" · s{seed}" if multi_seed else "")
            rows.append({"label": label, "prompt": prompt, "seed": seed,
                         "sharpness": record.sharpness[0] if record and record.sharpness else None,
                         "wen": record.wen[0] if record else None,
                         "spectrum": (record.extras.get("spectra") or {}).get("delta") if record else None})
            yield (gr.update(), plots.compare_figure(rows), _compare_table(rows))
        yield (status_html(f"compared {len(rows)} item(s)", "ok", len(rows), len(rows)), plots.compare_figure(rows),
               _compare_table(rows))
    except Cancelled as exc:
        yield (status_html(f"cancelled ({exc})", "warn"), gr.update(), gr.update())
    except SailScopeError as exc:
        compat.warn(str(exc))
        yield (status_html(str(exc), "error"), gr.update(), gr.update())
    except Exception as exc:
        log.error("compare failed:\n%s", traceback.format_exc())
        yield (status_html(f"internal error: {type(exc).__name__}: {exc}", "error"), gr.update(), gr.update())
    finally:
        ctx.cancels.finish(session, cancel)


def _compare_table(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        spec = r.get("spectrum") or {}
        top = spec.get("eigenvalues_real", [None])[0] if spec.get("eigenvalues_real") else None
        out.append([r["prompt"], r["seed"], r["sharpness"], r["wen"], top])
    return out


COMPARE_HEADERS = ["prompt", "seed", "step-1 sharpness", "step-1 Wen", "top Re λ (H_Δ)"]


# ----------------------------------------------------------------------------------------------
# Audit view
# ----------------------------------------------------------------------------------------------
AUDIT_OUTPUTS = ("status", "table", "histogram", "roc", "export")
AUDIT_HEADERS = ["prompt", "score", "per seed", "known memorized", "risk", "seconds"]


def read_prompt_list(text: str | None, upload: Any, max_bytes: int, max_prompts: int) -> list[PromptEntry]:
    """Prompts from the text box and an optional upload (:mod:`sailscope.core.io.prompts` formats), in order,
    without duplicates: ``(prompt, memorized-or-None)`` pairs."""
    entries = parse_prompts(text or "", ".txt", source="the text box")
    path = getattr(upload, "name", upload) if upload is not None else None
    if path:
        entries += read_prompt_file(path, what="the uploaded file", max_bytes=max_bytes)
    seen: set[str] = set()
    out = [e for e in entries if not (e.prompt in seen or seen.add(e.prompt))]
    if not out:
        raise UserInputError("no prompts: paste them (one per line) or upload a .txt/.csv/.jsonl file")
    if len(out) > max_prompts:
        raise UserInputError(f"{len(out)} prompts; the limit is {max_prompts} per audit")
    return out


def _audit_name(name: str | None) -> str:
    clean = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "audit").strip())[:64].strip("-")
    return clean or "audit"


def audit_handler(ctx: AppContext, prompts_text: str, upload: Any, memorized_text: str, seeds: Any, steps: Any,
                  metric: str, name: str, request: Any = None) -> Iterator[tuple]:
    """Score a prompt list (streamed, resumable from ``<outputs>/audit/<name>.jsonl``); ROC when marked."""
    from sailscope.core import detect
    from sailscope.core.io.files import append_jsonl, read_jsonl

    session = _session(request)
    cancel = ctx.cancels.start(session)
    rows: list[dict] = []
    try:
        pipe = ctx.models.require()
        entries = read_prompt_list(prompts_text, upload, ctx.config.max_upload_bytes, ctx.config.max_audit_prompts)
        marked = {p.strip() for p in (memorized_text or "").splitlines() if p.strip()}
        n_seeds, n_steps = _int(seeds, "seeds"), _int(steps, "steps")
        if not 1 <= n_seeds <= 16:
            raise UserInputError(f"seeds must be in 1..16, got {n_seeds}")
        threshold, src = detection_threshold(pipe)
        info = getattr(pipe, "sailscope_info", None)
        key = {"model": getattr(info, "key", None), "metric": metric, "seeds": n_seeds, "steps": n_steps}
        folder = Path(ctx.config.outputs) / "audit"
        base = folder / _audit_name(name)
        done = {r["prompt"]: r for r in read_jsonl(base.with_suffix(".jsonl")) if r.get("key") == key}
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
                append_jsonl(base.with_suffix(".jsonl"), row)
            rows.append(row)
            if i == 0 or i == len(entries) - 1 or i % 4 == 3:
                yield _audit_outputs(rows, threshold, src, metric, f"{i + 1}/{len(entries)} scored"
                                     + (f" ({len(done)} resumed)" if done else ""), i + 1, len(entries))
        files = _audit_export(base, rows, threshold, src)
        out = _audit_outputs(rows, threshold, src, metric, f"audit of {len(rows)} prompts done; exported CSV and JSON",
                             len(rows), len(rows), kind="ok")
        yield out[:-1] + (files,)
    except Cancelled as exc:
        yield _audit_outputs(rows, None, "", metric, str(exc), kind="warn")
    except SailScopeError as exc:
        compat.warn(str(exc))
        yield (status_html(str(exc), "error"), gr.update(), gr.update(), gr.update(), gr.update())
    except Exception as exc:
        log.error("audit failed:\n%s", traceback.format_exc())
        yield (status_html(f"internal error: {type(exc).__name__}: {exc}", "error"), gr.update(), gr.update(),
               gr.update(), gr.update())
    finally:
        ctx.cancels.finish(session, cancel)


def _audit_outputs(rows: list[dict], threshold: float | None, src: str, metric: str, message: str,
                   done: int | None = None, total: int | None = None, kind: str = "info") -> tuple:
    from sailscope.core import detect

    table = [[r["prompt"], r["score"], ", ".join(f"{v:.4g}" for v in r.get("per_seed", [])),
              {True: "yes", False: "no"}.get(r.get("memorized"), ""),
              risk_level(r["score"], threshold) if metric == "sharpness" else "", round(r.get("seconds", 0.0), 2)]
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
    return (status_html(message, kind, done, total), table, hist, roc, gr.update())


def _audit_export(base: Path, rows: list[dict], threshold: float | None, src: str) -> list[str]:
    csv_path = write_csv_atomic(base.with_suffix(".csv"), ["prompt", "score", "metric", "per_seed", "memorized", "seconds"],
                                 [[r["prompt"], r["score"], r["metric"], json.dumps(r.get("per_seed")), r.get("memorized"),
                                   r.get("seconds")] for r in rows])
    json_path = write_json_atomic(base.with_suffix(".json"), {"threshold": threshold, "threshold_source": src, "rows": rows})
    return [str(csv_path), str(json_path)]


# ----------------------------------------------------------------------------------------------
# Model view
# ----------------------------------------------------------------------------------------------
def model_status(ctx: AppContext) -> str:
    info = ctx.models.info
    if info is None:
        return "**No model loaded.** " + (f"Last error: {ctx.models.error}" if ctx.models.error else "Choose one and press Load.")
    thr, src = detection_threshold(ctx.models.pipe)
    thr_text = f"{thr:.4g} ({src})" if thr is not None else f"none ({src})"
    return (f"**Loaded:** `{info.name}` · source {info.source} · device {info.device} · dtype {info.dtype} · "
            f"prediction {info.prediction_type}  \n**Detection threshold:** {thr_text}")


def load_model_handler(ctx: AppContext, choice: str, path: str, device: str, dtype: str) -> tuple:
    """Load the chosen model (or a typed path when the server allows it); returns (status, dropdown, header)."""
    model = (path or "").strip() if ctx.config.allow_paths and (path or "").strip() else choice
    try:
        t0 = time.perf_counter()
        ctx.models.load(model, device, dtype)
        msg = f"loaded in {time.perf_counter() - t0:.1f} s"
        kind = "ok"
    except SailScopeError as exc:
        compat.warn(str(exc))
        msg, kind = str(exc), "error"
    except Exception as exc:
        log.error("model load failed:\n%s", traceback.format_exc())
        msg, kind = f"internal error: {type(exc).__name__}: {exc}", "error"
    return (status_html(msg, kind) + "\n\n" + model_status(ctx), gr.update(choices=ctx.models.choices()),
            header_markdown(ctx))


def refresh_models_handler(ctx: AppContext) -> Any:
    return gr.update(choices=ctx.models.choices())


def header_markdown(ctx: AppContext) -> str:
    info = ctx.models.info
    model = f"model **{info.name}** on {info.device}" if info is not None else "no model loaded"
    return f"## SAIL Scope\nMemorization lens (per-step sharpness, spectra) and fix (SAIL) · {model}"


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------
def generate_panel(ctx: AppContext, with_sail: bool = True) -> dict:
    """The Generate view's components inside the current ``gr.Blocks`` (reused by the A1111 tab).

    Uses only API shared by gradio 3.41, 4.40 and 6 (see ``compat``). Returns the components by name.
    """
    c: dict[str, Any] = {}
    default_size = None
    pipe = ctx.models.pipe
    if pipe is not None:
        default_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    with gr.Row(equal_height=False) if "equal_height" in compat._params(gr.Row.__init__) else gr.Row():
        with gr.Column(scale=2, min_width=320):
            c["prompt"] = compat.make(gr.Textbox, label="Prompt", lines=2, elem_id="ss-prompt",
                                      placeholder="a prompt; try one the model memorized")
            c["negative"] = compat.make(gr.Textbox, label="Negative prompt", lines=1, elem_id="ss-negative")
            with gr.Row():
                c["seed"] = compat.make(gr.Number, label="Seed (-1 = random)", value=0, precision=0, elem_id="ss-seed")
                c["random_seed"] = compat.make(gr.Button, value="🎲", elem_id="ss-random-seed", scale=0, min_width=48)
            with gr.Row():
                c["steps"] = compat.make(gr.Slider, minimum=1, maximum=150, step=1, value=50, label="Steps", elem_id="ss-steps")
                c["guidance"] = compat.make(gr.Slider, minimum=0, maximum=20, step=0.5, value=7.5, label="Guidance (CFG)",
                                            elem_id="ss-guidance")
            with gr.Row():
                c["width"] = compat.make(gr.Number, label="Width (0 = model default)", value=default_size or 0, precision=0,
                                         elem_id="ss-width")
                c["height"] = compat.make(gr.Number, label="Height", value=default_size or 0, precision=0, elem_id="ss-height")
            with gr.Row():
                c["scheduler"] = compat.make(gr.Dropdown, choices=[(SCHEDULER_LABELS.get(k, k), k) for k in SCHEDULERS]
                                             if compat.GRADIO_MAJOR >= 4 else list(SCHEDULERS), value="ddim",
                                             label="Scheduler", elem_id="ss-scheduler")
                c["sharpness_at"] = compat.make(gr.Dropdown, choices=list(SHARPNESS_CHOICES), value="step 1 (detection)",
                                                label="Sharpness at", elem_id="ss-sharpness-at")
            c["sail_on"] = compat.make(gr.Checkbox, label="SAIL (mitigate memorization)", value=False, elem_id="ss-sail",
                                       interactive=with_sail)
            c["compare"] = compat.make(gr.Checkbox, label="Compare with original", value=True, elem_id="ss-compare")
            with compat.make(gr.Accordion, label="SAIL advanced", open=False, elem_id="ss-sail-advanced"):
                c["sail_objective"] = compat.make(gr.Radio, choices=["paper", "reference"], value="paper",
                                                  label="Objective", elem_id="ss-sail-objective")
                with gr.Row():
                    c["sail_threshold"] = compat.make(gr.Textbox, value="auto", label="Threshold (auto = calibrated median)",
                                                      elem_id="ss-sail-threshold")
                    c["sail_trigger"] = compat.make(gr.Textbox, value="auto",
                                                    label="Trigger: keep starts at or below (auto = calibrated q0.9, none)",
                                                    elem_id="ss-sail-trigger")
                with gr.Row():
                    c["sail_max_steps"] = compat.make(gr.Slider, minimum=0, maximum=50, step=1, value=_sail_default("max_steps", 0),
                                                      label="Max steps", elem_id="ss-sail-max-steps")
                    c["sail_candidates"] = compat.make(gr.Slider, minimum=1, maximum=8, step=1, value=1,
                                                       label="Candidates", elem_id="ss-sail-candidates")
                    c["sail_lr"] = compat.make(gr.Number, value=_sail_default("lr"), label="Learning rate",
                                               elem_id="ss-sail-lr")
                    c["sail_rounds"] = compat.make(gr.Slider, minimum=1, maximum=8, step=1, value=_sail_default("rounds", 1),
                                                   label="Rounds (fresh noise when a round fails)", elem_id="ss-sail-rounds")
            with compat.make(gr.Accordion, label="Spectrum", open=False, elem_id="ss-spectrum-settings"):
                c["spectrum_steps"] = compat.make(gr.Textbox, value="1", label="Steps (comma-separated, empty = none)",
                                                  elem_id="ss-spectrum-steps")
                with gr.Row():
                    c["spectrum_method"] = compat.make(gr.Dropdown, choices=list(SPECTRUM_METHODS), value="arnoldi",
                                                       label="Method", elem_id="ss-spectrum-method")
                    c["spectrum_k"] = compat.make(gr.Slider, minimum=2, maximum=32, step=1, value=8, label="Eigenvalues k",
                                                  elem_id="ss-spectrum-k")
            with gr.Row():
                c["generate"] = compat.make(gr.Button, value="Generate", variant="primary", elem_id="ss-generate")
                c["cancel"] = compat.make(gr.Button, value="Cancel", variant="stop", elem_id="ss-cancel")
            # the Cancel acknowledgement has its own output: an event never waits on the running job's outputs
            c["cancel_note"] = compat.make(gr.HTML, value="", elem_id="ss-cancel-note")
        with gr.Column(scale=3, min_width=420):
            c["status"] = compat.make(gr.HTML, value=status_html("ready"), elem_id="ss-status")
            c["risk"] = compat.make(gr.HTML, value=risk_html(None, None, ""), elem_id="ss-risk")
            with gr.Row():
                c["image_original"] = compat.make(gr.Image, label="Original", type="filepath", interactive=False,
                                                  elem_id="ss-image-original", height=320)
                c["image_sail"] = compat.make(gr.Image, label="SAIL (mitigated)", type="filepath", interactive=False,
                                              elem_id="ss-image-sail", height=320)
            if compat.HAS_IMAGE_SLIDER:
                c["image_slider"] = compat.make(gr.ImageSlider, label="Original ↔ SAIL", type="filepath",
                                                interactive=False, visible=False, elem_id="ss-image-slider")
            else:
                c["image_slider"] = compat.make(gr.HTML, value="", visible=False, elem_id="ss-image-slider")
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
    return c


GEN_INPUTS = ("prompt", "negative", "seed", "steps", "guidance", "width", "height", "scheduler", "sharpness_at",
              "sail_on", "sail_objective", "sail_threshold", "sail_max_steps", "sail_candidates", "compare",
              "spectrum_steps", "spectrum_method", "spectrum_k", "sail_trigger", "sail_lr", "sail_rounds")


def wire_generate(ctx: AppContext, c: dict) -> None:
    """Connect the Generate view's events (model work through the one-slot ``model`` queue)."""

    # explicit positional parameters: gradio injects gr.Request only into those (not after *args)
    def _generate(prompt, negative, seed, steps, guidance, width, height, scheduler, sharpness_at, sail_on,
                  sail_objective, sail_threshold, sail_max_steps, sail_candidates, compare, spectrum_steps,
                  spectrum_method, spectrum_k, sail_trigger, sail_lr, sail_rounds, request: gr.Request):
        yield from generate_handler(ctx, prompt, negative, seed, steps, guidance, width, height, scheduler, sharpness_at,
                                    sail_on, sail_objective, sail_threshold, sail_max_steps, sail_candidates, compare,
                                    spectrum_steps, spectrum_method, spectrum_k, sail_trigger, sail_lr, sail_rounds,
                                    request=request)

    def _cancel(request: gr.Request):
        return cancel_handler(ctx, request)

    inputs = [c[name] for name in GEN_INPUTS]
    outputs = [c[name] for name in GEN_OUTPUTS]
    c["generate"].click(_generate, inputs, outputs,
                        **compat.event_kwargs(model_job=True, progress_on=c["status"], api_name="generate"))
    c["cancel"].click(_cancel, None, [c["cancel_note"]], **compat.event_kwargs(queue=False, api_name="cancel"))
    c["generate"].click(lambda: "", None, [c["cancel_note"]], **compat.event_kwargs(queue=False))
    c["random_seed"].click(random_seed, None, [c["seed"]], **compat.event_kwargs(queue=False))
    for trigger in (c["spectrum_step"], c["spectrum_run"]):
        trigger.change(spectrum_view_handler, [c["state"], c["spectrum_run"], c["spectrum_step"]], [c["spectrum_plot"]],
                       **compat.event_kwargs(queue=False))


def build_ui(config: AppConfig | None = None, *, pipe: Any = None, context: AppContext | None = None) -> gr.Blocks:
    """The whole app as ``gr.Blocks`` (queue enabled, not launched). ``pipe``: an already loaded model."""
    ctx = context or AppContext(config or AppConfig())
    if pipe is not None:
        ctx.models.pipe = pipe
    demo = compat.blocks("SAIL Scope", _css())
    demo.sailscope_context = ctx  # type: ignore[attr-defined]
    with demo:
        header = compat.make(gr.Markdown, value=header_markdown(ctx), elem_id="ss-header")
        with gr.Tabs(elem_id="ss-tabs"):
            with compat.make(gr.Tab, label="Generate", id="generate", elem_id="ss-tab-generate"):
                gen = generate_panel(ctx, with_sail=sail_available())
                wire_generate(ctx, gen)
            with compat.make(gr.Tab, label="Compare prompts", id="compare", elem_id="ss-tab-compare"):
                _compare_view(ctx)
            with compat.make(gr.Tab, label="Audit", id="audit", elem_id="ss-tab-audit"):
                _audit_view(ctx)
            with compat.make(gr.Tab, label="Model", id="model", elem_id="ss-tab-model"):
                _model_view(ctx, header)
    demo.sailscope_components = gen  # type: ignore[attr-defined]
    return compat.enable_queue(demo)


def _compare_view(ctx: AppContext) -> None:
    with gr.Row(equal_height=False) if "equal_height" in compat._params(gr.Row.__init__) else gr.Row():
        with gr.Column(scale=2, min_width=320):
            prompts = compat.make(gr.Textbox, label="Prompts (one per line)", lines=6, elem_id="ss-compare-prompts")
            seeds = compat.make(gr.Textbox, label="Seeds (comma-separated)", value="0", elem_id="ss-compare-seeds")
            with gr.Row():
                steps = compat.make(gr.Slider, minimum=1, maximum=150, step=1, value=50, label="Steps")
                guidance = compat.make(gr.Slider, minimum=0, maximum=20, step=0.5, value=7.5, label="Guidance")
            scheduler = compat.make(gr.Dropdown, choices=list(SCHEDULERS), value="ddim", label="Scheduler")
            with gr.Row():
                method = compat.make(gr.Dropdown, choices=list(SPECTRUM_METHODS), value="arnoldi", label="Spectrum method")
                k = compat.make(gr.Slider, minimum=2, maximum=32, step=1, value=8, label="Eigenvalues k")
            with gr.Row():
                run = compat.make(gr.Button, value="Compare", variant="primary", elem_id="ss-compare-run")
                cancel = compat.make(gr.Button, value="Cancel", variant="stop", elem_id="ss-compare-cancel")
            note = compat.make(gr.HTML, value="", elem_id="ss-compare-cancel-note")
        with gr.Column(scale=3, min_width=420):
            status = compat.make(gr.HTML, value=status_html("ready"), elem_id="ss-compare-status")
            plot = compat.make(gr.Plot, label="Spectra and step-1 sharpness", value=plots.compare_figure([]),
                               elem_id="ss-compare-plot")
            table = compat.make(gr.Dataframe, headers=COMPARE_HEADERS, interactive=False, elem_id="ss-compare-table")

    def _run(prompts_v, seeds_v, steps_v, guidance_v, scheduler_v, method_v, k_v, request: gr.Request):
        yield from compare_handler(ctx, prompts_v, seeds_v, steps_v, guidance_v, scheduler_v, method_v, k_v, request=request)

    def _cancel(request: gr.Request):
        return cancel_handler(ctx, request)

    run.click(_run, [prompts, seeds, steps, guidance, scheduler, method, k], [status, plot, table],
              **compat.event_kwargs(model_job=True, progress_on=status, api_name="compare"))
    cancel.click(_cancel, None, [note], **compat.event_kwargs(queue=False))


def _audit_view(ctx: AppContext) -> None:
    cfg = ctx.config
    with gr.Row(equal_height=False) if "equal_height" in compat._params(gr.Row.__init__) else gr.Row():
        with gr.Column(scale=2, min_width=320):
            prompts = compat.make(gr.Textbox, label="Prompts (one per line)", lines=6, elem_id="ss-audit-prompts")
            upload = compat.make(gr.File, label=f"…or upload .txt / .csv (prompt,memorized) / .jsonl (≤ {cfg.max_upload_bytes // 1024} KB)",
                                 file_types=[".txt", ".csv", ".jsonl"], type="filepath", elem_id="ss-audit-upload")
            memorized = compat.make(gr.Textbox, label="Known memorized prompts (optional, one per line; enables ROC/AUC)",
                                    lines=3, elem_id="ss-audit-memorized")
            with gr.Row():
                seeds = compat.make(gr.Slider, minimum=1, maximum=8, step=1, value=4, label="Seeds per prompt",
                                   elem_id="ss-audit-seeds")
                steps = compat.make(gr.Slider, minimum=1, maximum=150, step=1, value=50, label="Steps (sets t at step 1)")
            with gr.Row():
                metric = compat.make(gr.Radio, choices=["sharpness", "wen"], value="sharpness", label="Score")
                name = compat.make(gr.Textbox, value="audit", label="Audit name (same name resumes)", elem_id="ss-audit-name")
            with gr.Row():
                run = compat.make(gr.Button, value="Run audit", variant="primary", elem_id="ss-audit-run")
                cancel = compat.make(gr.Button, value="Cancel", variant="stop", elem_id="ss-audit-cancel")
            note = compat.make(gr.HTML, value="", elem_id="ss-audit-cancel-note")
        with gr.Column(scale=3, min_width=420):
            status = compat.make(gr.HTML, value=status_html("ready"), elem_id="ss-audit-status")
            table = compat.make(gr.Dataframe, headers=AUDIT_HEADERS, interactive=False, elem_id="ss-audit-table")
            with gr.Row():
                hist = compat.make(gr.Plot, label="Histogram", value=plots.histogram_figure([]), elem_id="ss-audit-hist")
                roc = compat.make(gr.Plot, label="ROC", value=plots.roc_figure(None, None, None), elem_id="ss-audit-roc")
            export = compat.make(gr.File, label="Export (CSV, JSON)", file_count="multiple", interactive=False,
                                 elem_id="ss-audit-export")

    def _run(prompts_v, upload_v, memorized_v, seeds_v, steps_v, metric_v, name_v, request: gr.Request):
        yield from audit_handler(ctx, prompts_v, upload_v, memorized_v, seeds_v, steps_v, metric_v, name_v, request=request)

    def _cancel(request: gr.Request):
        return cancel_handler(ctx, request)

    run.click(_run, [prompts, upload, memorized, seeds, steps, metric, name], [status, table, hist, roc, export],
              **compat.event_kwargs(model_job=True, progress_on=status, api_name="audit"))
    cancel.click(_cancel, None, [note], **compat.event_kwargs(queue=False))


def _model_view(ctx: AppContext, header: Any) -> None:
    info = ctx.models.info
    choices = ctx.models.choices()
    current = info.path if info is not None and info.source != "demo" else ("demo" if info is not None else None)
    with gr.Column():
        with gr.Row():
            choice = compat.make(gr.Dropdown, choices=choices, value=current if current in choices else (choices[0] if choices else None),
                                 label="Model (demo and the configured folders)", elem_id="ss-model-choice")
            refresh = compat.make(gr.Button, value="↻ Refresh", scale=0, min_width=90, elem_id="ss-model-refresh")
        path = compat.make(gr.Textbox, label="Model path (allowed by --allow-paths)", visible=ctx.config.allow_paths,
                           elem_id="ss-model-path")
        with gr.Row():
            device = compat.make(gr.Dropdown, choices=list(DEVICES), value=ctx.config.device or "auto", label="Device")
            dtype = compat.make(gr.Dropdown, choices=list(DTYPES), value=ctx.config.dtype or "auto", label="Dtype")
        load = compat.make(gr.Button, value="Load", variant="primary", elem_id="ss-model-load")
        status = compat.make(gr.Markdown, value=model_status(ctx), elem_id="ss-model-status")

    def _load(choice_v: str, path_v: str, device_v: str, dtype_v: str):
        return load_model_handler(ctx, choice_v, path_v, device_v, dtype_v)

    load.click(_load, [choice, path, device, dtype], [status, choice, header],
               **compat.event_kwargs(model_job=True, progress_on=status, api_name="load_model"))
    refresh.click(lambda: refresh_models_handler(ctx), None, [choice], **compat.event_kwargs(queue=False))


def launch(demo: gr.Blocks, config: AppConfig, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           prevent_thread_lock: bool = False, quiet: bool = False) -> Any:
    """Launch with the stylesheet, the outputs folder served for downloads, and an upload size cap."""
    Path(config.outputs).mkdir(parents=True, exist_ok=True)
    kwargs = compat.launch_kwargs(
        _css(), server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock, quiet=quiet,
        allowed_paths=[str(Path(config.outputs).resolve())], max_file_size=config.max_upload_bytes * 2,
        show_error=True, inbrowser=False, ssr_mode=False,
    )
    return demo.launch(**kwargs)
