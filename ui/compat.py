"""Gradio version shims: one code path for gradio 3.41 (A1111), 4.40 (Forge) and current gradio (6.x).

Only what differs between those versions lives here; everything else uses the API they share
(``gr.update``, ``gr.Blocks``/``Row``/``Column``/``Tab``/``Accordion``, ``gr.Plot`` with plotly figures).

* keyword arguments a version does not know are dropped (:func:`make`, :func:`event_kwargs`);
* ``css`` goes to ``gr.Blocks`` before gradio 6 and to ``launch()`` from gradio 6 on;
* concurrency: ``concurrency_limit``/``concurrency_id`` per event (gradio >= 4), ``queue(concurrency_count=1)``
  on gradio 3;
* ``gr.ImageSlider`` (before/after slider) exists from gradio 5; older versions show two images;
* the queue's idle polling: gradio up to 5.x waited 50 ms between looks at an empty queue, newer gradio on Linux
  1 ms (and 10 ms for progress), which wakes the server 1000 times a second and takes the interpreter from a
  running generation (:func:`enable_queue` sets 20 ms / 100 ms; ``docs/performance.md``).
"""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import gradio as gr

GRADIO_VERSION = getattr(gr, "__version__", "0")
GRADIO_MAJOR = int(GRADIO_VERSION.split(".")[0] or 0)
HAS_IMAGE_SLIDER = hasattr(gr, "ImageSlider") and GRADIO_MAJOR >= 5


@lru_cache(maxsize=None)
def _params(fn: Any) -> frozenset[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        # gradio >= 6 components accept **kwargs only to warn about removed ones: treat as unknown
        return frozenset(n for n, p in sig.parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
    return frozenset(sig.parameters)


def supported(fn: Any, kwargs: dict) -> dict:
    """``kwargs`` restricted to the parameters ``fn`` declares in this gradio version."""
    names = _params(fn)
    return {k: v for k, v in kwargs.items() if k in names}


def make(cls: type, *args: Any, **kwargs: Any) -> Any:
    """Instantiate a component with only the keyword arguments this gradio version knows."""
    return cls(*args, **supported(cls.__init__, kwargs))


def blocks(title: str, css: str) -> gr.Blocks:
    """``gr.Blocks`` with the stylesheet where this version wants it (see :func:`launch_kwargs`)."""
    kwargs: dict = {"title": title, "analytics_enabled": False}
    if GRADIO_MAJOR < 6:
        kwargs["css"] = css
    return gr.Blocks(**supported(gr.Blocks.__init__, kwargs))


def launch_kwargs(css: str, **kwargs: Any) -> dict:
    """Keyword arguments for ``Blocks.launch`` (``css`` only from gradio 6 on)."""
    if GRADIO_MAJOR >= 6:
        kwargs["css"] = css
    return supported(gr.Blocks.launch, kwargs)


def _listener() -> object:
    """The ``click`` listener whose signature all event listeners share (gradio 3 defines it on ``Clickable``)."""
    click = getattr(gr.Button, "click", None)
    if click is None:
        events = getattr(gr, "events", None)
        click = getattr(getattr(events, "Clickable", None), "click", None)
    return click


def event_kwargs(*, model_job: bool = False, progress_on: Any = None, **kwargs: Any) -> dict:
    """Listener keyword arguments: model jobs share one queue slot (``concurrency_id="model"``, limit 1)."""
    if model_job:
        kwargs.update(concurrency_limit=1, concurrency_id="model")
    if progress_on is not None:
        if "show_progress_on" in _params(_listener()):
            kwargs["show_progress_on"] = progress_on
            kwargs.setdefault("show_progress", "full")
        else:
            kwargs.setdefault("show_progress", "minimal")
    return supported(_listener(), kwargs)


QUEUE_IDLE_POLL_S = 0.02  # between looks at a queue with nothing to start (a waiting job starts within this)
QUEUE_PROGRESS_POLL_S = 0.1  # between looks for gr.Progress updates to send


def enable_queue(demo: gr.Blocks, max_size: int = 64) -> gr.Blocks:
    """Turn the queue on: one model job at a time, others wait with their position shown; the queue polls at
    :data:`QUEUE_IDLE_POLL_S` instead of gradio 6's 1 ms on Linux."""
    if GRADIO_MAJOR >= 4:
        demo = demo.queue(**supported(demo.queue, {"max_size": max_size, "default_concurrency_limit": 1}))
    else:
        demo = demo.queue(**supported(demo.queue, {"concurrency_count": 1, "max_size": max_size}))
    queue = getattr(demo, "_queue", None)
    for name, seconds in (("sleep_when_free", QUEUE_IDLE_POLL_S), ("progress_update_sleep_when_free", QUEUE_PROGRESS_POLL_S)):
        if isinstance(getattr(queue, name, None), (int, float)):
            setattr(queue, name, max(getattr(queue, name), seconds))
    return demo


def warn(message: str) -> None:
    """A toast in the page where gradio has one (``gr.Warning`` from 3.41 inside handlers)."""
    fn = getattr(gr, "Warning", None)
    if fn is not None:
        try:
            fn(message)
        except Exception:  # outside a request context (direct handler calls in tests)
            pass
