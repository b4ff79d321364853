"""Mitigation: SAIL (Sharpness-Aware Initialization for Latent diffusion, docs/math.md §4) and the RTA baseline.

Optimize the initial noise ``x_T`` so that the first sampling step sits in a smooth region of the
conditional density; the prompt and the model stay untouched. Adam runs on the *unit-variance* noise
(the tensor stock diffusers draws for the seed, before ``init_noise_sigma``) and is always fp32, even when
the UNet runs in fp16/bf16 (the UNet sees a cast copy; gradients flow back through the cast).

Notation (docs/math.md §1):

==============  ================================================================================
``z``           the unit-variance initial noise, the optimized variable (``x_T`` in the paper)
``x``           the UNet's VP input at step 1: ``x = c z`` with ``c = init_noise_sigma`` times the
                ``scale_model_input`` factor at ``t_0`` (DDIM: ``c = 1``; Euler: ``sqrt(1+σ_max²)/sqrt(1+σ_max²) = 1``
                up to how the scheduler defines its first sigma)
``sigma``       VP ``sigma_t`` at ``t_0`` (``sqrt(1 - abar)``), about 0.998 for SD at ``t = 981``
``eps_Δ``       ``eps_c(x) - eps_u(x)`` (eps space, what Wen's metric measures)
``sΔ``          ``-eps_Δ / sigma`` (score space)
``α, δ``        prior weight, finite-difference step of the paper objective
==============  ================================================================================

Rooms: :mod:`.settings` (what determines SAIL's ``x_T``), :mod:`.objectives` (the two losses, pure functions of
an eps pair), :mod:`.optimizer` (the search over candidates and rounds, model-agnostic), :mod:`.candidates`
(seeded, distinct noises), :mod:`.pipeline` (the diffusers edge and the host edge), :mod:`.pair` (original vs
mitigated run), :mod:`.picks` (several SAIL results for one seed, each reproducible), :mod:`.rta` (random token
addition, the baseline).
"""
from sailscope.core.mitigation.candidates import PROBE_SALT, CandidateDraws, candidate_seed, draw_candidates
from sailscope.core.mitigation.objectives import (
    EpsPair, ObjectiveValue, evaluate_objective, paper_objective, reference_objective, relative_step,
    retract_to_sphere, tangent_component,
)
from sailscope.core.mitigation.optimizer import RowAdam, SailResult, SailStep, final_result, iter_optimize, optimize
from sailscope.core.mitigation.pair import PairResult, generate_pair, run_pair
from sailscope.core.mitigation.pipeline import (
    FirstStep, diffusers_eps_pair, first_step, infotext_fields, iter_sail, optimize_first_step, prediction_type,
    run_sail,
)
from sailscope.core.mitigation.picks import (
    SailCandidate, candidate_fields, iter_sail_candidates, pick_from_infotext, picking_settings, rank_candidates,
    reproduce_candidate, sail_candidates,
)
from sailscope.core.mitigation.settings import (
    AUTO_DELTA, DEFAULT_ALPHA, OBJECTIVES, STOP_RULES, Objective, SailSettings, auto_delta, default_alpha,
)

__all__ = [
    "SailSettings", "SailResult", "SailStep", "PairResult", "ObjectiveValue", "FirstStep", "RowAdam", "CandidateDraws",
    "EpsPair", "Objective", "paper_objective", "reference_objective", "evaluate_objective", "iter_optimize", "optimize",
    "final_result", "candidate_seed", "draw_candidates", "first_step", "diffusers_eps_pair", "prediction_type",
    "iter_sail", "run_sail", "optimize_first_step", "generate_pair", "run_pair", "infotext_fields",
    "default_alpha", "auto_delta", "relative_step", "retract_to_sphere", "tangent_component",
    "OBJECTIVES", "STOP_RULES", "DEFAULT_ALPHA", "AUTO_DELTA", "PROBE_SALT",
    "SailCandidate", "sail_candidates", "iter_sail_candidates", "rank_candidates", "reproduce_candidate",
    "picking_settings", "candidate_fields", "pick_from_infotext",
]
