"""Batch memorization detection: step-1 sharpness or Wen's metric per prompt, plus ROC statistics.

Score of a prompt = mean over ``n`` seeds (and over the first ``k`` steps) of the per-step metric,
as in the paper's Table 1 (sharpness: step 1, n = 4; Wen: 1 or 50 steps).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from sailscope.core.errors import UserInputError
from sailscope.core.sampling import GenerationResult, GenerationSettings, generate

Metric = Literal["sharpness", "wen"]


def risk_level(sharpness: float | None, threshold: float | None) -> str:
    """The one memorization-risk rule: ``high`` when step-1 sharpness >= the detection threshold, ``low`` below
    it, ``unknown`` when either is missing or not finite. App, CLI, reports and infotext all use it."""
    if sharpness is None or threshold is None:
        return "unknown"
    sharpness, threshold = float(sharpness), float(threshold)
    if not (math.isfinite(sharpness) and math.isfinite(threshold)):
        return "unknown"
    return "high" if sharpness >= threshold else "low"


@dataclass
class DetectionScore:
    prompt: str
    metric: str
    score: float  # mean over seeds (and steps)
    per_seed: list[float]
    seeds: list[int]
    first_steps: int
    hvp: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def score_prompt(
    pipe: Any,
    prompt: str,
    *,
    seeds: int | Sequence[int] = 4,
    first_steps: int = 1,
    metric: Metric = "sharpness",
    hvp: Literal["exact", "fd"] = "fd",
    steps: int = 50,
    guidance: float = 7.5,
    scheduler: str = "ddim",
    negative_prompt: str = "",
) -> DetectionScore:
    """Score one prompt; seeds ``0..n-1`` (or the given list) run as one batch where they are consecutive."""
    if metric not in ("sharpness", "wen"):
        raise UserInputError(f"metric must be sharpness or wen, got {metric!r}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise UserInputError("seeds must be >= 1")
    if not 1 <= first_steps <= steps:
        raise UserInputError(f"first_steps must be in 1..{steps}, got {first_steps}")
    start = time.perf_counter()
    consecutive = seed_list == list(range(seed_list[0], seed_list[0] + len(seed_list)))
    groups = [(seed_list[0], len(seed_list))] if consecutive else [(s, 1) for s in seed_list]
    per_seed: list[float] = []
    for seed, n in groups:
        settings = GenerationSettings(
            prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance,
            scheduler=scheduler, num_images=n, hvp=hvp,
            sharpness_at=tuple(range(1, first_steps + 1)) if metric == "sharpness" else "none",
        )
        result = None
        for item in generate(pipe, settings, stop_after=first_steps):
            if isinstance(item, GenerationResult):
                result = item
        values = np.array([r.sharpness if metric == "sharpness" else r.wen for r in result.records], dtype=float)
        per_seed.extend(values.mean(axis=0).tolist())  # (steps, n) -> per seed
    return DetectionScore(
        prompt=prompt, metric=metric, score=float(np.mean(per_seed)), per_seed=per_seed, seeds=seed_list,
        first_steps=first_steps, hvp=hvp if metric == "sharpness" else "none", seconds=time.perf_counter() - start,
    )


def score_prompts(pipe: Any, prompts: Iterable[str], skip: Iterable[str] = (), **kwargs: Any) -> Iterator[DetectionScore]:
    """Stream :func:`score_prompt` over prompts, skipping those already scored (resume)."""
    done = set(skip)
    for prompt in prompts:
        if prompt in done:
            continue
        done.add(prompt)
        yield score_prompt(pipe, prompt, **kwargs)


# ----------------------------------------------------------------------------------------------
# ROC statistics (memorized = positive, higher score = more memorized)
# ----------------------------------------------------------------------------------------------
def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with ties handled as one ROC point, like ``sklearn.metrics.roc_curve``."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    if s.shape != y.shape or s.ndim != 1:
        raise UserInputError("scores and labels must be 1-D sequences of the same length")
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        raise UserInputError("ROC needs at least one memorized (1) and one non-memorized (0) prompt")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[idx]
    fps = 1 + idx - tps
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    thr = np.r_[np.inf, s[idx]]
    return fpr, tpr, thr


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


def tpr_at_fpr(scores: Sequence[float], labels: Sequence[int], max_fpr: float = 0.01) -> float:
    """TPR at the last ROC point whose FPR < ``max_fpr`` (the convention of the prior code, docs/math.md §2)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    ok = np.where(fpr < max_fpr)[0]
    return float(tpr[ok[-1]]) if ok.size else 0.0
