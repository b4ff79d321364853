"""What the views share: the HTML read-outs (status line, risk badge, header), Cancel, and event wiring.

Handlers are plain functions of the :class:`~sailscope.ui.jobs.AppContext` and the components' values that
return or yield ``{output name: value}`` dicts (an output left out is not changed), so tests call them without a
browser. :func:`bind` connects one to gradio: it maps the names to the view's components.
"""
from __future__ import annotations

import inspect
from html import escape
from typing import Any, Callable, Mapping, Sequence

import gradio as gr

from sailscope.core.detect import risk_level
from sailscope.ui import compat
from sailscope.ui.jobs import AppContext

Components = Mapping[str, Any]  # a view's components by name


def session_of(request: Any) -> str:
    """The browser session a request comes from (``local`` for direct calls)."""
    return getattr(request, "session_hash", None) or "local"


# ----------------------------------------------------------------------------------------------
# HTML read-outs
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
    """The memorization-risk badge: level (``core.detect.risk_level``), step-1 sharpness, threshold and its source."""
    if sharpness is None:
        return '<div class="ss-risk ss-risk-none">Memorization risk: not measured yet (step-1 sharpness)</div>'
    level = risk_level(sharpness, threshold)
    cmp = {"high": "≥", "low": "<"}.get(level, "vs")
    thr = f"{cmp} threshold {threshold:.4g} ({escape(source)})" if threshold is not None else f"(no threshold: {escape(source)})"
    extra = f" · after SAIL {after:.4g}" if after is not None else ""
    return (f'<div class="ss-risk ss-risk-{level}" data-risk="{level}"><b>Memorization risk: {level.upper()}</b> · '
            f'step-1 sharpness {sharpness:.4g} {thr}{extra}</div>')


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
