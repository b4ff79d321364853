"""The SAIL-candidates panel's handler (no server) on the tiny pipeline: k distinct candidates, each saved as a PNG
whose infotext alone reproduces its image."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from sailscope.core.io.infotext import parse_png_text  # noqa: E402
from sailscope.core.mitigation import SailSettings  # noqa: E402
from sailscope.core.mitigation.picks import pick_from_infotext, reproduce_candidate  # noqa: E402
from sailscope.core.sampling import GenerationSettings, run_generation  # noqa: E402
from sailscope.core.testing import tiny_pipeline  # noqa: E402
from sailscope.ui.jobs import AppConfig, AppContext  # noqa: E402
from sailscope.ui.outputs import read_infotext  # noqa: E402
from sailscope.ui.views.picks import pick_detail, picks_handler, settings_from_report  # noqa: E402


@pytest.fixture()
def ctx(tmp_path, monkeypatch):
    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "home"))
    c = AppContext(AppConfig(outputs=str(tmp_path / "out"), live_interval=0.0))
    c.models.pipe = tiny_pipeline()
    return c


def test_picks_are_saved_and_each_png_reproduces_its_image(ctx, tmp_path):
    gs = GenerationSettings(prompt="a red square", seed=2, steps=3, sharpness_at="all")
    sail = SailSettings(threshold=-1.0, trigger=None, max_steps=2, rounds=1)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"settings": gs.to_dict(), "sail_settings": sail.to_dict()}))
    out = list(picks_handler(ctx, str(report), 3, SimpleNamespace(session_hash="p")))
    final = out[-1]
    assert "3 SAIL candidate(s) for seed 2" in final["status"]
    picks = final["picks"]
    assert len(picks) == 3 and len(final["gallery"]) == 3 and len({p["index"] for p in picks}) == 3
    settings, _ = settings_from_report(str(report))
    pipe = ctx.models.pipe
    for p in picks:
        params = parse_png_text(read_infotext(p["file"]))
        restored, index = pick_from_infotext(params)
        assert index == p["index"] and restored.candidates == 3 and restored.stop == "all"
        x_T = reproduce_candidate(pipe, GenerationSettings(prompt="a red square", seed=int(params["Seed"]),
                                                           steps=int(params["Steps"]), sharpness_at="none"),
                                  restored, index)
        again = run_generation(pipe, settings, x_T=x_T).images[0]
        assert np.array_equal(np.asarray(again), np.asarray(Image.open(p["file"]).convert("RGB")))
    text, file = pick_detail(picks, 1)
    assert "pick" in text and file == picks[1]["file"]
    assert pick_detail(picks, None) == ("", None)


def test_picks_need_a_finished_run(ctx):
    out = list(picks_handler(ctx, None, 3))
    assert "generate an image first" in out[-1]["status"]
