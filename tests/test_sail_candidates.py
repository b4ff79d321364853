"""Several SAIL candidates for one seed (core/mitigation/picks.py) on the tiny pipeline: distinct, ranked as the
default search chooses, and each reproduced bit for bit from what its PNG records."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sailscope.core.errors import UserInputError
from sailscope.core.io.infotext import format_infotext, parse_png_text
from sailscope.core.mitigation import SailSettings, run_sail
from sailscope.core.mitigation.picks import (
    PICK_KEY, STOP_KEY, candidate_fields, pick_from_infotext, picking_settings, rank_candidates, reproduce_candidate,
    sail_candidates,
)
from sailscope.core.sampling import GenerationSettings, initial_noise, run_generation

PROMPT = "a red circle on the left"


def settings(**kw):
    return GenerationSettings(**({"prompt": PROMPT, "seed": 3, "steps": 3, "sharpness_at": "none"} | kw))


def mid_threshold(pipe, gs, sail):
    """A threshold between the candidates' start losses: some rows accept at once, others need steps."""
    res = run_sail(pipe, gs, replace(picking_settings(sail, 4), threshold=-1.0, max_steps=0, rounds=1))
    start = sorted(l for l in res.trace[0].loss if l is not None)
    return (start[1] + start[2]) / 2


def test_candidates_are_distinct_ranked_and_reproducible(tiny_pipe):
    gs = settings()
    base = SailSettings(objective="paper", trigger=None, max_steps=3, lr=0.3, rounds=1, threshold=1.0)
    sail = replace(base, threshold=mid_threshold(tiny_pipe, gs, base))
    cands, result = sail_candidates(tiny_pipe, gs, sail, k=4)
    assert len(cands) == 4 and [c.rank for c in cands] == [0, 1, 2, 3]
    assert len({c.x_T.numpy().tobytes() for c in cands}) == 4  # distinct noises
    assert result.settings.candidates == 4 and result.settings.stop == "all"
    # ranked like the default rule: accepted ones first (earliest step), then by loss
    conv = [c.converged for c in cands]
    assert conv == sorted(conv, reverse=True) and any(conv)
    accepted = [c for c in cands if c.converged]
    assert [(c.round, c.steps, c.index) for c in accepted] == sorted((c.round, c.steps, c.index) for c in accepted)
    rest = [c.loss for c in cands if not c.converged]
    assert rest == sorted(rest)
    assert all(c.loss <= sail.threshold for c in accepted)
    # the default search's choice is the first candidate of the picking search's own rule
    assert torch.equal(cands[0].x_T, result.x_T)
    # each reproduces bit for bit from (seed, settings, the search's SAIL settings, its index)
    for c in cands:
        assert torch.equal(reproduce_candidate(tiny_pipe, gs, c.sail, c.index), c.x_T)
    stock = initial_noise(tiny_pipe, gs)
    assert [c.start_seed is None for c in cands] == [c.index == 0 for c in cands]
    assert any(not torch.equal(c.x_T, stock) for c in cands)


def test_pick_round_trips_through_the_png_infotext(tiny_pipe):
    gs = settings(seed=5)
    sail = SailSettings(objective="paper", trigger=None, max_steps=2, lr=0.3, rounds=1, threshold=-1.0)
    cands, result = sail_candidates(tiny_pipe, gs, sail, k=3)
    pick = cands[1]
    text = format_infotext(gs.to_dict(), candidate_fields(pick, result))
    params = parse_png_text(text)
    assert params[PICK_KEY] == str(pick.index) and params[STOP_KEY] == "all" and params["SAIL candidates"] == "3"
    restored, index = pick_from_infotext(params)
    assert index == pick.index and restored.candidates == 3 and restored.stop == "all"
    assert int(params["Seed"]) == gs.seed
    again = reproduce_candidate(tiny_pipe, replace(gs, seed=int(params["Seed"])), restored, index)
    assert torch.equal(again, pick.x_T)
    # and the image: the pick's noise sampled with the recorded settings
    a = run_generation(tiny_pipe, gs, x_T=pick.x_T).array
    b = run_generation(tiny_pipe, gs, x_T=again).array
    assert (a == b).all()
    assert pick_from_infotext({"Seed": "1"}) is None


def test_bad_requests(tiny_pipe):
    with pytest.raises(UserInputError, match="one image"):
        sail_candidates(tiny_pipe, settings(num_images=2), SailSettings(threshold=1.0), k=2)
    with pytest.raises(UserInputError, match=r"\[1, 16\]"):
        picking_settings(SailSettings(), 0)
    res = run_sail(tiny_pipe, settings(num_images=2), SailSettings(threshold=1e9, max_steps=0))
    with pytest.raises(UserInputError, match="one image"):
        rank_candidates(res, 2)
    with pytest.raises(UserInputError, match="not a row"):
        reproduce_candidate(tiny_pipe, settings(), picking_settings(SailSettings(threshold=1e9, max_steps=0), 2), 7)
