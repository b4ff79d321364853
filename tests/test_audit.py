"""The audit engine (core/audit.py) with a cheap fake scorer: split, shards, resume after a kill, merge, report.

Processes are simulated by calling the per-rank function with ``rank``/``world_size`` given explicitly; the
report's numbers are checked against brute-force oracles (Mann–Whitney U for the AUC, a hand-counted ROC for
TPR at 1 % FPR).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sailscope.core import audit
from sailscope.core.audit import (
    ProcessState,
    build_report,
    bootstrap_roc,
    detector_columns,
    load_labels,
    merge_records,
    prompt_owner,
    read_done,
    read_records,
    report_html,
    run_audit,
    score_shard,
    shard_path,
    write_report,
)
from sailscope.core.detect import DetectionScore, roc_auc, tpr_at_fpr
from sailscope.core.errors import UserInputError

PROMPTS = [f"a photo of object {i}, poster print {1000 + 7 * i}" for i in range(40)]


def fake_score(prompt: str) -> DetectionScore:
    """Deterministic, cheap, DetectionScore-shaped (the CLI passes ``partial(score_prompt, pipe, ...)``)."""
    h = int.from_bytes(prompt.encode(), "little") % 9973
    per_seed = [h / 100.0 + k for k in range(2)]
    return DetectionScore(prompt=prompt, metric="sharpness", score=float(np.mean(per_seed)), per_seed=per_seed,
                          seeds=[0, 1], first_steps=1, hvp="fd", seconds=0.0)


def fake_score_with_columns(prompt: str) -> dict:
    row = fake_score(prompt).to_dict()
    row.update(wen=row["score"] / 3, anisotropy=-row["score"])
    return row


class Killed(RuntimeError):
    pass


def dying_scorer(after: int):
    calls = itertools.count()

    def score(prompt: str):
        if next(calls) >= after:
            raise Killed(f"killed while scoring {prompt!r}")
        return fake_score_with_columns(prompt)

    return score


def all_shard_lines(out) -> list[str]:
    lines = []
    for p in sorted((out / "shards").glob("scores.*.jsonl")):
        lines += p.read_text(encoding="utf-8").splitlines()
    return lines


# ----------------------------------------------------------------------------------------------
# (1) The split
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_split_covers_every_prompt_exactly_once(tmp_path, world):
    prompts = PROMPTS + PROMPTS[:5]  # duplicates in the file are scored once
    for rank in range(world):
        res = score_shard(prompts, fake_score, tmp_path, rank=rank, world_size=world)
        assert res.scored == res.owned == sum(prompt_owner(p, world) == rank for p in PROMPTS)
        assert all(prompt_owner(r["prompt"], world) == rank for r in read_records(shard_path(tmp_path, rank)))
    seen = [json.loads(line)["prompt"] for line in all_shard_lines(tmp_path)]
    assert sorted(seen) == sorted(PROMPTS)  # every prompt, exactly once, across the K shards
    merged = merge_records(tmp_path, prompts)
    assert merged.written == len(PROMPTS) and merged.missing == []
    assert [r["prompt"] for r in read_records(tmp_path / "scores.jsonl")] == PROMPTS  # prompt-file order


def test_owner_is_stable_across_interpreters():
    """Not Python's salted hash: another interpreter with another hash seed assigns the same owners."""
    code = ("import json, sys; from sailscope.core.audit import prompt_owner; "
            "print(json.dumps([prompt_owner(p, k) for k in (2, 3, 4) for p in json.loads(sys.argv[1])]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(PROMPTS)], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == [prompt_owner(p, k) for k in (2, 3, 4) for p in PROMPTS]
    counts = np.bincount([prompt_owner(p, 4) for p in PROMPTS], minlength=4)
    assert counts.min() >= 4  # roughly balanced on 40 prompts


# ----------------------------------------------------------------------------------------------
# (2) A killed run resumes to exactly the uninterrupted result
# ----------------------------------------------------------------------------------------------
def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "killed"
    for rank in range(2):
        score_shard(PROMPTS, fake_score_with_columns, ref_dir, rank=rank, world_size=2)
    merge_records(ref_dir, PROMPTS)
    reference = read_records(ref_dir / "scores.jsonl")

    # two processes; rank 0 dies after 5 prompts, and while writing its 6th record (a torn line, no newline)
    with pytest.raises(Killed):
        score_shard(PROMPTS, dying_scorer(5), dir_, rank=0, world_size=2)
    score_shard(PROMPTS, fake_score_with_columns, dir_, rank=1, world_size=2)
    shard0 = shard_path(dir_, 0)
    assert len(read_records(shard0)) == 5
    torn = json.dumps(fake_score_with_columns("some prompt")).encode()[:37]
    with open(shard0, "ab") as f:
        f.write(torn)
    assert len(read_records(shard0)) == 5  # the torn line is ignored
    before = len(read_done(dir_))

    # rerun with another process count: every unfinished prompt goes to exactly one of 3 processes
    scored = sum(score_shard(PROMPTS, fake_score_with_columns, dir_, rank=r, world_size=3).scored for r in range(3))
    assert scored == len(PROMPTS) - before
    merged = merge_records(dir_, PROMPTS)
    assert merged.written == len(PROMPTS) and not merged.missing
    assert read_records(dir_ / "scores.jsonl") == reference
    lines = all_shard_lines(dir_)
    assert sorted(json.loads(line)["prompt"] for line in lines) == sorted(PROMPTS)  # valid lines, no duplicates
    assert not shard0.read_bytes().endswith(torn)

    # a third run finds everything done and changes nothing
    assert all(score_shard(PROMPTS, fake_score, dir_, rank=r, world_size=2).scored == 0 for r in range(2))
    merge_records(dir_, PROMPTS)
    assert read_records(dir_ / "scores.jsonl") == reference
    for line in (dir_ / "scores.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line)


def test_run_audit_single_process_progress_and_settings(tmp_path):
    calls = []
    settings = {"model": "demo", "metric": "sharpness", "seeds": 2}
    summary = run_audit(PROMPTS[:10], fake_score, tmp_path, settings=settings, state=ProcessState(),
                        progress=lambda *a: calls.append(a))
    assert summary.merged.written == 10 and summary.shard.scored == 10
    assert calls[0][:2] == (0, 10) and calls[-1][:2] == (10, 10) and calls[-1][2] > 0 and calls[-1][3] == 0
    assert len(read_records(tmp_path / "scores.jsonl")) == 10
    again = run_audit(PROMPTS[:12], fake_score, tmp_path, settings=dict(settings), state=ProcessState())
    assert (again.shard.skipped, again.shard.scored, again.merged.written) == (10, 2, 12)
    with pytest.raises(UserInputError, match="other settings"):
        run_audit(PROMPTS[:12], fake_score, tmp_path, settings={**settings, "seeds": 4}, state=ProcessState())


def test_run_audit_under_accelerate_state_fallback(tmp_path):
    """Without ``accelerate launch`` the process state is one process of one (with or without accelerate)."""
    state = audit.process_state()
    assert (state.rank, state.world_size, state.is_main) == (0, 1, True)
    state.barrier()
    assert run_audit(PROMPTS[:3], fake_score, tmp_path).merged.written == 3


def test_scorer_record_is_checked(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        score_shard(["p"], lambda p: {"prompt": p, "score": 1.0}, tmp_path, rank=0, world_size=1)
    with pytest.raises(ValueError, match="when asked for"):
        score_shard(["p"], lambda p: fake_score("q"), tmp_path, rank=0, world_size=1)


# ----------------------------------------------------------------------------------------------
# (3) Report numbers against oracles
# ----------------------------------------------------------------------------------------------
def mann_whitney_auc(pos, neg) -> float:
    """Brute force: P(score_pos > score_neg) + ½ P(tie) over all pairs."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def make_records(scores, prompts=None):
    prompts = prompts or [f"prompt {i}" for i in range(len(scores))]
    return [
        {**fake_score(p).to_dict(), "score": float(s), "wen": float(-s)} for p, s in zip(prompts, scores)
    ]


def test_auc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(1.0, 1.0, 37), 1)  # rounding makes ties
    neg = np.round(rng.normal(0.0, 1.0, 53), 1)
    recs = make_records(np.r_[pos, neg])
    labels = {r["prompt"]: i < len(pos) for i, r in enumerate(recs)}
    rep = build_report(recs, labels, resamples=200)
    want = mann_whitney_auc(pos, neg)
    assert rep["detectors"]["sharpness"]["auc"] == pytest.approx(want, abs=1e-12)
    assert rep["detectors"]["wen"]["auc"] == pytest.approx(1 - want, abs=1e-12)  # the extra column, reversed


def test_tpr_at_one_percent_fpr_hand_made():
    """200 negatives 0..199; positives 500, 400, 199.5, 198.5, 10. Walking down the thresholds, FPR stays below 1 %
    (at most 1 false positive of 200) through 198.5, where 4 of 5 positives are found; 198 makes FPR = 1 %."""
    neg = np.arange(200.0)
    pos = np.array([500.0, 400.0, 199.5, 198.5, 10.0])
    recs = make_records(np.r_[pos, neg])
    labels = {r["prompt"]: i < len(pos) for i, r in enumerate(recs)}
    d = build_report(recs, labels, resamples=100)["detectors"]["sharpness"]
    assert d["tpr_at_fpr"] == pytest.approx(0.8)
    assert d["auc"] == pytest.approx(mann_whitney_auc(pos, neg))
    fpr, tpr = np.array(d["roc"]["fpr"]), np.array(d["roc"]["tpr"])
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and d["roc"]["thresholds"][0] is None


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    s = np.r_[rng.normal(1.2, 1, 60), rng.normal(0, 1, 140)]
    y = np.r_[np.ones(60, int), np.zeros(140, int)]
    a = bootstrap_roc(s, y, resamples=1000, seed=7)
    assert a == bootstrap_roc(s, y, resamples=1000, seed=7)  # deterministic for a seed
    assert a != bootstrap_roc(s, y, resamples=1000, seed=8)
    lo, hi = a["auc"]
    assert lo < roc_auc(s, y) < hi and 0.05 < hi - lo < 0.3
    lo, hi = a["tpr_at_fpr"]
    assert lo <= tpr_at_fpr(s, y) <= hi
    # stratified: every resample of a separated sample is separated, so the interval is exactly [1, 1]
    sep = bootstrap_roc(np.r_[np.full(3, 99.0), np.arange(50.0)], np.r_[np.ones(3, int), np.zeros(50, int)],
                        resamples=300)
    assert sep["auc"] == pytest.approx([1.0, 1.0], abs=1e-12)  # (an unstratified resample would often lack positives)


def test_report_histograms_top_unlabeled_and_columns():
    recs = make_records([5.0, 4.0, 3.0, 2.0, 1.0, 9.0, 8.0, 7.0, float("nan")])
    recs[-1]["score"] = None  # a non-finite score as detect writes it
    recs[0]["threshold"] = 3.0  # detect's verdict fields are not detectors
    labels = {"prompt 0": True, "prompt 1": True, "prompt 2": False, "prompt 3": False, "prompt 4": False,
              "not scored": True}
    assert set(detector_columns(recs[0])) == {"sharpness", "wen"}
    rep = build_report(recs + recs[:2], labels, resamples=50, top=2)  # repeated records count once
    assert rep["n_records"] == 9 and rep["n_labels_without_record"] == 1
    d = rep["detectors"]["sharpness"]
    assert (d["n_memorized"], d["n_not_memorized"], d["n_unlabeled"], d["n_nonfinite"]) == (2, 3, 3, 1)
    h = d["histogram"]
    assert (sum(h["memorized"]), sum(h["not_memorized"]), sum(h["unlabeled"])) == (2, 3, 3)
    assert len(h["edges"]) == len(h["memorized"]) + 1
    assert d["top_unlabeled"] == [{"prompt": "prompt 5", "score": 9.0}, {"prompt": "prompt 6", "score": 8.0}]
    assert d["auc"] == 1.0
    json.dumps(rep, allow_nan=False)  # plain JSON


def test_load_labels_both_forms(tmp_path):
    jl = tmp_path / "labels.jsonl"
    jl.write_text('{"prompt": "a", "memorized": true}\n\n{"caption": "b", "memorized": false}\n', encoding="utf-8")
    assert load_labels(jl) == {"a": True, "b": False}
    (tmp_path / "mem.txt").write_text("a\n  c  \n\n", encoding="utf-8")
    (tmp_path / "non.txt").write_text("b\n", encoding="utf-8")
    assert load_labels(tmp_path / "mem.txt", tmp_path / "non.txt") == {"a": True, "c": True, "b": False}
    (tmp_path / "both.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="both"):
        load_labels(tmp_path / "mem.txt", tmp_path / "both.txt")
    with pytest.raises(UserInputError):
        load_labels(tmp_path / "mem.txt")  # a text file needs its partner
    jl.write_text('{"prompt": "a", "memorized": "yes"}\n', encoding="utf-8")
    with pytest.raises(UserInputError, match="line 1"):
        load_labels(jl)


# ----------------------------------------------------------------------------------------------
# (4) The report files
# ----------------------------------------------------------------------------------------------
def test_report_files_are_atomic_self_contained_and_pathless(tmp_path, monkeypatch):
    out = tmp_path / "audit-out"
    for rank in range(2):
        score_shard(PROMPTS, fake_score_with_columns, out, rank=rank, world_size=2)
    merge_records(out, PROMPTS)
    recs = read_records(out / "scores.jsonl")
    labels = {p: i % 3 == 0 for i, p in enumerate(PROMPTS[:30])}
    recs.append({**fake_score_with_columns("<script>alert(1)</script>")})
    rep = build_report(recs, labels, resamples=100)
    j, h = write_report(out, rep)
    page = h.read_text(encoding="utf-8")
    for path in {str(out), str(out.resolve()), str(tmp_path), os.getcwd()}:
        assert path not in page and path not in j.read_text(encoding="utf-8")
    assert page.count("plotly.js v") == 1  # the library inlined once ...
    assert page.count("Plotly.newPlot(") == 1 + 3  # ... for the ROC and one histogram per detector
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "prefers-color-scheme: dark" in page and "src=\"http" not in page
    assert json.loads(j.read_text(encoding="utf-8")) == json.loads(json.dumps(rep))
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    mask = os.umask(0)
    os.umask(mask)
    assert j.stat().st_mode & 0o777 == h.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600

    # a failure while replacing leaves the previous files intact and no temporary file behind
    old_json, old_html = j.read_bytes(), h.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(audit.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_report(out, build_report(recs[:5], labels, resamples=10))
    assert j.read_bytes() == old_json and h.read_bytes() == old_html
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_report_html_without_labels():
    rep = build_report(make_records([1.0, 2.0]), {}, resamples=10)
    assert rep["detectors"]["sharpness"]["auc"] is None
    page = report_html(rep)
    assert "Plotly.newPlot(" in page and page.count("plotly.js v") == 1


# ----------------------------------------------------------------------------------------------
# Under a real `accelerate launch` (2 CPU processes)
# ----------------------------------------------------------------------------------------------
LAUNCHED_SCRIPT = '''
import sys
from sailscope.core.audit import process_state, run_audit
from sailscope.core.detect import DetectionScore

out, die_after = sys.argv[1], int(sys.argv[2])
state = process_state()
calls = [0]

def score(prompt):
    calls[0] += 1
    if state.rank == 1 and calls[0] > die_after >= 0:
        raise SystemExit(3)  # this process dies mid-run
    v = float(sum(map(ord, prompt)) % 97)
    return DetectionScore(prompt=prompt, metric="wen", score=v, per_seed=[v], seeds=[0], first_steps=1,
                          hvp="none", seconds=0.0)

prompts = [f"prompt number {i}" for i in range(24)]
summary = run_audit(prompts, score, out, settings={"model": "fake"}, state=state)
print(f"rank {summary.rank} of {summary.world_size}: scored {summary.shard.scored}", flush=True)
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes_kill_and_resume(tmp_path):
    pytest.importorskip("accelerate")
    script = tmp_path / "audit_script.py"
    script.write_text(LAUNCHED_SCRIPT, encoding="utf-8")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")

    def launch(out, die_after):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(script), str(out), str(die_after)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)

    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single"), "-1"], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert single.returncode == 0, single.stderr[-2000:]
    assert "rank 0 of 1: scored 24" in single.stdout
    reference = read_records(tmp_path / "single" / "scores.jsonl")

    out = tmp_path / "launched"
    killed = launch(out, 4)
    assert killed.returncode != 0
    assert len(read_records(shard_path(out, 1))) == 4 and not (out / "scores.jsonl").exists()
    resumed = launch(out, -1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rank 0 of 2" in resumed.stdout and "rank 1 of 2" in resumed.stdout
    assert read_records(out / "scores.jsonl") == reference
    assert sorted(json.loads(line)["prompt"] for line in all_shard_lines(out)) == sorted(r["prompt"] for r in reference)
