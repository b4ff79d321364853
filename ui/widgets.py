"""What the views share: the HTML read-outs (status line, risk badge, header), Cancel, and event wiring.

Handlers are plain functions of the :class:`~sailscope.ui.jobs.AppContext` and the components' values that
return or yield ``{output name: value}`` dicts (an output left out is not changed), so tests call them without a
browser. :func:`bind` connects one to gradio: it maps the names to the view's components.
"""
from __future__ import annotations

import inspect
import logging
import traceback
from html import escape
from typing import Any, Callable, Mapping, Sequence

import gradio as gr

from sailscope.core.detect import NoiseCheck, verdict
from sailscope.core.errors import Cancelled, SailScopeError
from sailscope.ui import compat
from sailscope.ui.jobs import AppContext

log = logging.getLogger("sailscope.ui")

Components = Mapping[str, Any]  # a view's components by name


def session_of(request: Any) -> str:
    """The browser session a request comes from (``local`` for direct calls)."""
    return getattr(request, "session_hash", None) or "local"


# ----------------------------------------------------------------------------------------------
# HTML read-outs
# ----------------------------------------------------------------------------------------------
def failure_update(exc: BaseException, what: str) -> dict[str, Any]:
    """What a view shows when its job stops early: a cancel as a warning, a user error's own message (also as a
    toast), anything else as an internal error whose traceback goes to the server log; the app keeps serving."""
    if isinstance(exc, Cancelled):
        return {"status": status_html(f"cancelled ({exc})", "warn")}
    if isinstance(exc, SailScopeError):
        compat.warn(str(exc))
        return {"status": status_html(str(exc), "error")}
    log.error("%s failed:\n%s", what, "".join(traceback.format_exception(exc)))
    return {"status": status_html(f"internal error: {type(exc).__name__}: {exc}", "error")}


def status_html(message: str, kind: str = "info", done: int | None = None, total: int | None = None) -> str:
    """A message with an optional progress bar (``kind``: info, ok, warn, error)."""
    bar = ""
    if done is not None and total:
        pct = max(0.0, min(100.0, 100.0 * done / total))
        bar = (f'<div class="ss-progress" role="progressbar" aria-valuemin="0" aria-valuemax="{total}" '
               f'aria-valuenow="{done}"><div class="ss-progress-fill" style="width:{pct:.1f}%"></div></div>')
    return f'<div class="ss-status ss-{kind}">{bar}<div class="ss-status-text">{escape(message)}</div></div>'


VERDICT_WORDS = {  # risk level -> (headline, one-line explanation)
    "high": ("Likely reproduces a training image",
             "Prompts the model memorized make its first denoising step unusually sharp; this prompt's step-1 "
             "sharpness is above the alarm level, which about 1 in 100 ordinary prompts reach."),
    "low": ("No sign of memorization",
            "Its step-1 sharpness (how sharp the first denoising step is) is in the range of ordinary prompts the "
            "model did not memorize."),
}


VERDICT_SHORT = {"high": "likely a copy", "low": "no sign of memorization",
                 "uncalibrated": "not calibrated for these settings",
                 "sharp-noise": "no verdict at this seed (its noise is sharp for ordinary prompts too)",
                 "unknown": "no verdict"}  # captions


def verdict_caption(level: str, sharpness: float | None = None, threshold: float | None = None) -> str:
    """A verdict (``core.detect.verdict``) in a gallery caption's few words, with the ratio when known:
    ``likely a copy (1.9× the alarm level)``."""
    words = VERDICT_SHORT.get(level, VERDICT_SHORT["unknown"])
    if level in ("high", "low") and sharpness is not None and threshold:
        return f"{words} ({sharpness / threshold:.2g}× the alarm level)"
    return words


def _settings_words(cal: Mapping[str, Any]) -> str:
    size = f", {cal['width']}×{cal['height']}" if cal.get("width") else ""
    return f"{cal.get('steps')} {cal.get('scheduler', '').upper()} steps, guidance {float(cal.get('guidance', 0)):g}{size}"


def risk_html(sharpness: float | None, threshold: float | None, source: str, after: float | None = None, *,
              mismatch: Sequence[str] = (), calibrated: Mapping[str, Any] | None = None,
              sail_not_needed: bool = False, noise: NoiseCheck | None = None) -> str:
    """The verdict badge in plain words (level by ``core.detect.risk_level``): a headline with the step-1
    sharpness as a multiple of the alarm level, a one-line explanation, and a "How is this computed?" expander with
    the exact numbers. Off the settings the threshold was calibrated at (``mismatch``) it says so instead of
    giving a verdict."""
    if sharpness is None:
        return ('<div class="ss-risk ss-risk-none" data-risk="none"><b>Memorization check:</b> runs at the first '
                'denoising step (step-1 sharpness)</div>')
    level = verdict(sharpness, threshold, mismatch=mismatch, noise=noise)
    rows = [("step-1 sharpness ‖H_Δ s_Δ‖² (how sharply the prompt pulls the first step)", f"{sharpness:.4g}")]
    if level == "unknown":
        head, line = "Memorization check unavailable", f"No alarm level for this model: {source}."
        ratio = None
    else:
        ratio = sharpness / threshold
        head, line = VERDICT_WORDS.get(level, ("", ""))  # the no-verdict levels get their words below
        head = f"{head}: {ratio:.2g}× the alarm level"
        rows += [("alarm level (detection threshold)", f"{threshold:.4g}"), ("ratio", f"{ratio:.3g}×"),
                 ("alarm level from", source)]
        if calibrated:
            rows.append(("calibrated at", _settings_words(calibrated)))
    if noise is not None and threshold:
        rows.append((f"ordinary prompts at this seed's noise (median of {len(noise.sharpness)})",
                     f"{noise.median:.4g} ({noise.median / threshold:.2g}× the alarm level)"))
    if level == "sharp-noise":
        head = f"No verdict at this seed: {ratio:.2g}× the alarm level"
        line = (f"This seed's starting noise makes the first step sharp for ordinary prompts too (median of "
                f"{len(noise.sharpness)} prompts the model did not memorize: {noise.median / threshold:.2g}× the alarm "
                "level), so a high value here says little about the prompt. Try another seed.")
    if level == "uncalibrated":
        head = f"Not calibrated for these settings: {ratio:.2g}× the alarm level"
        line = ("The alarm level was measured at " + _settings_words(calibrated or {}) + "; this run uses "
                + ", ".join(mismatch) + ". The step-1 sharpness is shown, but no verdict: regenerate at the calibrated "
                "settings, or calibrate for these (`sailscope calibrate`).")
    if after is not None:
        rows.append(("after SAIL: step-1 sharpness", f"{after:.4g}" + (f" ({after / threshold:.2g}× the alarm level)"
                                                                      if threshold else "")))
        if threshold and level not in ("uncalibrated", "sharp-noise"):
            line += f" After SAIL: {after / threshold:.2g}× the alarm level."
    if sail_not_needed:
        line += " SAIL not needed: this seed's start is already flat, so its image is kept."
    table = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    css = "uncalibrated" if level == "sharp-noise" else level  # both are "no verdict"
    return (f'<div class="ss-risk ss-risk-{css}" data-risk="{level}"><div class="ss-risk-head"><b>{escape(head)}</b>'
            f'</div><div class="ss-risk-line">{escape(line)}</div><details class="ss-risk-details"><summary>How is '
            f'this computed?</summary><table>{table}</table><p>The score is the squared norm of the Hessian of the '
            f'log-density difference (conditional − unconditional) applied to the score difference, at the first '
            f'sampling step (finite-difference product). The alarm level is the 99th percentile of the same number '
            f'over prompts the model did not memorize; at or above it the verdict is "likely reproduces".</p>'
            f'</details></div>')


def header_markdown(ctx: AppContext) -> str:
    info = ctx.models.info
    model = f"model **{info.name}** on {info.device}" if info is not None else "no model loaded"
    return f"## SAIL Scope\nMemorization lens (per-step sharpness, spectra) and fix (SAIL) · {model}"


# ----------------------------------------------------------------------------------------------
# Cancel (one per view, each with its own acknowledgement output)
# ----------------------------------------------------------------------------------------------
def cancel_handler(ctx: AppContext, request: Any = None) -> str:
    """Set the session's cancel flag; returns the acknowledgement (the note next to the Cancel button)."""
    if ctx.cancels.cancel(session_of(request)):
        return status_html("cancelling… (stops before the next step)", "warn")
    return status_html("nothing to cancel", "info")


def busy_html(ctx: AppContext, request: Any = None) -> str:
    """For a session whose job is about to queue: what the model is busy with (other sessions' jobs), or ``""``."""
    jobs = ctx.cancels.running(exclude=session_of(request))
    if not jobs:
        return ""
    what, seconds = jobs[0]
    more = f" (and {len(jobs) - 1} more waiting)" if len(jobs) > 1 else ""
    return status_html(f"Waiting for the model: another session is running {what}, {seconds:.0f} s so far{more}. "
                       "One job runs at a time; yours starts when it finishes (your place in the queue is shown "
                       "above).", "warn")


def wire_busy_note(ctx: AppContext, button: Any, note: Any) -> None:
    """On click, before queueing: tell the user what the one model slot is busy with (outside the queue)."""

    def busy(request: gr.Request) -> str:
        return busy_html(ctx, request)

    button.click(busy, None, [note], **compat.event_kwargs(queue=False))


def wire_unload(ctx: AppContext, demo: Any) -> None:
    """A closed or reloaded tab cancels its session's job (gradio's ``unload`` event, gradio >= 4), so the next
    user does not wait behind a job nobody can see or cancel."""

    def unload(request: gr.Request) -> None:
        ctx.cancels.cancel(session_of(request))

    if hasattr(demo, "unload"):
        demo.unload(unload)


def wire_cancel(ctx: AppContext, button: Any, note: Any, **kwargs: Any) -> None:
    """Cancel outside the queue: its acknowledgement never waits behind the running job."""

    def cancel(request: gr.Request) -> str:
        return cancel_handler(ctx, request)

    button.click(cancel, None, [note], **compat.event_kwargs(queue=False, **kwargs))


# ----------------------------------------------------------------------------------------------
# Event wiring
# ----------------------------------------------------------------------------------------------
def bind(listener: Callable, handler: Callable, components: Components, inputs: Sequence[str],
         outputs: Sequence[str], **kwargs: Any) -> Any:
    """``listener(fn, inputs, outputs, **kwargs)`` (e.g. ``button.click``) for ``handler(values, request)``.

    ``values`` is ``{input name: value}``; the handler returns (or, as a generator, yields) ``{output name:
    value}`` dicts, which become ``{component: value}``. The callback gradio sees has one positional parameter
    per input name plus ``request: gr.Request`` (gradio injects the request only into a parameter annotated with
    it, never after ``*args``), so the API keeps named parameters in ``inputs`` order.
    """
    names = tuple(inputs)
    targets = {name: components[name] for name in outputs}

    def split(args: tuple) -> tuple[dict[str, Any], Any]:
        return dict(zip(names, args[:len(names)])), (args[len(names)] if len(args) > len(names) else None)

    def to_components(update: Mapping[str, Any]) -> dict:
        return {targets[name]: value for name, value in update.items()}

    if inspect.isgeneratorfunction(handler):
        def callback(*args: Any) -> Any:
            values, request = split(args)
            for update in handler(values, request):
                yield to_components(update)
    else:
        def callback(*args: Any) -> Any:
            values, request = split(args)
            return to_components(handler(values, request))

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request))
    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__annotations__ = {"request": gr.Request}
    callback.__name__ = callback.__qualname__ = getattr(handler, "__name__", "handler")
    return listener(callback, [components[n] for n in names], list(targets.values()), **kwargs)
