"""The app with the models artists run (issue 18): an SDXL folder loads and runs Generate with SAIL and a spectrum
in a real browser, and the Model tab applies LoRAs from the configured folders by name (never by typed path)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from sailscope.core.testing import tiny_pipeline, tiny_sdxl_pipeline

gr = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    from test_lora import _save_lora

    tmp = tmp_path_factory.mktemp("lora")
    tiny_pipeline().save_pretrained(tmp / "models" / "tiny")
    (tmp / "loras").mkdir()
    path = _save_lora(tiny_pipeline(), tmp / "loras")
    path = path.rename(tmp / "loras" / "style.safetensors")
    return tmp, path


def test_model_tab_applies_loras_by_name(lora_setup, monkeypatch):
    from sailscope.ui.jobs import AppConfig, AppContext
    from sailscope.ui.views.model import load_model_handler

    tmp, lora = lora_setup
    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp / "home"))
    ctx = AppContext(AppConfig(model=None, models_dirs=(str(tmp / "models"),), lora_dirs=(str(tmp / "loras"),),
                               outputs=str(tmp / "out")))
    model = str(tmp / "models" / "tiny")
    assert ctx.models.lora_choices() == {"style": str(lora)}
    out = load_model_handler(ctx, model, "", "cpu", "fp32", ["style"], "0.5")
    assert "LoRAs: style ×0.5" in out["status"] and "SD" in out["status"]
    assert [(x["name"], x["scale"]) for x in ctx.models.info.loras] == [("style", 0.5)]
    assert str(tmp) not in out["status"]  # names on screen, never local paths
    for names, scales, words in ((["elsewhere"], "", "not in the configured LoRA folders"),
                                 (["style"], "x", "must be numbers"), (["style"], "1, 2", "one per LoRA")):
        out = load_model_handler(ctx, model, "", "cpu", "fp32", names, scales)
        assert words in out["status"]


@pytest.mark.browser
def test_sdxl_folder_runs_generate_with_sail_and_spectrum_in_the_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_app_browser import CHROMIUM, CHROMIUM_ARGS, _free_port, finished, set_number, status_text

    from sailscope.ui.app import build_ui, launch
    from sailscope.ui.jobs import AppConfig, AppContext

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} (python install.py --dev installs it)")
    os.environ["SAILSCOPE_HOME"] = str(tmp_path / "home")
    tiny_sdxl_pipeline().save_pretrained(tmp_path / "models" / "xl")
    config = AppConfig(model=None, models_dirs=(str(tmp_path / "models"),), outputs=str(tmp_path / "out"),
                       live_interval=0.5)
    ctx = AppContext(config)
    ctx.models.load(str(tmp_path / "models" / "xl"), "cpu", "fp32")
    assert ctx.models.info.family == "sdxl"
    demo = build_ui(context=ctx)
    port = _free_port()
    launch(demo, config, port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1100}, accept_downloads=True)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.wait_for_selector("#ss-generate", timeout=60_000)
            page.locator("#ss-prompt textarea").fill("a red circle on blue")
            set_number(page, "ss-steps", 8)
            page.locator("#ss-sail input[type=checkbox]").check()
            page.locator("#ss-spectra-on input[type=checkbox]").check()
            page.get_by_text("Spectrum settings", exact=True).click()
            set_number(page, "ss-spectrum-k", 3)
            page.get_by_text("SAIL advanced").click()
            page.locator("#ss-sail-threshold textarea, #ss-sail-threshold input").first.fill("1e-9")
            page.locator("#ss-generate").click()
            start = time.time()
            while not finished(page):
                assert time.time() - start < 600, status_text(page)
                time.sleep(0.2)
            assert "done" in status_text(page), status_text(page)
            for elem in ("#ss-image-original img", "#ss-image-sail img"):
                page.wait_for_selector(elem, timeout=30_000)
            assert page.evaluate("() => document.querySelector('#ss-spectrum-plot .js-plotly-plot').data.length") == 3
            with page.expect_download() as dl:
                page.locator("#ss-report a[download]").first.click()
            report = json.loads(Path(dl.value.path()).read_text())
            assert report["model"]["family"] == "sdxl" and set(report["runs"]) == {"original", "sail"}
            assert report["sail"]["trace"] and set(report["spectra"]["original"]["1"]) == {"cond", "uncond", "delta"}
            browser.close()
    finally:
        demo.close()
