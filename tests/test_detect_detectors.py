"""Several detectors in one pass (core/detect.py ``detectors=``): each column equals its single-metric run, the
anisotropy terms equal an independent computation of docs/math.md §6 on the same latent, and ``detect``'s record
without detectors is unchanged (tiny random-weight pipeline)."""
from __future__ import annotations

import pytest
import torch

from sailscope.core.detect import DETECTORS, RECORD_FIELDS, parse_detectors, score_prompt
from sailscope.core.errors import UserInputError

PROMPT = "a red circle above a blue square, poster print 1234"
KW = dict(seeds=2, steps=10)


def test_record_without_detectors_is_unchanged(tiny_pipe):
    for metric in ("sharpness", "wen"):
        row = score_prompt(tiny_pipe, PROMPT, metric=metric, **KW).to_dict()
        assert tuple(row) == RECORD_FIELDS
        assert row["hvp"] == ("fd" if metric == "sharpness" else "none")


@pytest.mark.parametrize("hvp", ["fd", "exact"])
def test_columns_equal_the_single_metric_runs(tiny_pipe, hvp):
    both = score_prompt(tiny_pipe, PROMPT, hvp=hvp, detectors="all", **KW)
    wen = score_prompt(tiny_pipe, PROMPT, metric="wen", **KW)
    sharp = score_prompt(tiny_pipe, PROMPT, metric="sharpness", hvp=hvp, **KW)
    row = both.to_dict()
    assert list(row)[len(RECORD_FIELDS):] == ["wen", "sharpness", "anisotropy", "anisotropy_norm",
                                              "anisotropy_alignment"]
    assert row["score"] == sharp.score and row["per_seed"] == sharp.per_seed  # the metric's fields as before
    assert row["sharpness"] == sharp.score
    assert row["wen"] == pytest.approx(wen.score, rel=1e-6)
    assert row["anisotropy_norm"] == pytest.approx(wen.score, rel=1e-6)  # the norm term is Wen's metric at step 1
    assert row["anisotropy"] == pytest.approx(row["anisotropy_norm"] + 2.0 * row["anisotropy_alignment"], rel=1e-6)
    aniso = score_prompt(tiny_pipe, PROMPT, metric="anisotropy", **KW)
    assert aniso.score == pytest.approx(row["anisotropy"], rel=1e-6) and aniso.hvp == "none"


def test_anisotropy_terms_match_an_independent_computation(tiny_pipe):
    """§6 from scratch: the seeds' x_T, the guided pair at t_hi = first timestep and at t_lo = third from the end,
    norm = ‖eps_c - eps_u‖(t_hi), angle = cos∠(eps_u, eps_c - eps_u)(t_lo), same latent."""
    from diffusers import DDIMScheduler

    from sailscope.core.score import DiffusersScoreModel

    row = score_prompt(tiny_pipe, PROMPT, detectors=["anisotropy"], anisotropy_weights=(0.5, 3.0), **KW)
    sched = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    sched.set_timesteps(KW["steps"])
    t_hi, t_lo = int(sched.timesteps[0]), int(sched.timesteps[-3])
    x = torch.stack([torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in range(2)])
    with torch.no_grad():
        cond, uncond = tiny_pipe.encode_prompt(PROMPT, "cpu", 2, True, None)
        model = DiffusersScoreModel.from_pipeline(tiny_pipe)
        ec, eu = model.guided(t_hi, cond, uncond).eps_pair(x)
        norm = (ec - eu).flatten(1).norm(dim=1)
        ec, eu = model.guided(t_lo, cond, uncond).eps_pair(x)
        g, u = (ec - eu).flatten(1), eu.flatten(1)
        cos = (g * u).sum(1) / (g.norm(dim=1) * u.norm(dim=1))
    assert set(row.columns) == {"anisotropy", "anisotropy_norm", "anisotropy_alignment"}
    assert row.columns["anisotropy_norm"] == pytest.approx(float(norm.mean()), rel=1e-4)
    assert row.columns["anisotropy_alignment"] == pytest.approx(float(cos.mean()), rel=1e-4, abs=1e-6)
    assert row.columns["anisotropy"] == pytest.approx(float((0.5 * norm + 3.0 * cos).mean()), rel=1e-4)


def test_first_steps_average_wen_and_sharpness_but_anisotropy_stays_at_step_one(tiny_pipe):
    two = score_prompt(tiny_pipe, PROMPT, first_steps=2, detectors="all", **KW)
    one = score_prompt(tiny_pipe, PROMPT, first_steps=1, detectors="all", **KW)
    wen2 = score_prompt(tiny_pipe, PROMPT, first_steps=2, metric="wen", **KW)
    assert two.columns["wen"] == pytest.approx(wen2.score, rel=1e-6)
    assert two.columns["sharpness"] == pytest.approx(two.score, rel=1e-12)
    assert two.columns["anisotropy_norm"] == pytest.approx(one.columns["anisotropy_norm"], rel=1e-6)
    assert two.columns["anisotropy"] == pytest.approx(one.columns["anisotropy"], rel=1e-6)


def test_parse_detectors():
    assert parse_detectors("all") == DETECTORS and parse_detectors(None) == () and parse_detectors("none") == ()
    assert parse_detectors("anisotropy, wen") == ("wen", "anisotropy")
    with pytest.raises(UserInputError, match="unknown detector"):
        parse_detectors("wen,magic")
