"""Several SAIL results for one seed, to pick from; each re-derived from what its PNG records.

SAIL's default search stops at an image's first accepted candidate. To offer a choice, :func:`sail_candidates` runs
the same search with ``candidates = K`` (at least ``k``) and ``stop="all"``: every candidate is optimized until it
reaches the threshold (or its step cap), as in the default search. Candidate 0 is the seed's own noise; the others
start from the seeded, distinct noises of :class:`~sailscope.core.mitigation.candidates.CandidateDraws`, so the
whole search is a deterministic function of (generation settings, SAIL settings). The rows are ranked as the
default search chooses (:attr:`SailResult.row_order`: accepted ones first, by round, Adam step and index; then the
rest by loss) and the first ``k`` with distinct noises are returned.

What reproduces candidate ``index``: the seed and generation settings, the SAIL settings with ``candidates = K``
and ``stop = "all"``, and ``index`` (its row in the search; :func:`candidate_fields` writes them into the
infotext as ``SAIL candidates``, ``SAIL stop`` and ``SAIL pick``). :func:`reproduce_candidate` re-runs the search
and returns that row's noise, bit for bit (tested). The row's start noise seed (``start_seed``) is recorded too,
for information: re-optimizing that noise alone would run the same Adam steps in a batch of one, which need not
match the batched search to the last bit.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

from sailscope.core.errors import UserInputError
from sailscope.core.io import infotext
from sailscope.core.mitigation.optimizer import SailResult, SailStep, final_result
from sailscope.core.mitigation.pipeline import iter_sail
from sailscope.core.mitigation.settings import SailSettings

# infotext keys of a picked candidate (not in core/io/infotext.py's registry yet: they are read by
# :func:`pick_from_infotext` only)
PICK_KEY = infotext.text("pick")  # the candidate's row in the search (0 = the seed's own noise)
STOP_KEY = infotext.text("stop")  # the search's stop rule: "all" for a pick
START_SEED_KEY = infotext.text("pick_start_seed")  # the torch seed of the candidate's start noise (information only)
MAX_PICKS = 16


def picking_settings(sail: SailSettings, k: int) -> SailSettings:
    """The SAIL settings of a search that offers ``k`` candidates: ``candidates = max(k, sail.candidates)``,
    ``stop = "all"`` (everything else as given)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_PICKS:
        raise UserInputError(f"SAIL candidates to pick from must be an integer in [1, {MAX_PICKS}], got {k!r}")
    return replace(sail, candidates=max(int(k), sail.candidates), stop="all")


@dataclass(frozen=True)
class SailCandidate:
    """One SAIL result to pick from: its noise ``x_T`` ``(1, C, H, W)``, unit-variance like the seed's, and what
    re-derives it (``sail`` + ``index``)."""

    index: int  # row of the search: what ``SAIL pick`` records (0 = the seed's own noise)
    rank: int  # 0 = what the default rule would choose among these rows
    x_T: Tensor
    converged: bool
    loss: float
    steps: int
    round: int  # 0 = the first candidates, r = the r-th re-draw
    start_seed: int | None  # torch seed of its start noise (None: the seed's stock noise)
    sail: SailSettings  # the search's settings (candidates = K, stop = "all")

    def to_dict(self) -> dict:
        return {"index": self.index, "rank": self.rank, "converged": self.converged, "loss": self.loss,
                "steps": self.steps, "round": self.round, "start_seed": self.start_seed, "sail": self.sail.to_dict()}


def rank_candidates(result: SailResult, k: int) -> list[SailCandidate]:
    """The ``k`` best rows of a one-image search with distinct noises, best first."""
    if result.row_x_T is None:
        raise UserInputError("this SAIL result does not carry its candidate rows")
    if result.x_T.shape[0] != 1:
        raise UserInputError(f"SAIL candidates are picked for one image at a time, got {result.x_T.shape[0]}")
    seen: set[bytes] = set()
    out: list[SailCandidate] = []
    for r in result.row_order:
        z = result.row_x_T[r: r + 1]
        key = z.detach().cpu().contiguous().numpy().tobytes()
        if key in seen:
            continue
        seen.add(key)
        out.append(SailCandidate(index=r, rank=len(out), x_T=z.clone(), converged=bool(result.row_converged[r]),
                                 loss=float(result.row_loss[r]), steps=int(result.row_steps[r]),
                                 round=int(result.row_round[r]), start_seed=result.candidate_seeds[r],
                                 sail=result.settings))
        if len(out) == k:
            break
    return out


def iter_sail_candidates(pipe: Any, settings: Any, sail: SailSettings, k: int = 4, *,
                         cancel: Callable[[], bool] | Any | None = None) -> Iterator[SailStep | SailResult | list]:
    """Stream the picking search: its :class:`SailStep` s and :class:`SailResult`, then the ranked
    ``list[SailCandidate]``. ``settings`` must be one image (``num_images = 1``)."""
    if getattr(settings, "num_images", 1) != 1:
        raise UserInputError("SAIL candidates are picked for one image at a time (num_images = 1)")
    result = None
    for item in iter_sail(pipe, settings, picking_settings(sail, k), cancel=cancel):
        yield item
        result = item
    assert isinstance(result, SailResult)
    yield rank_candidates(result, k)


def sail_candidates(pipe: Any, settings: Any, sail: SailSettings, k: int = 4,
                    **kwargs: Any) -> tuple[list[SailCandidate], SailResult]:
    """The ``k`` best distinct SAIL results for one seed, and the search's result."""
    items = list(iter_sail_candidates(pipe, settings, sail, k, **kwargs))
    return items[-1], items[-2]


def reproduce_candidate(pipe: Any, settings: Any, sail: SailSettings, index: int, **kwargs: Any) -> Tensor:
    """Candidate ``index``'s noise ``(1, C, H, W)`` from the settings its PNG records (``sail``: the search's,
    with ``candidates = K`` and ``stop = "all"``)."""
    if getattr(settings, "num_images", 1) != 1:
        raise UserInputError("a SAIL pick is reproduced for one image (num_images = 1)")
    result = final_result(iter_sail(pipe, settings, sail, **kwargs))
    if not 0 <= int(index) < result.row_x_T.shape[0]:
        raise UserInputError(f"SAIL pick {index} is not a row of this search ({result.row_x_T.shape[0]} rows)")
    return result.row_x_T[int(index): int(index) + 1].clone()


def candidate_fields(candidate: SailCandidate, result: SailResult) -> dict[str, str]:
    """The infotext of a picked candidate's image: the search's settings (``SAIL candidates`` = K), the candidate's
    own result, and the pick keys."""
    s = candidate.sail
    out = infotext.fields(
        sail="on", objective=result.objective, threshold=result.threshold,
        trigger="none" if result.trigger is None else result.trigger, alpha=result.alpha, lr=s.lr,
        max_steps=s.max_steps, candidates=s.candidates, rounds=s.rounds, sphere=s.sphere, steps=candidate.steps,
        converged=candidate.converged, loss=candidate.loss, round=candidate.round + 1,
        threshold_source=result.threshold_source, trigger_source=result.trigger_source,
    )
    out[STOP_KEY] = s.stop
    out[PICK_KEY] = str(candidate.index)
    if candidate.start_seed is not None:
        out[START_SEED_KEY] = str(candidate.start_seed)
    return out


def pick_from_infotext(params: Mapping[str, Any]) -> tuple[SailSettings, int] | None:
    """A parsed infotext (key -> text) -> ``(the search's SAIL settings, pick index)``, or None when it records no
    pick. Only the settings the infotext records are restored; the rest stay at their defaults (the threshold and
    trigger as numbers, as they were resolved)."""
    if PICK_KEY not in params:
        return None
    try:
        index = int(str(params[PICK_KEY]).strip())
    except ValueError:
        return None
    known = infotext.parse_settings(params)
    kwargs: dict[str, Any] = {name: known[name] for name in
                              ("objective", "threshold", "trigger", "alpha", "lr", "max_steps", "candidates",
                               "rounds", "sphere") if name in known}
    kwargs["stop"] = str(params.get(STOP_KEY, "all")).strip() or "all"
    return SailSettings(**kwargs), index


__all__ = ["PICK_KEY", "STOP_KEY", "START_SEED_KEY", "SailCandidate", "picking_settings", "rank_candidates",
           "iter_sail_candidates", "sail_candidates", "reproduce_candidate", "candidate_fields", "pick_from_infotext"]
