"""The one model contract: a guided eps/score pair at a fixed timestep, adapted once at the edge.

Notation (docs/math.md §1, DDPM/"VP" variables, what every metric in SAIL Scope is reported in):

==========  =====================================================================
``x``       the VP latent ``x_t = sqrt(abar_t) x_0 + sigma_t eps`` (the UNet's input after
            ``scheduler.scale_model_input``; k-diffusion/Euler states are divided by sqrt(1+sigma_k^2))
``sigma``   ``sigma_t = sqrt(1 - abar_t)``
``eps``     noise prediction; ``eps_c`` conditional, ``eps_u`` unconditional (empty prompt)
``s``       score ``s = -eps / sigma_t``; ``score_delta = s_c - s_u = -(eps_c - eps_u) / sigma_t``
``H``       Jacobian of the score w.r.t. ``x`` (Hessian of log p_t); ``HΔ = H_c - H_u``
==========  =====================================================================

Every consumer (metrics, spectra, SAIL, host adapters) works on a :class:`GuidedScore`: a function
``x -> (eps_c, eps_u)`` evaluated in *one* batched model call, plus ``sigma_t``. Diffusers, A1111 and
ComfyUI parameterizations (eps, v, x0; t vs k-diffusion sigma) are converted to it here and only here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch
from torch import Tensor

PredictionType = Literal["epsilon", "v_prediction", "sample"]
EpsPairFn = Callable[[Tensor], "tuple[Tensor, Tensor]"]


# ----------------------------------------------------------------------------------------------
# Parameterization conversions (small pure functions)
# ----------------------------------------------------------------------------------------------
def eps_from_prediction(
    model_output: Tensor, x: Tensor, abar: Tensor | float, prediction_type: PredictionType
) -> Tensor:
    """Convert a model output in ``prediction_type`` to eps, at the VP latent ``x`` with ``abar_t``."""
    abar = torch.as_tensor(abar, dtype=model_output.dtype, device=model_output.device)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":  # v = alpha eps - sigma x0  =>  eps = alpha v + sigma x
        return alpha * model_output + sigma * x
    if prediction_type == "sample":  # x = alpha x0 + sigma eps
        return (x - alpha * model_output) / sigma
    raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")


def score_from_eps(eps: Tensor, sigma: Tensor | float) -> Tensor:
    """``s = -eps / sigma_t`` (Tweedie)."""
    return -eps / sigma


def eps_from_denoised(x_k: Tensor, denoised: Tensor, sigma_k: Tensor | float) -> Tensor:
    """k-diffusion hosts (A1111, ComfyUI): ``x_k = x0 + sigma_k eps`` with denoiser output ``x0``."""
    return (x_k - denoised) / sigma_k


def sigma_vp_from_k(sigma_k: float | Tensor) -> float:
    """k-diffusion noise level -> VP ``sigma_t = sigma_k / sqrt(1 + sigma_k^2)`` (docs/math.md §1)."""
    sk = float(torch.as_tensor(sigma_k, dtype=torch.float64).reshape(-1)[0])
    return sk / math.sqrt(1.0 + sk * sk)


def vp_from_k(x_k: Tensor, sigma_k: float) -> Tensor:
    """k-diffusion state -> VP latent: ``x_vp = x_k / sqrt(1 + sigma_k^2)``."""
    return x_k / math.sqrt(1.0 + float(sigma_k) ** 2)


def k_from_vp(x_vp: Tensor, sigma_k: float) -> Tensor:
    """VP latent -> k-diffusion state: ``x_k = x_vp * sqrt(1 + sigma_k^2)``."""
    return x_vp * math.sqrt(1.0 + float(sigma_k) ** 2)


def k_sigma_from_abar(abar: Tensor | float) -> Tensor:
    """``sigma_k = sqrt((1 - abar) / abar)``."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    return ((1 - abar) / abar).sqrt()


def abar_at(alphas_cumprod: Tensor, t: Tensor | float | int) -> Tensor:
    """``abar_t`` at a (possibly fractional) timestep, interpolating k-sigma linearly like diffusers' Euler."""
    t = float(torch.as_tensor(t).reshape(-1)[0])
    ac = alphas_cumprod.detach().to(torch.float64).cpu()
    if t < 0 or t > len(ac) - 1:
        raise ValueError(f"timestep {t} outside the schedule [0, {len(ac) - 1}]")
    lo = int(t)
    if t == lo:
        return ac[lo]
    hi = min(lo + 1, len(ac) - 1)
    sk = k_sigma_from_abar(ac[lo]) + (t - lo) * (k_sigma_from_abar(ac[hi]) - k_sigma_from_abar(ac[lo]))
    return 1.0 / (1.0 + sk**2)


# ----------------------------------------------------------------------------------------------
# The contract
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuidedScore:
    """Conditional and unconditional eps at one noise level, as a function of the VP latent.

    ``eps_pair(x)`` maps ``x`` of shape ``(B, *latent)`` to ``(eps_c, eps_u)`` of the same shape in fp32,
    using one batched model call. ``sigma`` is ``sigma_t`` (a float, or a ``(B,)`` tensor).
    Everything in :mod:`sailscope.core.metrics`, ``spectra`` and ``sail`` consumes this.
    """

    eps_pair: EpsPairFn
    sigma: float | Tensor
    t: float = 0.0

    def sigma_like(self, x: Tensor) -> Tensor:
        """``sigma_t`` broadcastable against ``x``."""
        s = torch.as_tensor(self.sigma, dtype=x.dtype, device=x.device)
        return s.reshape(-1, *([1] * (x.dim() - 1))) if s.dim() == 1 else s

    def score_pair(self, x: Tensor) -> tuple[Tensor, Tensor]:
        eps_c, eps_u = self.eps_pair(x)
        sigma = self.sigma_like(x)
        return score_from_eps(eps_c, sigma), score_from_eps(eps_u, sigma)

    def score_delta(self, x: Tensor) -> Tensor:
        """``sΔ(x) = s(x,c) - s(x,∅)``."""
        s_c, s_u = self.score_pair(x)
        return s_c - s_u

    def score(self, x: Tensor, which: Literal["cond", "uncond", "delta"] = "delta") -> Tensor:
        """One of ``s(x,c)``, ``s(x,∅)`` or ``sΔ(x)``."""
        s_c, s_u = self.score_pair(x)
        if which == "cond":
            return s_c
        if which == "uncond":
            return s_u
        if which == "delta":
            return s_c - s_u
        raise ValueError(f"which must be cond, uncond or delta, got {which!r}")


# ----------------------------------------------------------------------------------------------
# Diffusers edge
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conditioning:
    """One side of classifier-free guidance (the prompt, or the unconditional/negative prompt), one row per image:
    the text encoder's hidden states and the model family's added conditioning (SDXL: the pooled text embedding
    ``text_embeds`` and the size/crop ``time_ids``; SD 1.x/2.x: none). ``core/families.py`` builds it."""

    hidden: Tensor
    added: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.hidden.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    def __getitem__(self, rows: slice) -> "Conditioning":
        """Rows of every tensor (``cond[i:i + 1]``)."""
        return Conditioning(self.hidden[rows], {k: v[rows] for k, v in self.added.items()})

    def broadcast(self, n: int) -> "Conditioning":
        """A one-row conditioning repeated for ``n`` rows (a view, no copy)."""
        if self.batch != 1:
            raise ValueError(f"broadcast needs one row, got {self.batch}")
        return Conditioning(self.hidden.expand(n, *self.hidden.shape[1:]),
                            {k: v.expand(n, *v.shape[1:]) for k, v in self.added.items()})


def as_conditioning(c: Tensor | Conditioning) -> Conditioning:
    """Text hidden states alone (SD 1.x/2.x) or a full :class:`Conditioning`."""
    return c if isinstance(c, Conditioning) else Conditioning(c)


def cfg_unet_inputs(uncond: Tensor | Conditioning, cond: Tensor | Conditioning, dtype: torch.dtype | None = None) -> dict:
    """The UNet's keyword inputs for a ``cat([x_u, x_c])`` batch, in diffusers' order (uncond first):
    ``encoder_hidden_states`` and, for families that have it, ``added_cond_kwargs``."""
    u, c = as_conditioning(uncond), as_conditioning(cond)
    hidden = torch.cat([u.hidden, c.hidden])
    added = {k: torch.cat([u.added[k], c.added[k]]) for k in c.added}
    return {"encoder_hidden_states": hidden if dtype is None else hidden.to(dtype),
            "added_cond_kwargs": added or None}


def unet_inputs(side: Tensor | Conditioning, dtype: torch.dtype | None = None) -> dict:
    """The UNet's keyword inputs for one side alone (no CFG batch)."""
    c = as_conditioning(side)
    return {"encoder_hidden_states": c.hidden if dtype is None else c.hidden.to(dtype),
            "added_cond_kwargs": dict(c.added) or None}


class DiffusersScoreModel:
    """Adapts a diffusers ``UNet2DConditionModel`` + scheduler config to :class:`GuidedScore`.

    The UNet sees ``cat([x, x])`` with ``cat([uncond, cond])`` embeddings, the order diffusers'
    pipelines use, so the numbers match a stock CFG step. Inputs/outputs are fp32 whatever the UNet dtype.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        alphas_cumprod: Tensor,
        prediction_type: PredictionType = "epsilon",
    ) -> None:
        self.unet = unet
        self.alphas_cumprod = alphas_cumprod.detach().to(torch.float64).cpu()
        self.prediction_type = prediction_type

    @classmethod
    def from_pipeline(cls, pipe: Any) -> "DiffusersScoreModel":
        sched = pipe.scheduler
        return cls(pipe.unet, sched.alphas_cumprod, sched.config.get("prediction_type", "epsilon"))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def abar(self, t: Tensor | float | int) -> float:
        return float(abar_at(self.alphas_cumprod, t))

    def sigma(self, t: Tensor | float | int) -> float:
        """VP ``sigma_t`` at timestep ``t``."""
        return float((1 - abar_at(self.alphas_cumprod, t)).sqrt())

    def eps_from_output(self, model_output: Tensor, x: Tensor, abar: float) -> Tensor:
        """Raw UNet output (any parameterization) at VP latent ``x`` -> eps in fp32."""
        return eps_from_prediction(model_output.to(torch.float32), x.to(torch.float32), abar, self.prediction_type)

    def eps_pair_raw(
        self,
        x: Tensor,
        t: Tensor | float | int,
        cond: Tensor | Conditioning,
        uncond: Tensor | Conditioning,
        abar: float | None = None,
        timestep_cond: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(eps_c, eps_u)`` of one batched UNet call at VP latent ``x`` (B, C, H, W)."""
        b = x.shape[0]
        cond, uncond = as_conditioning(cond), as_conditioning(uncond)
        if cond.batch != b or uncond.batch != b:
            raise ValueError(f"embeddings batch ({cond.batch}, {uncond.batch}) != latent batch {b}")
        dtype = self.dtype
        x2 = torch.cat([x, x])
        t_in = t if torch.is_tensor(t) else torch.tensor(t, device=x.device)
        out = self.unet(x2.to(dtype), t_in, timestep_cond=timestep_cond, return_dict=False,
                        **cfg_unet_inputs(uncond, cond, dtype))[0]
        eps = self.eps_from_output(out, x2, self.abar(t) if abar is None else abar)
        eps_u, eps_c = eps.chunk(2)
        return eps_c, eps_u

    def guided(
        self,
        t: Tensor | float | int,
        cond: Tensor | Conditioning,
        uncond: Tensor | Conditioning,
        abar: float | None = None,
        timestep_cond: Tensor | None = None,
    ) -> GuidedScore:
        """The guided score at timestep ``t`` for these embeddings (batch must match the latent).

        ``abar`` overrides ``alphas_cumprod[t]`` when the sampler defines the noise level itself
        (k-diffusion sigmas, e.g. Euler with Karras sigmas).
        """
        abar = self.abar(t) if abar is None else float(abar)

        def eps_pair(x: Tensor) -> tuple[Tensor, Tensor]:
            return self.eps_pair_raw(x, t, cond, uncond, abar, timestep_cond)

        return GuidedScore(eps_pair=eps_pair, sigma=(1.0 - abar) ** 0.5, t=float(torch.as_tensor(t).reshape(-1)[0]))
