"""What determines SAIL's ``x_T`` besides the generation settings: :class:`SailSettings` and its defaults."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from sailscope.core.errors import UserInputError

Objective = Literal["paper", "reference"]
OBJECTIVES: tuple[str, ...] = ("paper", "reference")
STOP_RULES: tuple[str, ...] = ("first", "all")

# α defaults. reference: the authors' values (SD 1.x eps models 0.05, SD 2.x v models 0.01).
# paper: the first term's scale differs by orders of magnitude between models (score² at t_0: ~1e-4 for
# the demo model's non-memorized prompts), so with a calibration α is *calibrated* instead (see
# :meth:`sailscope.core.calibration.Calibration.paper_alpha`: the prior equals the median first term at a typical
# non-memorized start). These numbers are only the fallback without a calibration: at SD-like magnitudes
# (‖eps_Δ‖ ≈ 2 at step 1, ‖z‖ = sqrt(d)) they give the prior the reference default's share of the gradient,
# ∇(α'‖z‖²) / ∇‖e‖² = ∇(α‖z‖) / ∇‖e‖  =>  α' ≈ α ‖e‖ / ‖z‖.
DEFAULT_ALPHA = {("reference", "epsilon"): 0.05, ("reference", "v_prediction"): 0.01,
                 ("paper", "epsilon"): 1e-3, ("paper", "v_prediction"): 2e-4}


# relative finite-difference step of the paper objective, by the UNet's dtype (see the module docstring)
AUTO_DELTA = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 1e-1}


def auto_delta(dtype: torch.dtype | None) -> float:
    """The paper objective's relative step for a UNet of this dtype (fp32 = the metrics' ``fd_step``)."""
    return AUTO_DELTA.get(dtype, 1e-3)


def default_alpha(objective: str, prediction_type: str = "epsilon") -> float:
    """The α used when :class:`SailSettings` leaves it unset."""
    pred = "v_prediction" if prediction_type == "v_prediction" else "epsilon"
    return DEFAULT_ALPHA[(objective, pred)]


@dataclass(frozen=True, kw_only=True)
class SailSettings:
    """Everything that determines SAIL's ``x_T`` besides the generation settings (seed, prompt, scheduler).

    ``threshold``: the loss a candidate is optimized down to, a number in the objective's units or ``"auto"``
    (per-model calibration, see :mod:`sailscope.core.calibration`). ``trigger``: the seed's own start is kept
    unchanged when its loss is already ``≤ trigger`` (``"auto"``: the calibrated trigger quantile, or the
    threshold without a calibration; ``None``: the threshold). ``trigger_noises``: memorization is a property of
    the prompt, and a flatter seed of a memorized prompt can still copy, so that start is kept only if its mean
    loss with ``trigger_noises - 1`` fresh probe noises is under the trigger too (1 = the seed alone decides).
    ``sphere``: keep each candidate on the sphere of its start's norm. ``candidates``: 1 = only the seed's own
    ``x_T``; more add distinct noises drawn from ``(seed, candidate_seed, k)``. ``rounds``: when no candidate of
    an image reaches the threshold within ``max_steps``, up to ``rounds - 1`` more rounds start from fresh,
    distinct noises (the authors' loop re-draws its candidates too). ``alpha=None``: the model's calibrated α for
    the paper objective (fallback :func:`default_alpha`), the authors' α for the reference objective;
    ``delta=None`` (paper objective's relative step) picks :func:`auto_delta` for the UNet's dtype.
    """

    objective: Objective = "paper"
    threshold: float | str = "auto"
    trigger: float | str | None = "auto"
    max_steps: int = 6
    candidates: int = 1
    rounds: int = 2
    trigger_noises: int = 4
    lr: float = 0.3
    sphere: bool = True
    alpha: float | None = None
    delta: float | None = None
    candidate_seed: int = 0
    stop: Literal["first", "all"] = "first"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserInputError(f"sail objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if isinstance(self.threshold, str):
            if self.threshold != "auto":
                raise UserInputError(f"sail threshold must be a number or 'auto', got {self.threshold!r}")
        elif isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise UserInputError(f"sail threshold must be a finite number or 'auto', got {self.threshold!r}")
        if isinstance(self.trigger, str):
            if self.trigger != "auto":
                raise UserInputError(f"sail trigger must be a number, 'auto' or unset, got {self.trigger!r}")
        elif self.trigger is not None and (isinstance(self.trigger, bool) or not isinstance(self.trigger, (int, float))
                                           or not math.isfinite(self.trigger)):
            raise UserInputError(f"sail trigger must be a finite number, 'auto' or unset, got {self.trigger!r}")
        if not isinstance(self.sphere, bool):
            raise UserInputError(f"sail sphere must be true or false, got {self.sphere!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or not 0 <= self.max_steps <= 1000:
            raise UserInputError(f"sail max_steps must be an integer in [0, 1000], got {self.max_steps!r}")
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or not 1 <= self.candidates <= 64:
            raise UserInputError(f"sail candidates must be an integer in [1, 64], got {self.candidates!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or not 1 <= self.rounds <= 16:
            raise UserInputError(f"sail rounds must be an integer in [1, 16], got {self.rounds!r}")
        tn = self.trigger_noises
        if isinstance(tn, bool) or not isinstance(tn, int) or not 1 <= tn <= 64:
            raise UserInputError(f"sail trigger_noises must be an integer in [1, 64], got {self.trigger_noises!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UserInputError(f"sail lr must be a finite number > 0, got {self.lr!r}")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha >= 0):
            raise UserInputError(f"sail alpha must be a finite number >= 0 (or unset), got {self.alpha!r}")
        if self.delta is not None and not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta)
                                           and 0 < self.delta <= 1):
            raise UserInputError(f"sail delta must be a number in (0, 1] (or unset), got {self.delta!r}")
        if isinstance(self.candidate_seed, bool) or not isinstance(self.candidate_seed, int) or self.candidate_seed < 0:
            raise UserInputError(f"sail candidate_seed must be an integer >= 0, got {self.candidate_seed!r}")
        if self.stop not in STOP_RULES:
            raise UserInputError(f"sail stop must be one of {', '.join(STOP_RULES)}, got {self.stop!r}")

    def alpha_for(self, prediction_type: str = "epsilon") -> float:
        return float(self.alpha) if self.alpha is not None else default_alpha(self.objective, prediction_type)

    def delta_for(self, dtype: torch.dtype | None = torch.float32) -> float:
        return float(self.delta) if self.delta is not None else auto_delta(dtype)

    def to_dict(self) -> dict:
        return asdict(self)
