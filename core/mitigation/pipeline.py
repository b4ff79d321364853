"""SAIL at the edges: a diffusers pipeline (:func:`iter_sail`) and a host's guided score (:func:`optimize_first_step`).

Both turn a model into an eps pair at the first sampling step, draw the candidates and resolve α, δ and the
thresholds, then hand over to :func:`~sailscope.core.mitigation.optimizer.iter_optimize`.
"""
from __future__ import annotations

import contextlib

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from sailscope.core.calibration import resolve_alpha, resolve_threshold, resolve_trigger
from sailscope.core.errors import UserInputError
from sailscope.core.io import infotext
from sailscope.core.mitigation.candidates import CandidateDraws
from sailscope.core.mitigation.objectives import EpsPair
from sailscope.core.mitigation.optimizer import SailResult, SailStep, final_result, iter_optimize
from sailscope.core.mitigation.settings import SailSettings
from sailscope.core.sampling import check_settings_for, encode, initial_noise, noise_level, scheduled
from sailscope.core.score import Conditioning, DiffusersScoreModel, as_conditioning


@dataclass(frozen=True)
class FirstStep:
    """The UNet's view of ``x_T``: timestep, noise level and the scale from unit noise to the VP input."""

    t: Tensor
    abar: float
    sigma: float
    scale: float  # x = scale * z


def first_step(pipe: Any, settings: Any) -> FirstStep:
    """``t_0``, ``abar`` and ``x = scale · z`` for the settings' scheduler (minds ``init_noise_sigma``)."""
    scheduler = scheduled(pipe, settings)
    t0 = scheduler.timesteps[0]
    probe = torch.full((1, 1), float(scheduler.init_noise_sigma), dtype=torch.float32)
    scale = float(scheduler.scale_model_input(probe, t0).reshape(-1)[0])
    abar = noise_level(scheduler, DiffusersScoreModel.from_pipeline(pipe), 0, t0)
    return FirstStep(t=t0, abar=float(abar), sigma=(1.0 - float(abar)) ** 0.5, scale=scale)


def diffusers_eps_pair(pipe: Any, first: FirstStep, cond: Tensor | Conditioning, uncond: Tensor | Conditioning) -> EpsPair:
    """``x -> (eps_c, eps_u)`` at step 1 for any batch size (embeddings broadcast), fp32 out."""
    model = DiffusersScoreModel.from_pipeline(pipe)
    device = model.device
    c1, u1 = as_conditioning(cond)[:1], as_conditioning(uncond)[:1]
    t = first.t.to(device) if torch.is_tensor(first.t) else first.t

    def eps_pair(x: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        return model.eps_pair_raw(x.to(device), t, c1.broadcast(b), u1.broadcast(b),
                                  abar=first.abar)

    return eps_pair


def prediction_type(pipe: Any) -> str:
    return pipe.scheduler.config.get("prediction_type", "epsilon")


def iter_sail(
    pipe: Any,
    settings: Any,
    sail: SailSettings,
    *,
    cancel: Callable[[], bool] | Any | None = None,
    checkpointing: bool = True,
) -> Iterator[SailStep | SailResult]:
    """SAIL for a pipeline and :class:`~sailscope.core.sampling.GenerationSettings`: progress, then result.

    Candidate 0 of image ``i`` is exactly the noise stock diffusers draws for seed ``seed + i``. ``checkpointing``:
    the UNet recomputes its blocks' activations in the backward pass instead of keeping them (see
    :func:`gradient_checkpointing`; docs/performance.md has the measured memory and time).
    """
    # 1. Check inputs
    if not isinstance(sail, SailSettings):
        raise UserInputError(f"sail must be SailSettings, got {type(sail).__name__}")
    check_settings_for(pipe, settings)
    alpha, alpha_source = resolve_alpha(pipe, sail)
    delta = sail.delta_for(pipe.unet.dtype)
    # 2. Threshold (before any model work: a missing calibration fails fast)
    threshold, source = resolve_threshold(pipe, sail, alpha=alpha, delta=delta)
    trigger, trigger_source = resolve_trigger(pipe, sail, alpha=alpha, delta=delta)
    # 3. Embeddings and first-step geometry
    device = pipe._execution_device
    with torch.no_grad():
        cond, uncond, _ = encode(pipe, replace(settings, num_images=1), device)
    first = first_step(pipe, settings)
    # 4. Candidates
    stock = initial_noise(pipe, settings)
    seeds = [settings.seed + i for i in range(settings.num_images)]
    draws = CandidateDraws(stock, seeds, sail)
    z0, groups, row_seeds = draws.first()
    # 5. Optimize
    with gradient_checkpointing(pipe.unet, checkpointing):
        yield from iter_optimize(
            diffusers_eps_pair(pipe, first, cond, uncond), z0.to(device), sail, sigma=first.sigma, threshold=threshold,
            alpha=alpha, scale=first.scale, candidate_image=groups, candidate_seeds=row_seeds,
            threshold_source=source, delta=delta, alpha_source=alpha_source, trigger=trigger,
            trigger_source=trigger_source, redraw=draws.redraw, probe=draws.probe, cancel=cancel,
        )


@contextlib.contextmanager
def gradient_checkpointing(unet: Any, enabled: bool = True) -> Iterator[None]:
    """Diffusers' gradient checkpointing on ``unet`` while the block runs (restored after): the backward pass
    recomputes each block's activations instead of keeping them, so SAIL's peak memory is about one block's
    activations over the weights, for about one more forward pass of time. Models without support run as they are."""
    if not enabled or not getattr(unet, "_supports_gradient_checkpointing", False):
        yield
        return
    was_on = bool(getattr(unet, "is_gradient_checkpointing", False))
    unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if not was_on:
            unet.disable_gradient_checkpointing()


def run_sail(pipe: Any, settings: Any, sail: SailSettings, **kwargs: Any) -> SailResult:
    """Consume :func:`iter_sail`."""
    return final_result(iter_sail(pipe, settings, sail, **kwargs))


def infotext_fields(result: Any) -> dict:
    """Infotext of a mitigated image (image 0 of the result): its settings and result, core/io/infotext.py's keys."""
    if isinstance(result, SailResult):
        s = result.settings
        return infotext.fields(
            sail="on", objective=result.objective, threshold=result.threshold,
            trigger="none" if result.trigger is None else result.trigger, alpha=result.alpha, lr=s.lr,
            max_steps=s.max_steps, candidates=s.candidates, rounds=s.rounds, sphere=s.sphere,
            steps=result.steps[0], converged=result.converged[0], start_loss=result.initial_loss[0],
            loss=result.loss[0], round=(result.chosen_round or [0])[0] + 1,
            trigger_overruled=bool((result.trigger_overruled or [False])[0]),
            threshold_source=result.threshold_source, trigger_source=result.trigger_source,
        )
    return infotext.fields(rta_tokens=result.rta.tokens, rta_prompt=result.prompt)


def optimize_first_step(
    eps_pair: EpsPair,
    z0: Tensor,
    settings: SailSettings,
    *,
    sigma: float,
    scale: float,
    threshold: float,
    threshold_source: str = "host setting",
    seed: int | None = None,
    prediction_type: str = "epsilon",
    model_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cancel: Callable[[], bool] | Any | None = None,
) -> SailResult:
    """SAIL for one image from its eps pair at the first sampling step (a host's guided score), ``z0`` its unit
    noise ``(1, ...)``: candidates drawn from ``seed``, α by the prediction type, δ by the model's dtype.

    ``model_dtype`` unknown: one evaluation tells it (an eps pair that casts to fp32 may report the model's own
    dtype in ``eps_pair.seen["dtype"]``).
    """
    device = torch.device(device) if device is not None else z0.device
    z0 = z0.detach().to("cpu", torch.float32)
    groups, row_seeds = [0], [None]
    if settings.candidates > 1:
        if seed is None:
            raise UserInputError("SAIL candidates > 1 need the images' seeds")
        z0, groups, row_seeds = CandidateDraws(z0, [int(seed)], settings).first()
    delta = None
    if settings.objective == "paper":
        if model_dtype is None:
            with torch.no_grad():
                out = eps_pair(z0[:1].to(device) * scale)[0]
            model_dtype = getattr(eps_pair, "seen", {}).get("dtype", out.dtype)
        delta = settings.delta_for(model_dtype)
    return final_result(iter_optimize(
        eps_pair, z0.to(device), settings, sigma=sigma, threshold=threshold, alpha=settings.alpha_for(prediction_type),
        scale=scale, candidate_image=groups, candidate_seeds=row_seeds, threshold_source=threshold_source,
        delta=delta, cancel=cancel,
    ))
