"""The app's Audit tab on the engine of ``sailscope audit`` (core/audit.py), handlers called directly on the tiny
pipeline: the same records as ``detect``/``audit``, the tab's report numbers = ``core.audit.build_report`` on the
folder's records, resume without rescoring, cancel, report downloads without local paths, opening an uploaded
report.json / scores.jsonl, settings changes refused in words."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from sailscope.core import audit, detect  # noqa: E402
from sailscope.core.io.files import json_safe  # noqa: E402
from sailscope.ui.plots import sig  # noqa: E402
from sailscope.ui.views.audit import (  # noqa: E402
    AUDIT_INPUTS, AUDIT_OUTPUTS, OPEN_INPUTS, OPEN_OUTPUTS, audit_handler, open_report_handler, summary_rows,
)
from sailscope.ui.widgets import cancel_handler  # noqa: E402
from ui_support import request  # noqa: E402

PROMPTS = ["a cat", "a dog", "a bird", "a red square"]


def run(ctx, prompts=PROMPTS, memorized="a dog", name="t", detectors=("wen", "sharpness"), metric="sharpness",
        seeds=1, steps=2, upload=None):
    return list(audit_handler(ctx, "\n".join(prompts), upload, memorized, seeds, steps, metric, name, list(detectors),
                              request=request("u")))


def text(update) -> str:
    return html.unescape(update["status"])


def folder(ctx, name="t") -> Path:
    return Path(ctx.config.outputs) / "audit" / name


@pytest.fixture()
def counting(monkeypatch):
    """Counts the prompts ``core.detect.score_prompt`` scores (the view calls it through the module)."""
    calls: list[str] = []
    real = detect.score_prompt

    def score_prompt(pipe, prompt, **kw):
        calls.append(prompt)
        return real(pipe, prompt, **kw)

    monkeypatch.setattr(detect, "score_prompt", score_prompt)
    return calls


def test_inputs_and_outputs_name_the_handler_parameters():
    import inspect

    params = list(inspect.signature(audit_handler).parameters)[1:-1]
    assert tuple(params) == AUDIT_INPUTS
    assert tuple(list(inspect.signature(open_report_handler).parameters)[1:-1]) == OPEN_INPUTS
    assert set(OPEN_OUTPUTS) <= set(AUDIT_OUTPUTS) | {"report_upload"}


def test_records_are_the_cli_records_and_report_numbers_equal_build_report(ctx, pipe):
    out = run(ctx)
    last = out[-1]
    assert "4 prompts done" in text(last) and "ss-ok" in last["status"]
    d = folder(ctx)
    # the CLI's folder: settings, one shard, the merge, the report
    assert (d / audit.SETTINGS).is_file() and (d / audit.MERGED).is_file() and (d / "shards" / "scores.0.jsonl").is_file()
    records = audit.read_records(d / audit.MERGED)
    assert [r["prompt"] for r in records] == PROMPTS
    # same fields and values as `detect --detectors wen,sharpness` / the CLI's scorer (all but seconds)
    for r in records:
        ref = detect.score_prompt(pipe, r["prompt"], seeds=1, steps=2, metric="sharpness", hvp="fd",
                                  detectors=("wen", "sharpness")).to_dict()
        extra = {"threshold", "risk"} & set(r)  # only with a calibrated threshold, as in the CLI
        assert set(r) - extra == set(ref)
        assert {k: v for k, v in r.items() if k not in extra | {"seconds"}} == \
            {k: v for k, v in ref.items() if k != "seconds"}
        assert "memorized" not in r and "key" not in r  # labels stay out of the records
    # the tab's numbers = core.audit.build_report on the folder's records with the tab's labels
    labels = {p: p == "a dog" for p in PROMPTS}
    expected = audit.build_report(records, labels)
    assert set(expected["detectors"]) == {"sharpness", "wen"}
    rows = last["summary"]
    assert [r[0] for r in rows] == list(expected["detectors"])
    for row in rows:
        e = expected["detectors"][row[0]]
        assert row[1:] == [sig(e["auc"]), sig(e["auc_ci"][0]), sig(e["auc_ci"][1]), sig(e["tpr_at_fpr"]),
                           sig(e["tpr_at_fpr_ci"][0]), sig(e["tpr_at_fpr_ci"][1]), 1, 3, 0]
    assert summary_rows(expected) == rows
    # the report file is exactly build_report's (JSON-safe); both offered for download, next to the exports
    files = sorted(last["report_files"])
    assert [Path(f).name for f in files] == ["report.html", "report.json"]
    assert json.loads(Path(files[1]).read_text()) == json.loads(json.dumps(json_safe(expected)))
    assert sorted(Path(f).suffix for f in last["export"]) == [".csv", ".json"]
    # the plots come from the report: an ROC per detector (AUC in the legend), histograms by label
    assert "AUC" in last["roc"].layout.title.text
    assert {t.name.split(" (")[0] for t in last["roc"].data if t.name} == {"wen", "sharpness"}
    assert {t.name for t in last["histogram"].data} == {"memorized", "not memorized"}
    # the table shows the other detector columns next to the score (the metric's own column is the score)
    table = last["table"]
    assert len(table) == 4 and list(table.columns)[:4] == ["prompt", "memorization risk", "score", "wen"]
    assert "sharpness" not in table.columns
    assert list(table["wen"]) == [sig(r["wen"]) for r in records]


def test_resume_does_not_rescore_finished_prompts(ctx, counting):
    run(ctx, prompts=PROMPTS[:2])
    assert counting == PROMPTS[:2]
    first = {r["prompt"]: r for r in audit.read_records(folder(ctx) / audit.MERGED)}
    counting.clear()
    out = run(ctx, prompts=PROMPTS)  # two finished, two new
    assert counting == PROMPTS[2:]
    assert "2 resumed" in text(out[0])
    again = audit.read_records(folder(ctx) / audit.MERGED)
    assert [r["prompt"] for r in again] == PROMPTS
    for r in again[:2]:
        assert r == first[r["prompt"]]  # the same record, seconds included: not rescored
    counting.clear()
    out = run(ctx, prompts=PROMPTS)
    assert counting == [] and "4 resumed" in text(out[0]) and "4 prompts done" in text(out[-1])


def test_cancel_keeps_scored_prompts_and_resume_scores_only_the_rest(ctx, monkeypatch):
    calls: list[str] = []
    real = detect.score_prompt

    def score_prompt(pipe, prompt, **kw):
        calls.append(prompt)
        if len(calls) == 2:
            cancel_handler(ctx, request("u"))  # Cancel pressed while the second prompt is scored
        return real(pipe, prompt, **kw)

    monkeypatch.setattr(detect, "score_prompt", score_prompt)
    out = run(ctx)
    assert "cancelled after 2 of 4 prompts" in text(out[-1]) and "ss-warn" in out[-1]["status"]
    assert calls == PROMPTS[:2]
    shard = audit.read_records(folder(ctx) / "shards" / "scores.0.jsonl")
    assert [r["prompt"] for r in shard] == PROMPTS[:2]
    calls.clear()
    monkeypatch.setattr(detect, "score_prompt", lambda pipe, prompt, **kw: calls.append(prompt) or real(pipe, prompt, **kw))
    out = run(ctx)
    assert calls == PROMPTS[2:] and "2 resumed" in text(out[0]) and "4 prompts done" in text(out[-1])
    assert [r["prompt"] for r in audit.read_records(folder(ctx) / audit.MERGED)] == PROMPTS


def test_report_downloads_and_read_outs_have_no_local_paths(ctx, tmp_path):
    last = run(ctx, upload=None)[-1]
    assert last["report_files"]
    roots = {str(tmp_path), str(tmp_path.resolve()), ctx.config.outputs, str(Path.home()), "/tmp/", "\\"}
    for f in last["report_files"]:
        body = Path(f).read_text(encoding="utf-8")
        if f.endswith(".html"):  # the inlined plotly.js is code, not ours: check the page around it
            body = body.split("<script type='text/javascript'>")[0] + body.split("</script>", 1)[-1]
        for root in roots:
            assert root not in body, (Path(f).name, root)
        assert (Path(f).stat().st_mode & 0o777) == 0o644
    shown = json.dumps([last["summary"], last["top"], last["report_note"], last["status"]], default=str)
    for root in roots - {"\\"}:
        assert root not in shown


def test_no_labels_no_report_and_unlabelled_prompts_listed_when_some_are(ctx, tmp_path):
    last = run(ctx, memorized="")[-1]
    assert last["report_files"] == [] and last["summary"] == [] and "No report" in html.unescape(last["report_note"])
    assert not (folder(ctx) / audit.REPORT_JSON).exists()
    # labels from an uploaded .csv's memorized column; unlabelled prompts ranked in the report
    up = tmp_path / "p.csv"
    up.write_text("prompt,memorized\na cat,1\na dog,0\na bird,0\na red square,\n")
    last = run(ctx, prompts=[], memorized="", upload=str(up), name="csv")[-1]
    report = json.loads((folder(ctx, "csv") / audit.REPORT_JSON).read_text())
    assert report["detectors"]["sharpness"]["n_unlabeled"] == 1
    assert {r[3] for r in last["top"]} == {"a red square"}


def test_same_name_other_settings_is_refused_in_words(ctx, tmp_path):
    run(ctx, prompts=PROMPTS[:1])
    (err,) = run(ctx, prompts=PROMPTS[:1], seeds=2)
    msg = text(err)
    assert "ss-error" in err["status"] and "other settings" in msg and "seeds 1" in msg and "another audit name" in msg
    assert str(tmp_path) not in msg
    (err,) = run(ctx, prompts=PROMPTS[:1], detectors=("bogus",), name="x")
    assert "unknown detector" in text(err)


def test_detector_choice_is_columns_of_the_same_pass(ctx):
    (err,) = run(ctx, prompts=PROMPTS[:2], detectors=("anisotropy",), steps=2, name="all")
    assert "steps must be >= 3" in text(err)
    last = run(ctx, prompts=PROMPTS[:2], detectors=("wen", "sharpness", "anisotropy"), metric="wen", name="all",
               steps=3)[-1]
    (rec, _) = audit.read_records(folder(ctx, "all") / audit.MERGED)
    assert rec["metric"] == "wen" and math.isclose(rec["score"], rec["wen"])
    assert {"sharpness", "anisotropy", "anisotropy_norm", "anisotropy_alignment"} <= set(rec)
    names = [r[0] for r in last["summary"]]
    assert names[0] == "wen" and {"sharpness", "anisotropy", "anisotropy_norm", "anisotropy_alignment"} <= set(names)
    header = Path(last["export"][0]).read_text().splitlines()[0].split(",")
    assert header[:6] == ["prompt", "score", "metric", "per_seed", "memorized", "seconds"]
    assert {"wen", "sharpness", "anisotropy"} <= set(header)


def test_open_uploaded_report_json_and_scores_jsonl(ctx, tmp_path):
    last = run(ctx)[-1]
    d = folder(ctx)
    opened = open_report_handler(ctx, str(d / audit.REPORT_JSON), "")
    assert "opened the uploaded report" in text(opened) and opened["summary"] == last["summary"]
    assert sorted(Path(f).name for f in opened["report_files"]) == ["report.html", "report.json"]
    assert all("audit-opened" in f for f in opened["report_files"])  # never written over the audit's own report
    # a scores.jsonl (as `sailscope audit` writes it) with labels from the box: build_report's numbers
    scores = tmp_path / "scores.jsonl"
    scores.write_bytes((d / audit.MERGED).read_bytes())
    opened = open_report_handler(ctx, str(scores), "a dog")
    expected = audit.build_report(audit.read_records(scores), {p: p == "a dog" for p in PROMPTS})
    assert opened["summary"] == summary_rows(expected) == last["summary"]
    # not a report: refused in words
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"detectors": {"<a href=x>": {}}}))
    assert "not a SAIL Scope audit report" in text(open_report_handler(ctx, str(bad), ""))
    bad.write_text("not json")
    assert "not JSON" in text(open_report_handler(ctx, str(bad), ""))
    assert "upload a report.json" in text(open_report_handler(ctx, None, ""))


def test_a_closed_client_stops_the_audit_worker(ctx):
    import threading

    gen = audit_handler(ctx, "\n".join(PROMPTS), None, "", 1, 2, "sharpness", "gone", ["wen"], request=request("g"))
    first = next(gen)
    assert "0/4 scored" in text(first)
    gen.close()  # gradio closes the handler when the tab goes away
    assert not [t for t in threading.enumerate() if t.name == "sailscope-audit"]
    assert len(audit.read_records(folder(ctx, "gone") / "shards" / "scores.0.jsonl")) <= 1
