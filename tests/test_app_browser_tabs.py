"""History, PNG Info, Check for copies, ♻ and Ctrl+Enter in a real browser (headless Chromium + Playwright).

Reuses ``tests/test_app_browser.py``'s server (demo model when installed, else the tiny pipeline), browser and
helpers. A short run (Ctrl+Enter) lands in History with its verdict; its PNG dropped into PNG Info and sent to
Generate restores the prompt and seed and switches tabs; ♻ brings back the seed a random-seed run used; Check for
copies names the training image a memorized caption reproduces (demo model).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

from test_app_browser import (  # noqa: E402,F401  (fixtures and helpers shared with the main browser test)
    browser, drained, finished, open_page, server, set_number, shoot, status_text, wait_status,
)


def _wait_finished(page, elem_id: str, timeout: float) -> str:
    end = time.time() + timeout
    while time.time() < end:
        if finished(page, elem_id):
            return status_text(page, elem_id)
        time.sleep(0.2)
    raise AssertionError(f"{elem_id} never finished: {status_text(page, elem_id)!r}")


def _seed_value(page) -> str:
    return page.locator("#ss-seed input[type=number]").first.input_value()


def test_ctrl_enter_history_png_info_and_reuse_seed(server, browser):
    page = open_page(browser, server)
    page.locator("#ss-prompt textarea").fill("a small red circle on the left")
    set_number(page, "ss-steps", 8)
    set_number(page, "ss-seed", -1)
    page.locator("#ss-prompt textarea").press("Control+Enter")  # A1111's shortcut
    text = _wait_finished(page, "ss-status", 300)
    assert "done" in text, text
    # History: the run is there with its verdict in words
    page.get_by_role("tab", name="History", exact=True).click()
    page.wait_for_selector("#ss-history-gallery img", timeout=30_000)
    assert "in this session" in status_text(page, "ss-history-status")
    page.locator("#ss-history-gallery img").first.click()
    page.wait_for_function("() => document.querySelector('#ss-history-details')"
                           ".innerText.includes('a small red circle on the left')", timeout=30_000)
    details = page.locator("#ss-history-details").inner_text()
    assert "Verdict" in details and "{" not in details
    shoot(page, "app-history")
    # ♻: the seed the random run used
    page.get_by_role("tab", name="Generate", exact=True).click()
    assert _seed_value(page) == "-1"
    page.locator("#ss-reuse-seed").click()
    page.wait_for_function("() => document.querySelector('#ss-seed input').value !== '-1'", timeout=10_000)
    used = int(_seed_value(page))
    outputs = Path(server["ctx"].config.outputs)
    reports = sorted(outputs.rglob("*-report.json"), key=lambda p: p.stat().st_mtime)
    assert json.loads(reports[-1].read_text())["settings"]["seed"] == used
    # PNG Info: drop the PNG, send it to Generate (after changing the form), prompt and seed come back
    png = json.loads(reports[-1].read_text())["files"]["original"]
    page.locator("#ss-prompt textarea").fill("something else")
    set_number(page, "ss-seed", 3)
    page.get_by_role("tab", name="PNG Info", exact=True).click()
    page.locator("#ss-pnginfo-file input[type=file]").set_input_files(png)
    wait_status(page, ("read",), 30, "ss-pnginfo-status")
    page.locator("#ss-pnginfo-send").click()
    page.wait_for_function("() => document.querySelector('#ss-prompt textarea').value"
                           " === 'a small red circle on the left'", timeout=30_000)
    assert page.locator("#ss-generate").is_visible()  # switched to the Generate tab
    assert int(_seed_value(page)) == used
    page.close()


def test_check_for_copies_tab(server, browser):
    if not server["demo"]:
        pytest.skip("needs the demo model's memorized set")
    page = open_page(browser, server)
    page.get_by_role("tab", name="Check for copies", exact=True).click()
    page.locator("#ss-copies-prompt textarea").fill(server["prompt"])
    set_number(page, "ss-copies-seed", 0)
    page.locator("#ss-copies-run").click()
    text = _wait_finished(page, "ss-copies-status", 300)
    assert "checked 4 seeds" in text, text
    summary = page.locator("#ss-copies-summary").inner_text()
    assert "reproduce a known image" in summary and "memorized/00_exact.png" in summary
    table = page.locator("#ss-copies-nearest-table").inner_text()
    assert "memorized/00_exact.png" in table
    shoot(page, "app-copies")
    page.close()
