"""History and PNG Info (no server) on the tiny pipeline: a finished Generate run lands in the session's history with
its settings and verdict (no raw JSON); its PNG read back fills the Generate form with the settings it was made
with; core.io.pnginfo parses A1111 infotext."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")

from sailscope.core.io.pnginfo import parse_infotext  # noqa: E402
from sailscope.ui import app as ui_app  # noqa: E402
from sailscope.ui.forms import GENERATE_FIELDS, GenerateForm  # noqa: E402
from sailscope.ui.jobs import AppConfig  # noqa: E402
from sailscope.ui.views import history, pnginfo  # noqa: E402
from sailscope.ui.views.generate import generate_handler  # noqa: E402


def run_generate(ctx, **over):
    form = GenerateForm(**({"prompt": "a red square, poster", "negative": "blurry", "seed": 7, "steps": 3,
                            "guidance": 5.5, "scheduler": "euler", "sharpness_at": "step 1 (detection)"} | over))
    out = list(generate_handler(ctx, form, SimpleNamespace(session_hash="h")))
    report = [o["report_file"] for o in out if o.get("report_file")][-1]
    return form, report


def test_history_lists_finished_runs_with_settings_and_verdict(ctx):
    _, report = run_generate(ctx)
    added = history.add_handler([], report)
    entries = added["entries"]
    assert len(entries) == 1 and entries[0]["seed"] == 7 and entries[0]["images"][0]["run"] == "original"
    assert len(added["gallery"]) == 1 and "seed 7 · original" in added["gallery"][0][1]
    assert history.add_handler(entries, report) == {}  # the same run is not listed twice
    assert history.add_handler(entries, None) == {}
    _, report2 = run_generate(ctx, seed=8)
    entries = history.add_handler(entries, report2)["entries"]
    assert [e["seed"] for e in entries] == [8, 7]  # newest first
    sel = history.select_handler(entries, 1)
    rows = dict(sel["details"])
    assert rows["Prompt"] == "a red square, poster" and rows["Seed"] == "7" and rows["Negative prompt"] == "blurry"
    assert rows["Verdict"] in history.RISK_WORDS.values() and "{" not in "".join(map(str, rows.values()))
    sent = history.send_handler(sel["selected"])
    assert sent["seed"] == 7 and sent["prompt"] == "a red square, poster" and sent["scheduler"] == "euler"
    assert history.send_handler(None)["status"].count("select")


def test_png_info_restores_the_generate_form(ctx):
    form, report = run_generate(ctx, seed=11, guidance=6.0)
    entry = history.entry_from_report(report)
    png = entry["images"][0]["file"]
    read = pnginfo.pnginfo_handler(png)
    assert "read" in read["status"] and read["table"][0] == ["Prompt", "a red square, poster"]
    sent = pnginfo.send_handler(read["state"])
    for name in ("prompt", "negative", "seed", "steps", "guidance", "scheduler"):
        want = {"negative": form.negative}.get(name, getattr(form, name))
        assert sent[name] == want, name
    assert sent["width"] == sent["height"] == ctx.models.pipe.unet.config.sample_size * ctx.models.pipe.vae_scale_factor
    assert sent["sail_on"] is False
    assert set(sent) - {"tabs", "status"} <= set(GENERATE_FIELDS)
    # the form built from the pasted values gives the same generation settings
    pasted = GenerateForm(**{k: v for k, v in sent.items() if k in GENERATE_FIELDS})
    a, b = pasted.settings(), form.settings()
    assert (a.prompt, a.negative_prompt, a.seed, a.steps, a.guidance, a.scheduler) == \
           (b.prompt, b.negative_prompt, b.seed, b.steps, b.guidance, b.scheduler)
    assert "no generation settings" in pnginfo.pnginfo_handler(_plain_png(ctx))["status"]
    assert pnginfo.send_handler({})["status"].count("read a PNG first")


def _plain_png(ctx):
    from pathlib import Path

    from PIL import Image

    p = Path(ctx.config.outputs) / "plain.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(p)
    return str(p)


def test_parse_a1111_infotext():
    text = ("a cat,\nsecond line\nNegative prompt: ugly, bad\nmore negative\n"
            "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, Model: x, "
            "SAIL: on, SAIL lr: 0.2, SAIL max steps: 8, SAIL trigger: none, SAIL objective: paper")
    info = parse_infotext(text)
    assert info.generation == {"prompt": "a cat,\nsecond line", "negative_prompt": "ugly, bad\nmore negative",
                               "steps": 30, "seed": 1234, "guidance": 6.5, "width": 512, "height": 768,
                               "scheduler": "dpm_karras"}
    form = pnginfo.form_values(info)
    assert form["sail_on"] is True and form["sail_lr"] == 0.2 and form["sail_max_steps"] == 8
    assert form["sail_trigger"] == "none" and form["sail_objective"] == "paper"
    odd = parse_infotext("just a prompt\nSteps: 20, Sampler: Heun, Seed: 3")
    assert odd.unknown_sampler == "Heun" and "scheduler" not in odd.generation and odd.generation["seed"] == 3
    assert parse_infotext("").empty and parse_infotext("only a prompt").generation["prompt"] == "only a prompt"


def test_app_has_history_and_png_info_tabs(pipe, tmp_path):
    demo = ui_app.build_ui(AppConfig(outputs=str(tmp_path / "out")), pipe=pipe)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"ss-tab-history", "ss-tab-pnginfo", "ss-history-gallery", "ss-pnginfo-send", "ss-picks-run"} <= ids


def test_reuse_seed_and_ctrl_enter(ctx, pipe, tmp_path):
    from sailscope.ui.views.shortcuts import CTRL_ENTER_JS, last_seed

    form, report = run_generate(ctx, seed=-1)  # a random seed: ♻ brings back the one the run used
    used = history.entry_from_report(report)["seed"]
    assert isinstance(used, int) and used >= 0 and last_seed(report, -1) == used
    assert last_seed(None, 5) == 5
    demo = ui_app.build_ui(AppConfig(outputs=str(tmp_path / "out2")), pipe=pipe)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert "ss-reuse-seed" in ids and "#ss-generate" in CTRL_ENTER_JS
    assert any(getattr(fn, "js", None) == CTRL_ENTER_JS for fn in demo.fns.values()) if isinstance(demo.fns, dict) \
        else any(getattr(fn, "js", None) == CTRL_ENTER_JS for fn in demo.fns)


def test_a_batch_lands_whole_even_when_its_report_changes_race(ctx, tmp_path):
    import shutil

    out = list(generate_handler(ctx, GenerateForm(prompt="a red square", steps=2, seed=3, batch_count=3),
                                SimpleNamespace(session_hash="h")))
    reports = out[-1]["state"]["reports"]
    assert len(reports) == 3
    # gradio hands report_file over as a cached copy under another path: the same run is recognised by its content
    cached = tmp_path / "gradio-cache" / "x-report.json"
    cached.parent.mkdir()
    shutil.copy(reports[0], cached)
    first = history.add_handler([], str(cached))["entries"]
    # a later change event whose entries predate the others' answers still adds every run of the click, once
    entries = history.add_handler(first, reports[-1], reports)["entries"]
    assert [e["seed"] for e in entries] == [5, 4, 3]
    assert history.add_handler(entries, reports[1], reports) == {}


def test_reuse_seed_after_a_batch_is_the_batch_s_first_seed(ctx):
    from sailscope.ui.views.shortcuts import last_seed

    out = list(generate_handler(ctx, GenerateForm(prompt="a red square", steps=2, seed=3, batch_count=3),
                                SimpleNamespace(session_hash="h")))
    final = out[-1]
    assert last_seed(final["report_file"], -1) == 5  # the last image's report alone
    assert last_seed(final["report_file"], -1, final["state"]) == 3  # ♻ gives the click's first seed, as A1111
