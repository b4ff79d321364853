"""The copies view's handlers (no server) on the tiny pipeline: a reference folder holding seed 0's image makes seed 0
a copy at distance 0 and the other seeds not; the Generate panel reads a finished run's report; uploads compare."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from sailscope.core.sampling import GenerationSettings, run_generation  # noqa: E402
from sailscope.ui import app as ui_app  # noqa: E402
from sailscope.ui.jobs import AppConfig  # noqa: E402
from sailscope.ui.views.copies import (  # noqa: E402
    ReferenceProvider, display_image, image_check_handler, report_check_handler, seeds_check_handler,
)


@pytest.fixture()
def refs_with_seed0(pipe, tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    img = run_generation(pipe, GenerationSettings(prompt="a red square", seed=5, steps=2, sharpness_at="none")).images[0]
    img.save(folder / "known.png")
    return ReferenceProvider(str(folder), 0.02), img


def test_seeds_check_finds_the_known_seed_and_says_so(ctx, refs_with_seed0):
    refs, _ = refs_with_seed0
    out = list(seeds_check_handler(ctx, refs, "a red square", 4, 3, 2, 7.5, SimpleNamespace(session_hash="s")))
    final = out[-1]
    assert "checked 3 seeds" in final["status"]
    rows = final["nearest_table"]
    assert [r[0] for r in rows] == ["seed 4", "seed 5", "seed 6"]
    assert rows[1][1] == "known.png" and rows[1][2] == "0.000" and rows[1][3] == "yes"
    assert rows[0][3] == "no" and rows[2][3] == "no"
    assert "1 of 3 image(s) reproduce a known image (known.png)" in final["summary"]
    assert len(final["gallery"]) == 3 and final["gallery"][0][0].width >= 192  # shown large, nearest-neighbour
    assert [r[0] for r in final["agreement"]] == ["seed 4", "seed 5", "seed 6"] and final["agreement"][0][1] == "—"
    assert "/" not in final["nearest_table"][1][1]  # a name inside the folder, never a local path


def test_seeds_check_bad_input_and_no_references(ctx):
    refs = ReferenceProvider()
    out = list(seeds_check_handler(ctx, refs, "p", 0, 1, 2, 7.5))
    assert "between 2 and" in out[-1]["status"]
    out = list(seeds_check_handler(ctx, refs, "p", 0, 2, 2, 7.5))
    assert "No known images" in out[-1]["summary"] and "different image" not in out[-1]["summary"]


def test_upload_and_report_check(ctx, refs_with_seed0, tmp_path):
    refs, img = refs_with_seed0
    up = image_check_handler(ctx, refs, np.asarray(img))
    assert up["nearest_table"][0][1:] == ["known.png", "0.000", "yes", ""]
    assert image_check_handler(ctx, refs, None)["status"].count("upload")
    orig = tmp_path / "o.png"
    img.save(orig)
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"files": {"original": str(orig), "report": str(report)}}))
    out = report_check_handler(ctx, refs, str(report))
    assert "a copy of `known.png`" in out["summary"] and out["nearest_table"][0][0] == "original"
    assert report_check_handler(ctx, refs, None) == {}


def test_display_image_upscales_small_images_only():
    small = np.zeros((8, 8, 3), np.float32)
    assert display_image(small).size == (192, 192)
    big = np.zeros((300, 200, 3), np.uint8)
    assert display_image(big).size == (200, 300)


def test_app_has_the_copies_tab_and_panel(pipe, tmp_path):
    demo = ui_app.build_ui(AppConfig(outputs=str(tmp_path / "out")), pipe=pipe, reference_dir=str(tmp_path))
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"ss-tab-copies", "ss-copies-panel", "ss-copies-run", "ss-copies-upload"} <= ids
