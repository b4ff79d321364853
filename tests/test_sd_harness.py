"""The real-SD mitigation harness (tests/bench/sd_mitigation.py) on the tiny pipeline: it runs end to end, and
missing weights give a one-line message and exit code 2 instead of a traceback (issue 5)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HARNESS = Path(__file__).parent / "bench" / "sd_mitigation.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("sd_mitigation", HARNESS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("defaults", ["authors", "app"])
def test_smoke_run_writes_pairs_and_records_the_sail_settings(harness, tmp_path, defaults, capsys):
    assert harness.main(["--smoke", "--sail-defaults", defaults, "--out", str(tmp_path)]) == 0
    rows = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(rows) == 2 * 4 and all(r["sail"]["steps"] == [1] for r in rows)
    lr, sphere = (0.05, False) if defaults == "authors" else (0.3, True)
    assert (summary["sail"]["lr"], summary["sail"]["sphere"]) == (lr, sphere)
    assert summary["sail"]["trigger"] == (None if defaults == "authors" else "auto")
    assert "sscd metric skipped: --sscd not given" in capsys.readouterr().err  # said once, not a crash


def test_missing_model_and_required_metrics_fail_with_a_message(harness, tmp_path, capsys):
    assert harness.main(["--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sd_mitigation: Stable Diffusion weights not available") and "Traceback" not in err
    assert harness.main(["--smoke", "--require-metrics", "--out", str(tmp_path / "p")]) == 2
    assert "sd_mitigation: --sscd not given" in capsys.readouterr().err
