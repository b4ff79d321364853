"""The noise check (core.detect.noise_check/verdict and the Generate view): when a run's step-1 sharpness is at or
over the alarm level, the calibration's ordinary prompts are scored at the same starting noise; where their median
reaches the alarm level too, the app gives no verdict for that seed instead of "likely a copy"."""
from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from sailscope.core.detect import noise_check, verdict  # noqa: E402
from sailscope.core.io import infotext  # noqa: E402
from sailscope.core.io.infotext import parse_png_text  # noqa: E402
from sailscope.core.sampling import GenerationSettings, run_generation  # noqa: E402
from sailscope.ui.forms import GenerateForm  # noqa: E402
from sailscope.ui.outputs import read_infotext  # noqa: E402
from sailscope.ui.views.generate import generate_handler  # noqa: E402
from ui_support import last, request  # noqa: E402

PROMPTS = ["a red square", "a blue circle on the left", "two green triangles", "a large white circle above a cube"]


def step1_sharpness(pipe, settings: GenerationSettings) -> float:
    """The oracle: the step-1 sharpness a whole generation records for these settings."""
    return float(run_generation(pipe, settings).records[0].sharpness[0])


def calibrate(pipe, threshold: float, prompts: list[str]):
    from sailscope.core import calibration

    rec = calibration.Calibration(key=calibration.model_key(pipe), name="tiny", created="2026-01-01T00:00:00",
                                  prompts=prompts, seeds=[0], scheduler="ddim", steps=3, t=999.0, sigma=1.0,
                                  values={"detection": {"sharpness": [threshold] * 10}}, width=None, height=None)
    return calibration.save_calibration(rec)


def test_noise_check_scores_each_prompt_as_its_own_run_would_at_the_same_noise(pipe):
    settings = GenerationSettings(prompt="anything", seed=7, steps=3, guidance=5.0, negative_prompt="blurry")
    check = noise_check(pipe, settings, PROMPTS[:3], threshold=1.0)
    for prompt, value in zip(PROMPTS[:3], check.sharpness):
        oracle = step1_sharpness(pipe, GenerationSettings(prompt=prompt, seed=7, steps=3, guidance=5.0,
                                                          negative_prompt="blurry"))
        assert value == pytest.approx(oracle, rel=1e-5)
    assert check.median == pytest.approx(sorted(check.sharpness)[1])
    other_seed = noise_check(pipe, GenerationSettings(prompt="x", seed=8, steps=3, guidance=5.0,
                                                      negative_prompt="blurry"), PROMPTS[:3], threshold=1.0)
    assert other_seed.sharpness != check.sharpness  # the check is of this seed's noise


def test_the_app_gives_no_verdict_at_a_noise_sharp_for_ordinary_prompts(ctx, pipe):
    values = {p: step1_sharpness(pipe, GenerationSettings(prompt=p, seed=0, steps=3)) for p in PROMPTS}
    prompt = max(values, key=values.get)
    refs = [p for p in PROMPTS if p != prompt]
    ref_median = sorted(values[p] for p in refs)[1]
    assert values[prompt] > ref_median

    # 1. alarm level between the references' median and the prompt's value: a verdict, checked
    calibrate(pipe, (values[prompt] + ref_median) / 2, refs)
    final = last(generate_handler(ctx, GenerateForm(prompt=prompt, steps=3), request=request("n")))
    badge = html.unescape(final["risk"])
    assert "Likely reproduces a training image" in badge and "ordinary prompts at this seed" in badge
    report = json.loads(Path(final["report_file"]).read_text())
    assert report["detection"]["runs"]["original"]["risk"] == "high"
    checked = report["detection"]["noise_check"]
    assert checked["prompts"] == refs[:4] and checked["sharp_noise"] is False
    assert checked["sharpness"] == pytest.approx([values[p] for p in refs], rel=1e-5)

    # 2. alarm level under the references' median: this noise alarms for ordinary prompts, so no verdict
    calibrate(pipe, ref_median * 0.5, refs)
    final = last(generate_handler(ctx, GenerateForm(prompt=prompt, steps=3), request=request("n")))
    badge = html.unescape(final["risk"])
    assert "No verdict at this seed" in badge and "Try another seed" in badge
    assert 'data-risk="sharp-noise"' in final["risk"]
    report = json.loads(Path(final["report_file"]).read_text())
    assert report["detection"]["runs"]["original"]["risk"] == "sharp-noise"
    assert report["detection"]["noise_check"]["sharp_noise"] is True
    params = parse_png_text(read_infotext(final["image_original"]))
    assert params[infotext.KEYS["risk"].text] == "sharp-noise"  # the saved file says so too

    # 3. a low verdict needs no check
    calibrate(pipe, values[prompt] * 10, refs)
    final = last(generate_handler(ctx, GenerateForm(prompt=prompt, steps=3), request=request("n")))
    report = json.loads(Path(final["report_file"]).read_text())
    assert report["detection"]["runs"]["original"]["risk"] == "low" and report["detection"]["noise_check"] is None


def test_verdict_rule():
    from sailscope.core.detect import NoiseCheck

    sharp = NoiseCheck(("a",), (0.5,), 0.1)
    assert verdict(0.2, 0.1) == "high" and verdict(0.2, 0.1, noise=sharp) == "sharp-noise"
    assert verdict(0.05, 0.1, noise=sharp) == "low"  # a low value is low whatever the noise
    assert verdict(0.2, 0.1, mismatch=["4 steps"], noise=sharp) == "uncalibrated"
    assert verdict(None, 0.1) == verdict(0.2, None) == "unknown"


def test_the_check_is_kept_per_noise_and_settings_not_per_prompt(pipe, monkeypatch):
    from sailscope.ui import jobs

    calls = []
    real = jobs.noise_check
    monkeypatch.setattr(jobs, "noise_check", lambda *a, **k: calls.append(a[1].seed) or real(*a, **k))
    # a result whose step-1 sharpness is over the tiny threshold below
    result = run_generation(pipe, GenerationSettings(prompt="a red square", seed=0, steps=2))
    for prompt, seed in (("a red square", 0), ("two green triangles", 0), ("a red square", 1), ("x", 0)):
        check = jobs.noise_checker(pipe, GenerationSettings(prompt=prompt, seed=seed, steps=2), PROMPTS[:2], 1e-12)
        found = check(result)
        assert found is not None and found.prompts == tuple(PROMPTS[:2])
    assert calls == [0, 1]  # seed 0 once for three prompts, seed 1 once
    assert jobs.noise_checker(pipe, GenerationSettings(prompt="y", seed=0, steps=2), PROMPTS[:2], 1e9)(result) is None
