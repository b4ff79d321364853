"""The SAIL Scope web app: ``build_ui(...) -> gr.Blocks`` (never launches on import) and :func:`launch`.

One tab per view (``ui/views``: Generate, Compare prompts, Audit, Model); each view module holds its layout,
its handlers and their wiring. Every number shown comes from ``core``; the UI only formats.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from sailscope.ui import compat
from sailscope.ui.jobs import AppConfig, AppContext
from sailscope.ui.views.audit import audit_view
from sailscope.ui.views.compare import compare_view
from sailscope.ui.views.copies import ReferenceProvider, copies_panel, copies_view
from sailscope.ui.views.generate import generate_view
from sailscope.ui.views.history import history_view
from sailscope.ui.views.model import model_view
from sailscope.ui.views.picks import picks_panel
from sailscope.ui.views.pnginfo import pnginfo_view
from sailscope.ui.views.shortcuts import wire_shortcuts
from sailscope.ui.widgets import header_markdown, wire_unload

__all__ = ["AppConfig", "AppContext", "build_ui", "css", "launch"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def css() -> str:
    """The app's stylesheet (``assets/css/app.css``; empty when missing)."""
    path = ASSETS / "css" / "app.css"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def build_ui(config: AppConfig | None = None, *, pipe: Any = None, context: AppContext | None = None,
             reference_dir: str | None = None, reference_tau: float | None = None) -> gr.Blocks:
    """The whole app as ``gr.Blocks`` (queue enabled, not launched). ``pipe``: an already loaded model.
    ``reference_dir``/``reference_tau``: the server's folder of known images and its copy threshold (copies view).

    ``demo.sailscope_context`` is the :class:`AppContext`, ``demo.sailscope_components`` the Generate view's
    components by name.
    """
    ctx = context or AppContext(config or AppConfig())
    if pipe is not None:
        ctx.models.pipe = pipe
    demo = compat.blocks("SAIL Scope", css())
    demo.sailscope_context = ctx  # type: ignore[attr-defined]
    refs = ReferenceProvider(reference_dir, reference_tau)
    with demo:
        header = compat.make(gr.Markdown, value=header_markdown(ctx), elem_id="ss-header")
        with gr.Tabs(elem_id="ss-tabs") as tabs:
            with compat.make(gr.Tab, label="Generate", id="generate", elem_id="ss-tab-generate"):
                generate = generate_view(ctx)
                picks_panel(ctx, generate)
                copies_panel(ctx, generate, refs)
            with compat.make(gr.Tab, label="History", id="history", elem_id="ss-tab-history"):
                history_view(generate, tabs)
            with compat.make(gr.Tab, label="PNG Info", id="pnginfo", elem_id="ss-tab-pnginfo"):
                pnginfo_view(generate, tabs)
            with compat.make(gr.Tab, label="Check for copies", id="copies", elem_id="ss-tab-copies"):
                copies_view(ctx, refs)
            with compat.make(gr.Tab, label="Compare prompts", id="compare", elem_id="ss-tab-compare"):
                compare_view(ctx)
            with compat.make(gr.Tab, label="Audit", id="audit", elem_id="ss-tab-audit"):
                audit_view(ctx)
            with compat.make(gr.Tab, label="Model", id="model", elem_id="ss-tab-model"):
                model_view(ctx, header)
        wire_shortcuts(demo, generate)  # ♻ last seed, Ctrl+Enter = Generate
    wire_unload(ctx, demo)  # a closed or reloaded tab cancels its session's job
    demo.sailscope_components = generate  # type: ignore[attr-defined]
    return compat.enable_queue(demo)


def launch(demo: gr.Blocks, config: AppConfig, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           prevent_thread_lock: bool = False, quiet: bool = False) -> Any:
    """Launch with the stylesheet, the outputs folder served for downloads, and an upload size cap."""
    Path(config.outputs).mkdir(parents=True, exist_ok=True)
    kwargs = compat.launch_kwargs(
        css(), server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock, quiet=quiet,
        allowed_paths=[str(Path(config.outputs).resolve())], max_file_size=config.max_upload_bytes * 2,
        show_error=True, inbrowser=False, ssr_mode=False,
    )
    return demo.launch(**kwargs)
