"""Gradio version check: build the app, launch it, and run one generation through its HTTP queue.

    /path/to/venv-with-gradio-X/bin/python tests/bench/app_gradio_compat.py [--panel-only]

Used with throw-away venvs (``python -m venv --system-site-packages``; ``pip install gradio==4.40.0`` or
``gradio==3.41.2``) so the system gradio stays untouched. ``--panel-only`` builds only the Generate panel
(the part the A1111 tab reuses) inside a bare ``gr.Blocks`` without loading a model (so it also runs where the
installed diffusers/transformers do not fit that gradio's huggingface_hub pin). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--panel-only", action="store_true")
    args = parser.parse_args()
    import gradio as gr

    from sailscope.ui.app import AppContext, build_ui, launch
    from sailscope.ui.forms import GENERATE_FIELDS, GenerateForm
    from sailscope.ui.jobs import AppConfig
    from sailscope.ui.views.generate import GENERATE_OUTPUTS, generate_panel, wire_generate

    tmp = tempfile.mkdtemp()
    os.environ.setdefault("SAILSCOPE_HOME", tmp)
    ctx = AppContext(AppConfig(outputs=tmp))
    out = {"gradio": gr.__version__}
    if args.panel_only:
        with gr.Blocks() as demo:
            c = generate_panel(ctx)
            wire_generate(ctx, c)
        out["panel_components"] = len(c)
        out["ok"] = all(k in c for k in GENERATE_FIELDS + GENERATE_OUTPUTS)
        print(json.dumps(out))
        return 0 if out["ok"] else 1
    from sailscope.core.testing import tiny_pipeline  # needs diffusers/transformers that fit this gradio

    ctx.models.pipe = tiny_pipeline()
    demo = build_ui(context=ctx)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(demo, ctx.config, port=port, prevent_thread_lock=True, quiet=True)
    from gradio_client import Client

    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    form = GenerateForm(prompt="a red square", seed=0, steps=3, width=0, height=0, sail_max_steps=2, spectrum_k=4)
    t0 = time.perf_counter()
    result = client.predict(*[getattr(form, k) for k in GENERATE_FIELDS], api_name="/generate")
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["status"] = str(result[0])[-160:]
    out["ok"] = "ss-ok" in str(result[0])
    print(json.dumps(out))
    demo.close()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
