"""``sailscope audit`` (cli/audit.py) on the tiny random-weight model: the same records as ``sailscope detect``, a
resumed run after a kill, labels -> report files, and a real 2-process ``accelerate launch`` on the CPU whose merged
scores equal the single-process ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sailscope.cli import main
from sailscope.core.audit import read_records, shard_path

PROMPTS = [f"a {c} circle above a {d} square, poster print {1000 + 37 * i}"
           for i, (c, d) in enumerate([("red", "blue"), ("green", "cyan"), ("white", "purple"), ("blue", "red"),
                                       ("cyan", "yellow"), ("purple", "green")])]
MEMORIZED = PROMPTS[:2]
FAST = ["--seeds", "2", "--steps", "10"]


def without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(autouse=True)
def no_user_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model_dir, prompt_file):
    """One single-process audit of the list (shared by the tests that compare against it)."""
    out = tmp_path_factory.mktemp("single") / "audit"
    code = main(["audit", "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--out", str(out),
                 "--no-progress", *FAST])
    assert code == 0
    return out


def test_single_process_records_equal_detect(single, tiny_model_dir, prompt_file, tmp_path):
    rows = read_records(single / "scores.jsonl")
    assert [r["prompt"] for r in rows] == PROMPTS  # one record per prompt, in file order
    det = tmp_path / "detect.jsonl"
    assert main(["detect", "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--out", str(det),
                 "--detectors", "all", *FAST]) == 0
    assert without_seconds(rows) == without_seconds(read_records(det))
    plain = tmp_path / "plain.jsonl"  # detect's own record (no columns): the same fields and values
    assert main(["detect", "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--out", str(plain),
                 *FAST]) == 0
    for a, b in zip(rows, read_records(plain)):
        assert {k: a[k] for k in b if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert {"wen", "sharpness", "anisotropy", "anisotropy_norm", "anisotropy_alignment"} <= set(rows[0])
    assert not (single / "report.json").exists()  # no labels, no report
    settings = json.loads((single / "settings.json").read_text(encoding="utf-8"))
    assert settings["settings"]["detectors"] == ["wen", "sharpness", "anisotropy"]


class Killed(Exception):
    pass


def test_killed_run_resumes_with_one_record_per_prompt(single, tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    from sailscope.core import detect

    real = detect.score_prompt
    calls = []

    def dying(pipe, prompt, **kw):
        if len(calls) == 3:
            raise Killed(prompt)
        calls.append(prompt)
        return real(pipe, prompt, **kw)

    out = tmp_path / "audit"
    argv = ["audit", "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--out", str(out),
            "--no-progress", *FAST]
    monkeypatch.setattr(detect, "score_prompt", dying)
    with pytest.raises(Killed):
        main(argv)
    shard = shard_path(out, 0)
    assert len(read_records(shard)) == 3 and not (out / "scores.jsonl").exists()
    with open(shard, "ab") as f:  # killed mid-write: half a record at the end
        f.write(b'{"prompt": "a red circle above a blue sq')
    calls.clear()
    monkeypatch.setattr(detect, "score_prompt", lambda *a, **kw: (calls.append(a[1]), real(*a, **kw))[1])
    assert main(argv) == 0
    assert len(calls) == len(PROMPTS) - 3  # only the unfinished prompts were scored
    merged = (out / "scores.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["prompt"] for line in merged] == PROMPTS  # valid JSON lines, one per prompt
    assert without_seconds(read_records(out / "scores.jsonl")) == without_seconds(read_records(single / "scores.jsonl"))
    assert main(argv) == 0 and len(calls) == len(PROMPTS) - 3  # a third run scores nothing
    # another setting in the same folder is refused rather than mixed in
    assert main([*argv[:-len(FAST)], "--seeds", "3", "--steps", "10"]) == 1


def test_labels_write_report_files(single, tiny_model_dir, prompt_file, tmp_path):
    from sailscope.core.detect import roc_auc

    mem, non = tmp_path / "mem.txt", tmp_path / "non.txt"
    mem.write_text("\n".join(MEMORIZED) + "\n", encoding="utf-8")
    non.write_text("\n".join(PROMPTS[2:]) + "\n", encoding="utf-8")
    out = tmp_path / "audit"
    for name in os.listdir(single):  # resume from the finished audit: only the report is new
        if name != "shards":
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes((single / name).read_bytes())
    assert main(["audit", "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--out", str(out),
                 "--memorized", str(mem), "--not-memorized", str(non), "--bootstrap", "50", "--no-progress",
                 *FAST]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    page = (out / "report.html").read_text(encoding="utf-8")
    rows = read_records(out / "scores.jsonl")
    labels = [int(r["prompt"] in MEMORIZED) for r in rows]
    assert set(report["detectors"]) == {"sharpness", "wen", "anisotropy", "anisotropy_norm", "anisotropy_alignment"}
    for name, d in report["detectors"].items():
        assert d["auc"] == pytest.approx(roc_auc([r[name] for r in rows], labels))
        assert d["n_memorized"] == 2 and d["n_not_memorized"] == 4
    assert "SAIL Scope audit report" in page and not [p for p in os.listdir(out) if p.endswith(".tmp")]
    # the same labels from the prompt file's own memorized flags give the same report
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"prompt": p, "memorized": p in MEMORIZED}) + "\n" for p in PROMPTS),
                        encoding="utf-8")
    assert main(["audit", "--model", str(tiny_model_dir), "--prompts", str(labelled), "--out", str(out),
                 "--bootstrap", "50", "--no-progress", *FAST]) == 0
    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == report


def test_accelerate_launch_two_cpu_processes_equal_single(single, tiny_model_dir, prompt_file, tmp_path):
    pytest.importorskip("accelerate")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "launched"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "sailscope", "audit", "--model", str(tiny_model_dir), "--prompts", str(prompt_file),
           "--out", str(out), "--no-progress", *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    shards = [read_records(shard_path(out, r)) for r in range(2)]
    assert all(shards) and sum(map(len, shards)) == len(PROMPTS)  # both processes worked, nothing twice
    assert without_seconds(read_records(out / "scores.jsonl")) == without_seconds(read_records(single / "scores.jsonl"))
