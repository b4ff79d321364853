"""What A1111/ComfyUI users expect around the Generate form: ♻ reuse the last click's seed, Ctrl+Enter to generate.

The ♻ button is laid out by the Generate view (next to 🎲, ``generate["reuse_seed"]``); its wiring and the keyboard
shortcut live here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from sailscope.ui import compat

# Ctrl+Enter (⌘+Enter on a Mac) clicks Generate while the Generate tab is shown, as in A1111
CTRL_ENTER_JS = """
() => {
  if (window.__sailscopeCtrlEnter) return;
  window.__sailscopeCtrlEnter = true;
  document.addEventListener('keydown', (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.key !== 'Enter') return;
    const button = document.querySelector('#ss-generate');
    if (!button || button.offsetParent === null || button.disabled) return;
    e.preventDefault();
    button.click();
  });
}
"""


def last_seed(report_file: Any, current: Any, state: Any = None) -> Any:
    """The seed the session's last Generate click started from (the first image's, for a batch: the Generate
    state's first report), else its report's, else the current value unchanged."""
    reports = (state or {}).get("reports") if isinstance(state, dict) else None
    path = reports[0] if reports else getattr(report_file, "name", report_file)
    if not path or not Path(str(path)).is_file():
        return current
    try:
        seed = (json.loads(Path(str(path)).read_text(encoding="utf-8")).get("settings") or {}).get("seed")
    except (OSError, ValueError):
        return current
    return seed if isinstance(seed, int) else current


def wire_shortcuts(demo: gr.Blocks, generate: dict[str, Any]) -> None:
    """♻ (when the Generate view has it) and Ctrl+Enter."""
    if "reuse_seed" in generate:
        generate["reuse_seed"].click(last_seed, [generate["report_file"], generate["seed"], generate["state"]],
                                     [generate["seed"]],
                                     **compat.event_kwargs(queue=False))
    js = {"js": CTRL_ENTER_JS} if compat.GRADIO_MAJOR >= 4 else {"_js": CTRL_ENTER_JS}
    demo.load(None, None, None, **compat.supported(demo.load, js))
