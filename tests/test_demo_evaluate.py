"""The demo model's evaluation (``sailscope eval-demo``) on a tiny trained model: look-alike prompts are generated
and judged by the copy criterion, and each negative group gets its own AUC, equal to a direct computation."""
import numpy as np
import pytest

from sailscope.core.demo import data as D
from sailscope.core.demo.evaluate import evaluate, format_table, roc_summary
from sailscope.core.demo.train import TrainConfig, train
from sailscope.core.detect import roc_auc


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_eval")
    train(TrainConfig.tiny(), root / "run", root / "out", progress=False)
    return evaluate(root / "out", seeds=2, steps=3, n_heldout=3, n_lookalike=3, per_memorized=1, log=lambda *_: None)


def test_lookalikes_are_generated_and_judged_by_the_copy_criterion(table):
    rows = table["rows"]
    look = [r for r in rows if r["kind"] in ("A_fresh_suffix", "B_number_changed")]
    assert sum(r["kind"] == "A_fresh_suffix" for r in look) == 3
    assert sum(r["kind"] == "B_number_changed" for r in look) == table["n_memorized_exact"] + table["n_memorized_template"]
    for r in look:
        assert r["label"] == 0 and len(r["memorized_rmse"]) == 2 and D.caption_number(r["caption"]) is not None
        assert r["copies"] == sum(d < table["tau_copy"] for d in r["memorized_rmse"])
    assert table["lookalike_copying_prompts"] == [r["caption"] for r in look if r["copies"] > 0]


def test_each_negative_group_gets_its_own_auc(table):
    rows = table["rows"]
    pos = [r["sharp1"] for r in rows if r["kind"] in ("exact", "template")]
    groups = {"heldout": ["heldout"], "lookalike": ["A_fresh_suffix", "B_number_changed"],
              "A_fresh_suffix": ["A_fresh_suffix"], "B_number_changed": ["B_number_changed"]}
    by = table["detection_by_negatives"]
    for name, kinds in groups.items():
        neg = [r["sharp1"] for r in rows if r["kind"] in kinds]
        direct = roc_auc(pos + neg, [1] * len(pos) + [0] * len(neg))
        assert by[name]["sharp1"]["auc"] == pytest.approx(direct) and by[name]["sharp1"]["n_neg"] == len(neg)
    n_copy = sum(r["copies"] > 0 for r in rows if r["kind"] in groups["lookalike"])
    assert by["lookalike_copying"]["sharp1"]["n_neg"] == n_copy
    assert by["lookalike_not_copying"]["sharp1"]["n_neg"] == len(rows) - sum(
        r["kind"] in ("exact", "template", "heldout") for r in rows) - n_copy
    assert table["detection"]["sharp1"]["auc"] == by["heldout"]["sharp1"]["auc"]  # the card's row: plain held-out
    assert "memorized vs lookalike not copying" in format_table(table)
    assert roc_summary([1.0], []) == {"auc": None, "tpr_at_1fpr": None, "n_neg": 0}
