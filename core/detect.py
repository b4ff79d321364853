"""Batch memorization detection: per-prompt scores of one or several detectors, plus ROC statistics.

Score of a prompt = mean over ``n`` seeds (and over the first ``k`` steps) of the per-step metric,
as in the paper's Table 1 (sharpness: step 1, n = 4; Wen: 1 or 50 steps).

Several detectors in one pass (``detectors=``): the record gets one column per detector, all from the same
first-step evaluations: ``wen`` (free: the CFG step's own pair), ``sharpness`` (one more guided evaluation with
``hvp="fd"``, one JVP with ``"exact"``) and ``anisotropy`` with its two terms ``anisotropy_norm`` (= Wen's metric
at step 1, free) and ``anisotropy_alignment`` (one guided evaluation of the same latent at a low-noise timestep;
docs/math.md §6).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from sailscope.core.errors import UserInputError
from sailscope.core.metrics import ANISOTROPY_AUTHOR_WEIGHTS, AlignmentOver, anisotropy, low_noise_timestep
from sailscope.core.sampling import GenerationSettings, StepContext, run_generation

Metric = Literal["sharpness", "wen", "anisotropy"]
METRICS = ("sharpness", "wen", "anisotropy")
# detectors that can share one pass, in column order
DETECTORS = ("wen", "sharpness", "anisotropy")
# the anisotropy detector's (norm, angle) weights by default: the authors' SD 1.x choice (docs/math.md §6)
DEFAULT_ANISOTROPY_WEIGHTS: tuple[float, float] = ANISOTROPY_AUTHOR_WEIGHTS["sd1"]


def risk_level(sharpness: float | None, threshold: float | None) -> str:
    """The one memorization-risk rule: ``high`` when step-1 sharpness >= the detection threshold, ``low`` below
    it, ``unknown`` when either is missing or not finite. App, CLI, reports and infotext all use it."""
    if sharpness is None or threshold is None:
        return "unknown"
    sharpness, threshold = float(sharpness), float(threshold)
    if not (math.isfinite(sharpness) and math.isfinite(threshold)):
        return "unknown"
    return "high" if sharpness >= threshold else "low"


def verdict(sharpness: float | None, threshold: float | None, *, mismatch: Sequence[str] = (),
            noise: "NoiseCheck | None" = None) -> str:
    """A run's verdict: :func:`risk_level`'s ``high``/``low``/``unknown``, except ``uncalibrated`` when the run's
    settings differ from the calibration's (``mismatch``: no verdict), and ``sharp-noise`` when it is high at a
    starting noise where ordinary prompts reach the alarm level too (:class:`NoiseCheck`: no verdict)."""
    level = risk_level(sharpness, threshold)
    if level == "unknown":
        return level
    if mismatch:
        return "uncalibrated"
    if level == "high" and noise is not None and noise.sharp_noise:
        return "sharp-noise"
    return level


NOISE_CHECK_PROMPTS = 4  # ordinary prompts scored at a run's own starting noise when its verdict is high


@dataclass(frozen=True)
class NoiseCheck:
    """Step-1 sharpness of ordinary prompts (the calibration's own) at one run's starting noise and settings.

    On a small model some starting noises make the first step sharp for every prompt (the demo: about 2 seeds in
    16, docs/detection.md "Noises that are sharp for every prompt"). Where the ordinary prompts' median reaches the
    alarm level, a high step-1 sharpness at that noise says little about the prompt: ``sharp_noise``."""

    prompts: tuple[str, ...]
    sharpness: tuple[float, ...]
    threshold: float

    @property
    def median(self) -> float:
        return float(np.median(self.sharpness))

    @property
    def sharp_noise(self) -> bool:
        return risk_level(self.median, self.threshold) == "high"

    def to_dict(self) -> dict:
        return {"prompts": list(self.prompts), "sharpness": list(self.sharpness), "median": self.median,
                "threshold": self.threshold, "sharp_noise": self.sharp_noise}


def noise_check(pipe: Any, settings: GenerationSettings, prompts: Sequence[str], threshold: float,
                cancel: Any = None) -> NoiseCheck:
    """:class:`NoiseCheck` of ``settings``' starting noise: each prompt sampled one step with ``settings`` (seed,
    steps, guidance, scheduler, size, negative prompt) and its step-1 sharpness as the run records it."""
    if not prompts:
        raise UserInputError("the noise check needs at least one ordinary prompt")
    values = []
    for prompt in prompts:
        one = replace(settings, prompt=prompt, num_images=1, sharpness_at="first")
        result = run_generation(pipe, one, stop_after=1, cancel=cancel)
        values.append(float(result.records[0].sharpness[0]))
    return NoiseCheck(tuple(prompts), tuple(values), float(threshold))


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
    # extra detector columns (``detectors=``), e.g. {"wen": ..., "sharpness": ..., "anisotropy": ...}; each a mean
    # over the seeds. ``to_dict`` puts them next to the fields above; without ``detectors`` there are none.
    columns: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("columns"))
        return d


RECORD_FIELDS = ("prompt", "metric", "score", "per_seed", "seeds", "first_steps", "hvp", "seconds")


def parse_detectors(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"all"``, ``"none"``, ``"wen,sharpness"`` or a list -> detector names in :data:`DETECTORS` order."""
    if value is None:
        return ()
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if names in (["none"], []):
        return ()
    if names == ["all"]:
        return DETECTORS
    bad = [n for n in names if n not in DETECTORS]
    if bad:
        raise UserInputError(f"unknown detector(s) {', '.join(bad)}; choose from {', '.join(DETECTORS)}, all or none")
    return tuple(d for d in DETECTORS if d in names)


def _anisotropy_probe(weights: tuple[float, float], over: AlignmentOver, from_end: int):
    """A step-1 probe: the anisotropy detector on the step's own latent and CFG pair (norm term free), plus one
    guided evaluation of the same latent at the low-noise timestep."""

    def probe(ctx: StepContext) -> dict | None:
        if ctx.step != 1:
            return None
        t_lo = low_noise_timestep(ctx.timesteps, from_end)
        res = anisotropy(ctx.guided, ctx.guided_at(t_lo), ctx.x, eps_high=(ctx.eps_c, ctx.eps_u), over=over,
                         norm_weight=weights[0], alignment_weight=weights[1])
        return {"anisotropy": {"t_low": t_lo, "norm": res.guidance_norm.tolist(),
                               "alignment": res.alignment.tolist(), "score": res.score.tolist()}}

    return probe


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
    detectors: str | Sequence[str] | None = None,
    anisotropy_weights: tuple[float, float] = DEFAULT_ANISOTROPY_WEIGHTS,
    anisotropy_over: AlignmentOver = "sample",
    low_noise_from_end: int = 3,
) -> DetectionScore:
    """Score one prompt; seeds ``0..n-1`` (or the given list) run as one batch where they are consecutive.

    ``metric`` gives ``score``/``per_seed``; ``detectors`` (names from :data:`DETECTORS`, ``"all"``) adds a column
    per detector from the same pass (the metric's column equals ``score``). ``wen`` and ``sharpness`` average the
    first ``first_steps`` steps; ``anisotropy`` is a step-1 detector whatever ``first_steps`` is:
    ``w_n * anisotropy_norm + w_a * anisotropy_alignment`` with ``anisotropy_weights = (w_n, w_a)``.
    """
    if metric not in METRICS:
        raise UserInputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    wanted = parse_detectors(detectors)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise UserInputError("seeds must be >= 1")
    if not 1 <= first_steps <= steps:
        raise UserInputError(f"first_steps must be in 1..{steps}, got {first_steps}")
    need = set(wanted) | {metric}
    start = time.perf_counter()
    consecutive = seed_list == list(range(seed_list[0], seed_list[0] + len(seed_list)))
    groups = [(seed_list[0], len(seed_list))] if consecutive else [(s, 1) for s in seed_list]
    probes = ([_anisotropy_probe(tuple(anisotropy_weights), anisotropy_over, low_noise_from_end)]
              if "anisotropy" in need else [])
    per: dict[str, list[float]] = {k: [] for k in ("wen", "sharpness", "anisotropy", "anisotropy_norm",
                                                   "anisotropy_alignment")}
    for seed, n in groups:
        settings = GenerationSettings(
            prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance,
            scheduler=scheduler, num_images=n, hvp=hvp,
            sharpness_at=tuple(range(1, first_steps + 1)) if "sharpness" in need else "none",
        )
        result = run_generation(pipe, settings, stop_after=first_steps, probes=probes)
        per["wen"].extend(np.array([r.wen for r in result.records], dtype=float).mean(axis=0).tolist())
        if "sharpness" in need:  # (steps, n) -> per seed
            per["sharpness"].extend(np.array([r.sharpness for r in result.records], dtype=float).mean(axis=0).tolist())
        if "anisotropy" in need:
            a = result.records[0].extras["anisotropy"]
            per["anisotropy"].extend(a["score"])
            per["anisotropy_norm"].extend(a["norm"])
            per["anisotropy_alignment"].extend(a["alignment"])
    columns: dict[str, float] = {}
    for name in wanted:
        keys = (name, "anisotropy_norm", "anisotropy_alignment") if name == "anisotropy" else (name,)
        columns.update({k: float(np.mean(per[k])) for k in keys})
    return DetectionScore(
        prompt=prompt, metric=metric, score=float(np.mean(per[metric])), per_seed=per[metric], seeds=seed_list,
        first_steps=first_steps, hvp=hvp if "sharpness" in need else "none", seconds=time.perf_counter() - start,
        columns=columns,
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
