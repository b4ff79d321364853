"""The app as a new user meets it (issue 20), at the handler level on the tiny pipeline: spectra are opt-in,
watched and cancellable; a closed tab cancels its job; a waiting user is told why; the verdict in plain words;
settings the calibration was not measured at are said so; no silent clamping; SAIL-not-needed shortcut; files
carry no local paths and reproduce the SAIL image."""
from __future__ import annotations

import html
import json
import os
import re
import stat
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from sailscope.ui.forms import GENERATE_FIELDS, GenerateForm  # noqa: E402
from sailscope.ui.jobs import AppConfig  # noqa: E402
from sailscope.ui.outputs import read_infotext  # noqa: E402
from sailscope.ui.views.generate import generate_handler  # noqa: E402
from sailscope.ui.widgets import busy_html, cancel_handler  # noqa: E402
from ui_support import last, request  # noqa: E402


def form(**over) -> GenerateForm:
    args = dict(prompt="a red square", steps=3, sail_max_steps=2, sail_candidates=1, spectrum_k=3)
    args.update(over)
    assert set(args) <= set(GENERATE_FIELDS)
    return GenerateForm(**args)


def text(update, key: str = "status") -> str:
    return html.unescape(update.get(key) or "")


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


# ----------------------------------------------------------------------------------------------
# 3. The verdict in plain words; settings off the calibration; no silent clamping
# ----------------------------------------------------------------------------------------------
def test_verdict_words_ratio_and_exact_numbers_in_the_expander():
    from sailscope.ui.widgets import risk_html

    cal = {"scheduler": "ddim", "steps": 50, "guidance": 7.5, "width": 64, "height": 64}
    high = html.unescape(risk_html(0.1235, 0.06398, "q0.99 of 192 non-memorized values (shipped with the model)",
                                   0.006308, calibrated=cal))
    assert "Likely reproduces a training image: 1.9× the alarm level" in high
    assert "After SAIL: 0.099× the alarm level" in high and "How is this computed?" in high
    assert "0.1235" in high and "0.06398" in high and "50 DDIM steps, guidance 7.5, 64×64" in high
    assert 'data-risk="high"' in high
    low = html.unescape(risk_html(0.0192, 0.06398, "src", calibrated=cal))
    assert "No sign of memorization: 0.3× the alarm level" in low and 'data-risk="low"' in low
    off = html.unescape(risk_html(0.0695, 0.06398, "src", calibrated=cal, mismatch=["150 steps (calibrated: 50)"]))
    assert "Not calibrated for these settings" in off and "150 steps (calibrated: 50)" in off
    assert "Likely reproduces" not in off and 'data-risk="uncalibrated"' in off
    unknown = html.unescape(risk_html(0.1, None, "model not calibrated: run `sailscope calibrate`"))
    assert "Memorization check unavailable" in unknown and "sailscope calibrate" in unknown


def _calibrate(pipe, value: float = 0.01):
    """A detection calibration record for the tiny model at 3 DDIM steps (values, not a measurement)."""
    from sailscope.core import calibration

    rec = calibration.Calibration(key=calibration.model_key(pipe), name="tiny", created="2026-01-01T00:00:00",
                                  prompts=["p"], seeds=[0], scheduler="ddim", steps=3, t=999.0, sigma=1.0,
                                  values={"detection": {"sharpness": [value] * 10}}, width=None, height=None)
    return calibration.save_calibration(rec)


def test_settings_mismatch_is_a_core_answer_and_old_records_read():
    from sailscope.core.calibration import Calibration, settings_mismatch
    from sailscope.core.sampling import GenerationSettings

    old = {"key": "k", "name": "n", "created": "c", "prompts": [], "seeds": [], "scheduler": "ddim", "steps": 50,
           "t": 981.0, "sigma": 1.0, "values": {}}  # a record written before guidance/size were stored
    rec = Calibration.from_dict(old)
    assert rec.guidance == 7.5 and rec.width is None
    cal = dict(rec.settings(), width=64, height=64)
    same = GenerationSettings(prompt="p", steps=50, width=64, height=64)
    assert settings_mismatch(cal, same) == []
    diff = settings_mismatch(cal, GenerationSettings(prompt="p", steps=150, guidance=3, scheduler="euler", width=128,
                                                     height=64))
    assert diff == ["scheduler euler (calibrated: ddim)", "150 steps (calibrated: 50)", "guidance 3 (calibrated: 7.5)",
                    "size 128×64 (calibrated: 64×64)"]


def test_not_calibrated_note_and_no_local_paths_on_screen_or_in_files(ctx, pipe, tmp_path):
    path = _calibrate(pipe)
    final = last(generate_handler(ctx, form(steps=4), request=request("c")))
    badge = text(final, "risk")
    assert "Not calibrated for these settings" in badge and "4 steps (calibrated: 3)" in badge
    matched = last(generate_handler(ctx, form(steps=3), request=request("c")))
    badge = text(matched, "risk")
    assert "Not calibrated" not in badge and "the alarm level" in badge
    home = str(Path(path).parent)
    for update in (final, matched):
        for key in ("risk", "status"):
            assert home not in text(update, key) and str(tmp_path) not in text(update, key)
        info = read_infotext(update["image_original"])
        assert "/" not in info.split("\n")[-1].replace("Size: ", ""), info  # no path in any infotext value
        assert "Detection threshold" in info
    report = json.loads(Path(final["report_file"]).read_text())
    assert report["detection"]["settings_mismatch"] == ["4 steps (calibrated: 3)"]


@pytest.mark.parametrize("over, expected", [
    (dict(steps=0), "steps must be an integer in [1, 1000], got 0"),
    (dict(steps=10000), "steps must be an integer in [1, 1000], got 10000"),
    (dict(guidance=-5), "guidance must be a finite number >= 0, got -5"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(sail_on=True, sail_max_steps=5000), "max_steps must be an integer in [0, 1000]"),
    (dict(spectra_on=True, spectrum_k=0), "spectrum k must be an integer in [1, 256]"),
])
def test_out_of_range_values_get_a_message_not_a_clamp(ctx, over, expected):
    updates = list(generate_handler(ctx, form(**over), request=request("v")))
    assert len(updates) == 1 and "ss-error" in updates[0]["status"] and expected in text(updates[0])


def test_generate_view_has_no_clamping_sliders_for_typed_settings():
    from sailscope.ui import app as ui_app

    demo = ui_app.build_ui(AppConfig(model=None))
    c = demo.sailscope_components
    for name in ("steps", "guidance", "sail_max_steps", "sail_candidates", "sail_rounds", "spectrum_k"):
        assert type(c[name]).__name__ == "Number", name
        assert getattr(c[name], "minimum", None) is None and getattr(c[name], "maximum", None) is None


# ----------------------------------------------------------------------------------------------
# 4/5/8. SAIL not needed: one sampling, one image on screen; the original early; files
# ----------------------------------------------------------------------------------------------
def test_sail_not_needed_samples_once_and_shows_one_image(ctx, monkeypatch):
    from sailscope.core.mitigation import pair

    runs = []
    real = pair.generate

    def counting(*args, **kwargs):
        runs.append(kwargs.get("run"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pair, "generate", counting)
    updates = list(generate_handler(ctx, form(sail_on=True, sail_threshold="1e12", steps=3), request=request("n")))
    final = updates[-1]
    assert runs == ["original"]  # SAIL kept the seed's noise: its run is not sampled again
    assert "SAIL not needed: this seed's start is already flat" in text(final)
    assert "SAIL not needed" in text(final, "risk")
    assert final["sail_box"]["visible"] is False  # one image on screen
    report = json.loads(Path(final["report_file"]).read_text())
    assert report["sail_not_needed"] is True and report["sail"]["steps"] == [0]
    info = read_infotext(final["image_sail"])  # the file that re-derives it: SAIL on with its settings
    assert "SAIL: on" in info and "SAIL Scope reproduce" in info and "--sail-threshold 1000000000000.0" in info
    assert "SAIL not needed" in info


def test_pair_shows_the_original_before_sails_run_and_records_what_reproduces_the_sail_image(ctx):
    updates = list(generate_handler(ctx, form(sail_on=True, sail_threshold="1e-30", sail_max_steps=2, steps=3),
                                    request=request("p")))
    first_image = next(i for i, u in enumerate(updates) if u.get("image_original"))
    sail_records = [i for i, u in enumerate(updates) if "SAIL run: step" in text(u)]
    assert sail_records and first_image < sail_records[0]  # the original is on screen while SAIL's run samples
    assert "original saved" in text(updates[first_image]) and not updates[first_image].get("image_sail")
    final = updates[-1]
    assert final["sail_box"]["visible"] is True and Path(final["image_sail"]).is_file()
    from sailscope.core.io.infotext import parse_png_text

    params = parse_png_text(read_infotext(final["image_sail"]))
    command = params["SAIL Scope reproduce"]
    assert command.startswith("sailscope generate --seed 0 --steps 3 ") and "--sail-threshold 1e-30" in command
    assert "--sail-rounds" in command and "--sail-alpha" in command
    assert params["Seed"] == "0" and params["SAIL"] == "on"


def test_outputs_are_0644_like_other_tools(ctx):
    final = last(generate_handler(ctx, form(), request=request("m")))
    umask = os.umask(0)
    os.umask(umask)
    for key in ("image_original", "report_file"):
        assert stat.S_IMODE(os.stat(final[key]).st_mode) == 0o666 & ~umask, key


# ----------------------------------------------------------------------------------------------
# 10. Batch count: seeds seed, seed+1, …; each image its own verdict, files and report
# ----------------------------------------------------------------------------------------------
def pixels(path) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


def test_batch_count_makes_one_checked_image_per_seed_equal_to_single_runs(ctx):
    updates = list(generate_handler(ctx, form(seed=5, batch_count=3), request=request("b")))
    final = updates[-1]
    assert "ss-ok" in final["status"] and "batch done: 3 images (seeds 5–7)" in text(final)
    assert any("image 2 of 3 (seed 6)" in text(u) for u in updates)
    gallery = final["batch_gallery"]["value"]
    assert final["batch_gallery"]["visible"] is True and len(gallery) == 3
    bars = [int(m) for u in updates for m in re.findall(r'aria-valuenow="(\d+)"', text(u))]
    assert bars == sorted(bars) and max(bars) == 3 * 3  # one bar over the whole batch: 3 images × 3 steps
    for i, (path, caption) in enumerate(gallery):
        report = json.loads(Path(path).with_name(Path(path).name.replace("-original.png", "-report.json")).read_text())
        assert report["settings"]["seed"] == 5 + i and caption.startswith(f"seed {5 + i} · original · ")
        # the oracle: a single-image run at that seed gives the same pixels
        single = last(generate_handler(ctx, form(seed=5 + i), request=request("s")))
        assert pixels(path) == pixels(single["image_original"])
        assert read_infotext(path).split("\n")[-1].count(f"Seed: {5 + i},") == 1


def test_batch_with_sail_captions_both_images_and_cancel_keeps_the_finished_ones(ctx):
    final = last(generate_handler(ctx, form(sail_on=True, sail_threshold="1e-30", batch_count=2), request=request("p")))
    captions = [c for _, c in final["batch_gallery"]["value"]]
    assert [c.split(" · ")[:2] for c in captions] == [["seed 0", "original"], ["seed 0", "SAIL"],
                                                       ["seed 1", "original"], ["seed 1", "SAIL"]]
    # cancel while image 2 of 3 samples: image 1 stays saved and is named in the message
    gen = generate_handler(ctx, form(steps=4, batch_count=3), request=request("c"))
    seen = []
    for u in gen:
        seen.append(u)
        if "image 2 of 3" in text(u) and "step 1 of 4" in text(u):
            cancel_handler(ctx, request("c"))
    msg = text(seen[-1])
    assert "cancelled" in msg and "the batch's 1 earlier image(s) are saved" in msg and "image 2 of 3" in msg
    assert ctx.cancels._events == {}


@pytest.mark.parametrize("over, expected", [
    (dict(batch_count=0), "batch count must be an integer in [1, 16], got 0"),
    (dict(batch_count=17), "batch count must be an integer in [1, 16], got 17"),
    (dict(batch_count=1.5), "batch count must be a whole number"),
    (dict(batch_count=2, seed=2**63 - 1), "the batch's last seed: seed must be an integer in [0, 2^63), got 9223372036854775808"),
])
def test_batch_count_out_of_range_is_a_message_before_any_work(ctx, over, expected):
    updates = list(generate_handler(ctx, form(**over), request=request("v")))
    assert len(updates) == 1 and "ss-error" in updates[0]["status"] and expected in text(updates[0])


def test_seeds_from_the_form_are_exact_above_2_to_53():
    assert form(seed=2**53 + 1).settings().seed == 2**53 + 1  # a float would give 2^53
    assert form(seed=str(2**60 + 3)).settings().seed == 2**60 + 3
    assert form(seed=7, batch_count="3").batch_seeds(7) == [7, 8, 9]


def test_gallery_captions_say_the_verdict_in_the_badges_terms():
    from sailscope.core.detect import NoiseCheck, verdict
    from sailscope.ui.widgets import verdict_caption

    def caption(s1, thr, mismatch=(), noise=None):
        return verdict_caption(verdict(s1, thr, mismatch=mismatch, noise=noise), s1, thr)

    assert caption(0.2, 0.1) == "likely a copy (2× the alarm level)"
    assert caption(0.1, 0.1) == "likely a copy (1× the alarm level)"  # at the level counts, as risk_level
    assert caption(0.05, 0.1) == "no sign of memorization (0.5× the alarm level)"
    assert caption(0.05, 0.1, ["150 steps (calibrated at 50)"]) == "not calibrated for these settings"
    assert caption(0.05, None) == caption(None, 0.1) == "no verdict"
    sharp = NoiseCheck(("a", "b", "c"), (0.05, 0.2, 0.3), 0.1)  # median 0.2 >= 0.1: ordinary prompts alarm here
    flat = NoiseCheck(("a", "b", "c"), (0.05, 0.02, 0.3), 0.1)  # median 0.05
    assert caption(0.2, 0.1, noise=sharp).startswith("no verdict at this seed")
    assert caption(0.2, 0.1, noise=flat) == "likely a copy (2× the alarm level)"
    assert caption(0.05, 0.1, noise=sharp) == "no sign of memorization (0.5× the alarm level)"  # low stays low
