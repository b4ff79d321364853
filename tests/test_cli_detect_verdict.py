"""``sailscope detect`` names the threshold and gives a verdict when the model has a calibrated one (issue 22)."""
from __future__ import annotations

import json

import pytest

from sailscope.cli import main

MEMORIZED = "a blue square above a green triangle, album cover 9925"  # assets/models/demo/memorized.jsonl, exact copy


@pytest.fixture(autouse=True)
def chatty_libraries():
    """Progress bars switched on, as an earlier import in the process may leave them: the CLI must silence them."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as transformers_logging

    diffusers_logging.enable_progress_bar()
    transformers_logging.enable_progress_bar()
    enable_progress_bars()
    yield


def test_detect_prints_threshold_and_verdict_for_a_calibrated_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "home"))  # only the calibration shipped with the demo model
    from sailscope.core.calibration import detection_threshold
    from sailscope.core.detect import risk_level
    from sailscope.core.models import load_pipeline

    out = tmp_path / "scores.jsonl"
    code = main(["detect", "--model", "demo", "--prompt", MEMORIZED, "--seeds", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    row = json.loads(out.read_text().splitlines()[0])
    threshold, source = detection_threshold(load_pipeline("demo", device="cpu"))
    assert code == 0 and row["threshold"] == threshold and row["risk"] == risk_level(row["score"], threshold)
    assert err[0] == f"sailscope: detection threshold {threshold:.5g} ({source}); risk is high when a prompt's score is >= it"
    assert "sail_calibration.json" in source
    op = ">=" if row["risk"] == "high" else "<"
    assert err[1] == f"sailscope: {row['risk']} risk: score {row['score']:.5g} {op} threshold {threshold:.5g}: {MEMORIZED!r}"
    assert err[2].startswith(f"sailscope: {int(row['risk'] == 'high')} of 1 prompt(s) at high memorization risk")


def test_detect_without_calibration_says_scores_only(capsys, tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "home"))
    code = main(["detect", "--model", str(tiny_model_dir), "--prompt", "a cat", "--seeds", "1"])
    cap = capsys.readouterr()
    row = json.loads(cap.out)
    assert code == 0 and "risk" not in row and "threshold" not in row
    assert cap.err.strip().splitlines() == [
        "sailscope: no verdict: this model has no calibrated detection threshold (run `sailscope calibrate`); scores only"]
