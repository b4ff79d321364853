"""The ``sailscope`` CLI in-process: files written, JSON on stdout, resumable detection, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sailscope.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_png_with_infotext_and_report(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "gen"
    code, stdout, _ = run_cli(capsys, "generate", "--model", str(tiny_model_dir), "--prompt", "a red cat",
                              "--seed", "4", "--steps", "3", "--out", str(out), "--json")
    assert code == 0
    report = json.loads(stdout)
    assert [s["step"] for s in report["steps"]] == [1, 2, 3]
    assert report["steps"][0]["sharpness"][0] > 0 and report["steps"][1]["sharpness"] is None
    saved = json.loads((out / "report.json").read_text())
    assert saved["images"] == report["images"] and len(saved["images"]) == 1
    img = Image.open(saved["images"][0])
    assert img.size == (64, 64)
    info = img.info["parameters"]
    assert info.startswith("a red cat\n") and "Steps: 3" in info and "Seed: 4" in info and "Sampler: DDIM" in info
    assert "SAIL Scope step-1 sharpness" in info
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_detect_streams_and_resumes(capsys, tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\n\na green bird\n")
    out = tmp_path / "scores.jsonl"
    args = ["detect", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--seeds", "2", "--out", str(out)]
    code, _, _ = run_cli(capsys, *args, "--end", "2")
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red cat", "a blue dog"]
    assert all(len(r["per_seed"]) == 2 and r["score"] == pytest.approx(np.mean(r["per_seed"])) for r in rows)
    code, _, err = run_cli(capsys, *args)  # resume: only the missing prompt is scored
    assert code == 0 and "resuming: 2" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red cat", "a blue dog", "a green bird"]


def test_detect_wen_over_first_steps(capsys, tiny_model_dir):
    code, stdout, _ = run_cli(capsys, "detect", "--model", str(tiny_model_dir), "--prompt", "a cat", "--seeds", "1",
                              "--metric", "wen", "--first-steps", "3", "--json")
    row = json.loads(stdout)
    assert code == 0 and row["metric"] == "wen" and row["first_steps"] == 3 and row["score"] > 0


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--steps", "0"], "steps must be an integer in [1, 1000]"),
        (["--steps", "1001"], "steps must be"),
        (["--size", "60x64"], "width must be a positive multiple"),
        (["--size", "big"], "--size must look like"),
        (["--guidance", "-2"], "guidance must be"),
        (["--scheduler", "plms9"], "unknown scheduler"),
    ],
)
def test_bad_arguments_one_line_nonzero(capsys, tiny_model_dir, argv, match):
    code, _, err = run_cli(capsys, "generate", "--model", str(tiny_model_dir), "--prompt", "x", *argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sailscope: error:") and match in lines[0]


def test_missing_and_corrupt_models(capsys, tmp_path, tiny_model_dir):
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert code != 0 and "model not found" in err and "Traceback" not in err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model_index.json").write_text((tiny_model_dir / "model_index.json").read_text())
    (corrupt / "unet").mkdir()
    (corrupt / "unet" / "config.json").write_text("{not json")
    code, _, err = run_cli(capsys, "generate", "--model", str(corrupt), "--prompt", "x")
    assert code != 0 and "could not load" in err and len(err.strip().splitlines()) == 1
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04")
    code, _, err = run_cli(capsys, "generate", "--model", str(pickle), "--prompt", "x")
    assert code != 0 and "pickle" in err and "--allow-pickle" in err


def test_overlong_prompt_warns(capsys, tiny_model_dir):
    code, _, err = run_cli(capsys, "generate", "--model", str(tiny_model_dir), "--prompt", "cat " * 100, "--steps", "1")
    assert code == 0 and "truncated" in err


def test_debug_shows_traceback_and_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sailscope", "generate", "--model", str(tmp_path / "x"), "--prompt", "p",
                           "--debug"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ModelLoadError" in proc.stderr
