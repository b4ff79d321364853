"""Model: choose and load a model (demo, the ``--models-dir`` folders, typed paths with ``--allow-paths``), its
device and dtype; shows the load status and the detection threshold with its source."""
from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import gradio as gr

from sailscope.core.errors import SailScopeError, UserInputError
from sailscope.ui import compat
from sailscope.ui.jobs import DEVICES, DTYPES, AppContext, detection_threshold
from sailscope.ui.widgets import bind, header_markdown, status_html

log = logging.getLogger("sailscope.ui")

MODEL_INPUTS = ("choice", "path", "device", "dtype", "loras", "lora_scales")
MODEL_OUTPUTS = ("status", "choice", "header")


def model_status(ctx: AppContext) -> str:
    info = ctx.models.info
    if info is None:
        return "**No model loaded.** " + (f"Last error: {ctx.models.error}" if ctx.models.error else "Choose one and press Load.")
    thr, src = detection_threshold(ctx.models.pipe)
    thr_text = f"{thr:.4g} ({src})" if thr is not None else f"none ({src})"
    loras = ", ".join(f"{x['name']} ×{x['scale']:g}" for x in info.loras) or "none"
    return (f"**Loaded:** `{info.name}` · {info.family.upper()} · source {info.source} · device {info.device} · "
            f"dtype {info.dtype} · prediction {info.prediction_type} · LoRAs: {loras}  \n"
            f"**Detection threshold:** {thr_text}")


def parse_scales(text: str | None) -> list[float]:
    """``"0.8, 1"`` -> [0.8, 1.0]; empty -> [] (every LoRA at 1)."""
    out = []
    for part in (text or "").replace(";", ",").split(","):
        if part.strip():
            try:
                out.append(float(part))
            except ValueError:
                raise UserInputError(f"LoRA strengths must be numbers separated by commas, got {part.strip()!r}") from None
    return out


def load_model_handler(ctx: AppContext, choice: str, path: str, device: str, dtype: str,
                       loras: list[str] | None = None, lora_scales: str = "") -> dict[str, Any]:
    """Load the chosen model (or a typed path when the server allows it) with the chosen LoRAs: the status, the
    refreshed model list and the page header."""
    model = (path or "").strip() if ctx.config.allow_paths and (path or "").strip() else choice
    try:
        t0 = time.perf_counter()
        ctx.models.load(model, device, dtype, loras=ctx.models.lora_specs(list(loras or []), parse_scales(lora_scales)))
        msg = f"loaded in {time.perf_counter() - t0:.1f} s"
        kind = "ok"
    except SailScopeError as exc:
        compat.warn(str(exc))
        msg, kind = str(exc), "error"
    except Exception as exc:
        log.error("model load failed:\n%s", traceback.format_exc())
        msg, kind = f"internal error: {type(exc).__name__}: {exc}", "error"
    return {"status": status_html(msg, kind) + "\n\n" + model_status(ctx), "choice": gr.update(choices=ctx.models.choices()),
            "header": header_markdown(ctx)}


def refresh_models_handler(ctx: AppContext) -> Any:
    """The model list again (one output: the dropdown)."""
    return gr.update(choices=ctx.models.choices())


def model_view(ctx: AppContext, header: Any) -> dict[str, Any]:
    """The Model tab's content, wired (``header``: the page header, refreshed after a load)."""
    info = ctx.models.info
    choices = ctx.models.choices()
    current = info.path if info is not None and info.source != "demo" else ("demo" if info is not None else None)
    c: dict[str, Any] = {"header": header}
    with gr.Column():
        with gr.Row():
            c["choice"] = compat.make(gr.Dropdown, choices=choices,
                                      value=current if current in choices else (choices[0] if choices else None),
                                      label="Model (demo and the configured folders)", elem_id="ss-model-choice")
            c["refresh"] = compat.make(gr.Button, value="↻ Refresh", scale=0, min_width=90, elem_id="ss-model-refresh")
        c["path"] = compat.make(gr.Textbox, label="Model path (allowed by --allow-paths)", visible=ctx.config.allow_paths,
                                elem_id="ss-model-path")
        with gr.Row():
            c["device"] = compat.make(gr.Dropdown, choices=list(DEVICES), value=ctx.config.device or "auto", label="Device")
            c["dtype"] = compat.make(gr.Dropdown, choices=list(DTYPES), value=ctx.config.dtype or "auto", label="Dtype")
        with gr.Row(visible=bool(ctx.config.lora_dirs)):
            current_loras = [x["name"] for x in info.loras] if info is not None else []
            c["loras"] = compat.make(gr.Dropdown, choices=sorted(ctx.models.lora_choices()), value=current_loras,
                                     multiselect=True, label="LoRAs (from the configured LoRA folders)",
                                     info="applied in order when the model loads; a LoRA changes the model, so it "
                                          "has its own calibration", elem_id="ss-model-loras")
            c["lora_scales"] = compat.make(gr.Textbox, value="", label="LoRA strengths",
                                           info="one per LoRA, or one for all (default 1)", elem_id="ss-model-lora-scales")
        c["load"] = compat.make(gr.Button, value="Load", variant="primary", elem_id="ss-model-load")
        c["status"] = compat.make(gr.Markdown, value=model_status(ctx), elem_id="ss-model-status")

    def load(values: dict[str, Any], request: Any) -> dict[str, Any]:
        return load_model_handler(ctx, **values)

    bind(c["load"].click, load, c, MODEL_INPUTS, MODEL_OUTPUTS,
         **compat.event_kwargs(model_job=True, progress_on=c["status"], api_name="load_model"))
    c["refresh"].click(lambda: refresh_models_handler(ctx), None, [c["choice"]], **compat.event_kwargs(queue=False))
    return c
