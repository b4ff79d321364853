"""The app as a new user meets it (issue 20), at the handler level on the tiny pipeline: spectra are opt-in,
watched and cancellable; a closed tab cancels its job; a waiting user is told why; the verdict in plain words;
settings the calibration was not measured at are said so; no silent clamping; SAIL-not-needed shortcut; files
carry no local paths and reproduce the SAIL image."""
from __future__ import annotations

import html
import json
import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")

from sailscope.core.testing import tiny_pipeline  # noqa: E402
from sailscope.ui.forms import GENERATE_FIELDS, GenerateForm  # noqa: E402
from sailscope.ui.jobs import AppConfig, AppContext  # noqa: E402
from sailscope.ui.outputs import read_infotext  # noqa: E402
from sailscope.ui.views.generate import generate_handler  # noqa: E402
from sailscope.ui.widgets import busy_html, cancel_handler  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture()
def ctx(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "home"))
    c = AppContext(AppConfig(outputs=str(tmp_path / "out"), live_interval=0.0))
    c.models.pipe = pipe
    return c


def request(session: str):
    return SimpleNamespace(session_hash=session)


def form(**over) -> GenerateForm:
    args = dict(prompt="a red square", steps=3, sail_max_steps=2, sail_candidates=1, spectrum_k=3)
    args.update(over)
    assert set(args) <= set(GENERATE_FIELDS)
    return GenerateForm(**args)


def text(update, key: str = "status") -> str:
    return html.unescape(update.get(key) or "")


def last(gen):
    out = None
    for out in gen:
        pass
    return out


# ----------------------------------------------------------------------------------------------
# 1. Spectra: opt-in, progress, cancel inside the solver, report at once
# ----------------------------------------------------------------------------------------------
def test_default_generate_computes_no_spectra_and_offers_the_report_with_the_images(ctx):
    assert GenerateForm().spectra_on is False
    updates = list(generate_handler(ctx, form(), request=request("a")))
    final = updates[-1]
    assert "ss-ok" in final["status"]
    report = json.loads(Path(final["report_file"]).read_text())
    assert report["spectra"] == {}
    assert not any("spectra" in text(u) for u in updates)


def test_spectra_show_progress_and_cancel_keeps_the_saved_images(ctx):
    gen = generate_handler(ctx, form(spectra_on=True, spectrum_steps="1", spectrum_k=8, spectrum_method="arnoldi"),
                           request=request("s"))
    saved_report = None
    for update in gen:
        if update.get("report_file"):
            saved_report = update["report_file"]  # offered as soon as the images are saved
        if "eigen-spectra 1 of 3" in text(update) and "matrix-vector products" in text(update):
            break
    else:
        pytest.fail("no spectra progress was shown")
    assert saved_report and Path(saved_report).is_file()
    assert 'role="progressbar"' in update["status"]
    clicked = time.perf_counter()
    assert "cancelling" in cancel_handler(ctx, request("s"))
    rest = list(gen)
    assert time.perf_counter() - clicked < 10
    final = text(rest[-1])
    assert "spectra cancelled" in final and "images and the report (without spectra) are saved" in final
    assert Path(rest[-1]["image_original"]).is_file()
    assert ctx.cancels._events == {}


# ----------------------------------------------------------------------------------------------
# 2. Sessions: a closed tab cancels its job; a waiting user is told what runs
# ----------------------------------------------------------------------------------------------
def test_waiting_user_is_told_what_runs_and_unload_cancels_the_closed_tab(ctx):
    from sailscope.ui import app as ui_app

    demo = ui_app.build_ui(context=ctx)
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    (unload,) = [f for f in fns if any(t[1] == "unload" for t in f.targets)]
    gen = generate_handler(ctx, form(steps=200), request=request("gone"))
    next(gen), next(gen)
    note = html.unescape(busy_html(ctx, request("next")))
    assert "another session is running Generate" in note and "s so far" in note
    assert busy_html(ctx, request("gone")) == ""  # its own job is not "another session"
    unload.fn(request("gone"))  # what gradio calls when the tab's heartbeat connection closes
    rest = list(gen)
    assert "cancelled" in text(rest[-1])
    assert busy_html(ctx, request("next")) == ""
