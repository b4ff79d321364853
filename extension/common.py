"""Host conventions -> SAIL Scope's one model contract (:class:`~sailscope.core.score.GuidedScore`).

A1111, Forge and ComfyUI all sample in k-diffusion variables; SAIL Scope reports everything in the
VP ("DDPM") variables of docs/math.md §1. This module converts between the two, once, and nothing else:
every number comes from ``core/``. No host module is imported here (the adapters pass callables in).

==============  ===========================================================================
``x_k``         k-diffusion state ``x_k = x0 + sigma_k * eps`` (what host denoisers take)
``sigma_k``     k-diffusion noise level (``sigmas[0]`` of the host schedule at step 1)
``x0``          host denoiser output (``denoised``): A1111's ``CompVisDenoiser``, ComfyUI's
                ``apply_model`` / ``cond_denoised`` / ``uncond_denoised``
``x_vp``        VP latent ``x_vp = x_k / sqrt(1 + sigma_k^2)`` (what GuidedScore takes)
``sigma_vp``    ``sigma_t = sigma_k / sqrt(1 + sigma_k^2)``
``noise``       unit-variance initial noise (``x_T``) the host draws from the seed
``c``           first-step scale ``x_vp = c * noise``: A1111/Forge multiply noise by ``sigma_k``
                (``c = sigma_vp``); ComfyUI at full denoise by ``sqrt(1+sigma_k^2)`` (``c = 1``)
==============  ===========================================================================

eps is the same in both variable sets: ``eps = (x_k - x0) / sigma_k``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor

from sailscope.core.io import infotext
from sailscope.core.autograd import gradients_through_host_model
from sailscope.core.errors import SailScopeError, UserInputError
from sailscope.core.metrics import sharpness as core_sharpness
from sailscope.core.metrics import wen_metric
from sailscope.core import mitigation
from sailscope.core.score import GuidedScore, eps_from_denoised, k_from_vp, sigma_vp_from_k, vp_from_k

NoiseScaling = Literal["sigma", "max_denoise"]
X0PairFn = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]
"""``(x_k, sigma_k per row) -> (x0_cond, x0_uncond)`` in one host model call."""
DenoiseFn = Callable[[Tensor, Tensor, Any], Tensor]
"""``(x_k, sigma_k per row, cond) -> x0``: one call of a host denoiser on a batch."""


class HostError(SailScopeError):
    """Something a host gave us cannot be used (the message is shown in the host's UI as-is)."""


# ----------------------------------------------------------------------------------------------
# Noise levels and latents (small pure functions)
# ----------------------------------------------------------------------------------------------
def first_step_scale(sigma_k: float, noise_scaling: NoiseScaling) -> float:
    """``c`` with ``x_vp = c * noise`` at step 1 (see the module table)."""
    if noise_scaling == "sigma":  # A1111/Forge: x_k = noise * sigmas[0]
        return sigma_vp_from_k(sigma_k)
    if noise_scaling == "max_denoise":  # ComfyUI EPS.noise_scaling(max_denoise=True)
        return 1.0
    raise UserInputError(f"noise_scaling must be 'sigma' or 'max_denoise', got {noise_scaling!r}")


def noise_to_vp(noise: Tensor, sigma_k: float, noise_scaling: NoiseScaling) -> Tensor:
    """Unit-variance host noise -> the VP latent the model sees at step 1."""
    return noise * first_step_scale(sigma_k, noise_scaling)


def vp_to_noise(x_vp: Tensor, sigma_k: float, noise_scaling: NoiseScaling) -> Tensor:
    """Inverse of :func:`noise_to_vp`."""
    return x_vp / first_step_scale(sigma_k, noise_scaling)


# ----------------------------------------------------------------------------------------------
# Conditioning batches (tensors, or dicts of tensors as SDXL uses in A1111)
# ----------------------------------------------------------------------------------------------
def cat_conds(conds: Sequence[Any]) -> Any:
    """Concatenate conditionings along the batch: tensors, or dicts of tensors key by key."""
    if isinstance(conds[0], Mapping):
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(list(conds))


def cond_rows(cond: Any) -> int:
    """Batch size of a conditioning (tensor or dict of tensors)."""
    if isinstance(cond, Mapping):
        return int(next(iter(cond.values())).shape[0])
    return int(cond.shape[0])


# ----------------------------------------------------------------------------------------------
# Host denoiser -> GuidedScore
# ----------------------------------------------------------------------------------------------
def repeat_cond(cond: Any, rows: int) -> Any:
    """A one-row conditioning repeated to ``rows`` rows (tensor or dict of tensors)."""
    if isinstance(cond, Mapping):
        return {k: v.expand(rows, *v.shape[1:]) for k, v in cond.items()}
    return cond.expand(rows, *cond.shape[1:])


def select_cond(cond: Any, index: int) -> Any:
    """Row ``index`` of a conditioning, kept 2-D (tensor or dict of tensors)."""
    if isinstance(cond, Mapping):
        return {k: v[index : index + 1] for k, v in cond.items()}
    return cond[index : index + 1]


def batched_x0_pair(denoise: DenoiseFn, cond: Any, uncond: Any) -> X0PairFn:
    """One host call on ``[x; x]`` with ``[cond; uncond]`` (A1111's CFG order: cond rows first).

    Conditionings with one row are broadcast to any latent batch (SAIL's candidates of one image).
    """
    b_c, b_u = cond_rows(cond), cond_rows(uncond)
    if b_c != b_u:
        raise HostError(f"cond has {b_c} rows but uncond has {b_u}; they must match the latent batch")

    def x0_pair(x_k: Tensor, sigma_rows: Tensor) -> tuple[Tensor, Tensor]:
        b = x_k.shape[0]
        if b_c == b:
            c, u = cond, uncond
        elif b_c == 1:
            c, u = repeat_cond(cond, b), repeat_cond(uncond, b)
        else:
            raise HostError(f"latent batch {b} != conditioning batch {b_c}")
        out = denoise(torch.cat([x_k, x_k]), torch.cat([sigma_rows, sigma_rows]), cat_conds([c, u]))
        return out[:b], out[b:]

    return x0_pair


def guided_from_x0_pair(x0_pair: X0PairFn, sigma_k: float, *, t: float = 0.0) -> GuidedScore:
    """A :class:`GuidedScore` over VP latents from a host's ``x0`` predictions at ``sigma_k``.

    ``eps_pair(x_vp)``: ``x_k = x_vp sqrt(1+sigma_k^2)``, one host call, ``eps = (x_k - x0)/sigma_k``,
    in fp32 whatever the host's dtype. Differentiable when the host denoiser is.
    """
    sigma_k = float(sigma_k)
    if not (sigma_k > 0 and math.isfinite(sigma_k)):
        raise HostError(f"sigma_k must be a finite number > 0, got {sigma_k!r}")

    seen: dict = {}

    def eps_pair(x_vp: Tensor) -> tuple[Tensor, Tensor]:
        x_k = k_from_vp(x_vp, sigma_k)
        sigma_rows = torch.full((x_vp.shape[0],), sigma_k, dtype=x_vp.dtype, device=x_vp.device)
        x0_c, x0_u = x0_pair(x_k, sigma_rows)
        seen["dtype"] = x0_c.dtype
        x_k32 = x_k.float() if x_k.dtype not in (torch.float32, torch.float64) else x_k
        eps_c = eps_from_denoised(x_k32, x0_c.to(x_k32.device, x_k32.dtype), sigma_k)
        eps_u = eps_from_denoised(x_k32, x0_u.to(x_k32.device, x_k32.dtype), sigma_k)
        return eps_c, eps_u

    eps_pair.seen = seen  # type: ignore[attr-defined]  # the host's output dtype, once called
    return GuidedScore(eps_pair=eps_pair, sigma=sigma_vp_from_k(sigma_k), t=t)


def guided_from_denoiser(denoise: DenoiseFn, cond: Any, uncond: Any, sigma_k: float, *, t: float = 0.0) -> GuidedScore:
    """Shortcut: :func:`batched_x0_pair` + :func:`guided_from_x0_pair`."""
    return guided_from_x0_pair(batched_x0_pair(denoise, cond, uncond), sigma_k, t=t)


# ----------------------------------------------------------------------------------------------
# Per-step metrics from what CFG callbacks see (no extra model call)
# ----------------------------------------------------------------------------------------------
def wen_from_denoised(x0_c: Tensor, x0_u: Tensor, sigma_k: float | Tensor) -> Tensor:
    """Wen's ``‖eps_c - eps_u‖`` per sample from x0 predictions: ``eps_c - eps_u = (x0_u - x0_c)/sigma_k``."""
    sk = torch.as_tensor(sigma_k, dtype=torch.float32, device=x0_c.device).reshape(-1)
    sk = sk.reshape(-1, *([1] * (x0_c.dim() - 1))) if sk.numel() > 1 else sk.reshape(())
    zero = torch.zeros_like(x0_c, dtype=torch.float32)
    return wen_metric(zero, (x0_c.float() - x0_u.float()) / sk)


@dataclass(frozen=True)
class Probe:
    """Step-1 metrics of one batch at one ``x_T`` (lists are per image)."""

    wen: list[float]
    sharpness: list[float]  # ‖HΔ sΔ‖², score space
    sharpness_eps: list[float]  # the same in the authors' eps-space units
    sigma_vp: float
    method: str


def probe(gs: GuidedScore, x_vp: Tensor, *, method: str = "fd", fd_step: float | None = None) -> Probe:
    """Wen and sharpness at ``x_vp`` through ``core.metrics`` (one CFG call + one HVP)."""
    x32 = x_vp.detach().float()
    with torch.no_grad():
        eps_c, eps_u = gs.eps_pair(x32)
    sigma = gs.sigma_like(x32)
    kwargs = {} if fd_step is None else {"fd_step": fd_step}
    sh = core_sharpness(gs, x32, method=method, score_delta=-(eps_c - eps_u) / sigma, **kwargs)
    return Probe(
        wen=wen_metric(eps_c, eps_u).tolist(), sharpness=sh.value.tolist(), sharpness_eps=sh.eps_space.tolist(),
        sigma_vp=float(torch.as_tensor(gs.sigma).reshape(-1)[0]), method=method,
    )


# ----------------------------------------------------------------------------------------------
# Autograd inside hosts (the model as the host loaded it: core/autograd.py)
# ----------------------------------------------------------------------------------------------
def grad_ready(t: Tensor) -> Tensor:
    """A normal (non-inference) fp32 copy, detached: safe to use under autograd."""
    with torch.inference_mode(False):
        return t.detach().clone().float()


def explain_autograd_error(exc: BaseException) -> HostError:
    """The host's autograd failure as cause + fix in one line; each adapter adds what happens to the image."""
    text = str(exc)
    if "Inference tensors" in text:
        cause = ("some of the model's tensors are inference tensors of a kind SAIL cannot read without copying "
                 "them (quantized or offloaded weight types such as GGUF or NF4)")
        fix = "load the checkpoint unquantized (fp16/bf16/fp32) to use SAIL"
    elif "inplace operation" in text:
        cause = "a model patch or extension overwrote a tensor in place inside the UNet"
        fix = "disable that patch for SAIL and report it to SAIL Scope with the patch's name"
    elif "does not require grad" in text or "element 0 of tensors" in text:
        cause = "the host's model call switched gradients off inside the UNet (a patch or extension uses no_grad)"
        fix = "disable that patch for SAIL and report it to SAIL Scope with the patch's name"
    else:
        return HostError(f"SAIL failed inside the host: {type(exc).__name__}: {text}")
    return HostError(f"SAIL needs gradients through the UNet, but {cause}. Fix: {fix} (or turn SAIL off).")


# ----------------------------------------------------------------------------------------------
# Host options (one frozen dataclass the A1111 script, Forge and the ComfyUI nodes all read)
# ----------------------------------------------------------------------------------------------
SHARPNESS_METHODS = ("fd", "exact", "off")
OBJECTIVE_CHOICES = ("reference", "paper")
DEFAULT_HOST_THRESHOLD = {"reference": 8.2, "paper": None}  # SD 1.4 paper value (reference objective, α=0.05)


@dataclass(frozen=True, kw_only=True)
class HostOptions:
    """What the host UIs expose. SAIL's own knobs map 1:1 onto :class:`core.mitigation.SailSettings`.

    ``sharpness``: how step-1 sharpness is measured (``fd`` one extra CFG call, ``exact`` one JVP, ``off``).
    ``threshold`` must be a number in hosts: ``auto`` needs a calibration made with ``sailscope calibrate``.
    Defaults are the authors' SD 1.4 loop (reference objective, 8.2, ≤ 10 steps, lr 0.05, one threshold, no
    sphere retraction), validated on SD by the paper; the app's calibrated defaults were tuned on the demo model.
    """

    sail: bool = False
    objective: str = "reference"
    threshold: float = 8.2
    max_steps: int = 10
    candidates: int = 1
    lr: float = 0.05
    alpha: float | None = None
    sphere: bool = False  # the authors' loop (free Adam steps); the app's default is True, see core.mitigation
    sharpness: str = "fd"
    show_original: bool = False
    save_plots: bool = True
    low_memory: bool = False  # SAIL's saved activations in CPU memory (core/autograd.py); same result, less VRAM

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVE_CHOICES:
            raise UserInputError(f"SAIL objective must be one of {', '.join(OBJECTIVE_CHOICES)}, got {self.objective!r}")
        if self.sharpness not in SHARPNESS_METHODS:
            raise UserInputError(f"sharpness must be one of {', '.join(SHARPNESS_METHODS)}, got {self.sharpness!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise UserInputError(
                f"SAIL threshold must be a number in this host, got {self.threshold!r} ('auto' needs a calibration: "
                "run `sailscope calibrate --model <checkpoint>` and enter its value)"
            )
        self.sail_settings()  # validates the rest with core's own messages

    def threshold_note(self) -> str | None:
        """A warning when the threshold is the paper's SD 1.4 value: it is in the reference objective's units for
        SD 1.4 (α = 0.05) and means something else for any other model or for the paper objective."""
        if self.threshold != DEFAULT_HOST_THRESHOLD["reference"]:
            return None
        unit = ("it is a reference-objective value, and the paper objective's losses are in other units"
                if self.objective == "paper" else "other checkpoints (SD 1.5, SDXL, fine-tunes, LoRAs) have other scales")
        return (f"SAIL threshold {self.threshold:g} is the paper's value for SD 1.4 (reference objective, alpha 0.05); "
                f"{unit}. For this model run `sailscope calibrate --model <checkpoint>` and enter its threshold.")

    def sail_settings(self):
        return mitigation.SailSettings(
            objective=self.objective, threshold=float(self.threshold), max_steps=int(self.max_steps),
            candidates=int(self.candidates), lr=float(self.lr), sphere=bool(self.sphere), trigger=None, rounds=1,
            alpha=None if self.alpha in (None, "") or (isinstance(self.alpha, float) and self.alpha < 0) else float(self.alpha),
        )

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


# ----------------------------------------------------------------------------------------------
# SAIL (core/mitigation/) through the host's noise convention
# ----------------------------------------------------------------------------------------------
@dataclass
class SailOutcome:
    """What SAIL did to one batch: new unit noise plus the engine's results (one per image)."""

    noise: Tensor  # unit-variance noise in the host's convention (same shape/dtype/device as given)
    results: list  # core.mitigation.SailResult per image
    summary: list[dict] = field(default_factory=list)  # per image: accepted, steps, loss, threshold
    warnings: list[str] = field(default_factory=list)


def run_sail(
    make_gs: Callable[[int], GuidedScore],
    noise: Tensor,
    sigma_k: float,
    noise_scaling: NoiseScaling,
    options: HostOptions,
    *,
    seeds: Sequence[int] | None = None,
    prediction_type: str = "epsilon",
    model_dtype: torch.dtype | None = None,
    cancel: Any = None,
) -> SailOutcome:
    """Optimize each image's initial noise with ``core.mitigation`` and return it in the host's convention.

    ``make_gs(i)`` is image ``i``'s guided score at ``sigma_k`` (any batch size: SAIL's candidates of one
    image share its prompt). Adam runs on the unit noise ``z`` with ``x_vp = c z`` (:func:`first_step_scale`),
    exactly as ``core.mitigation`` does for diffusers with ``scale = c``. ``model_dtype`` (the UNet's compute dtype)
    sets the paper objective's finite-difference step (``SailSettings.delta_for``); unknown, it is read from
    the host's output dtype.
    """
    settings = options.sail_settings()
    scale = first_step_scale(sigma_k, noise_scaling)
    rows, results = [], []
    warnings = [note] if (note := options.threshold_note()) else []
    for i in range(noise.shape[0]):
        gs = make_gs(i)
        try:
            with gradients_through_host_model(offload=options.low_memory):
                result = mitigation.optimize_first_step(
                    gs.eps_pair, grad_ready(noise[i : i + 1]), settings,
                    sigma=float(torch.as_tensor(gs.sigma).reshape(-1)[0]), scale=scale,
                    threshold=float(options.threshold), seed=None if seeds is None else int(seeds[i]),
                    prediction_type=prediction_type, model_dtype=model_dtype, device=noise.device, cancel=cancel,
                )
        except UserInputError as exc:
            raise HostError(str(exc)) from exc
        except RuntimeError as exc:
            raise explain_autograd_error(exc) from exc
        rows.append(result.x_T[0])
        results.append(result)
        warnings += [f"image {i + 1}: {w}" for w in result.warnings]
    out = torch.stack(rows).to(noise.device, noise.dtype)
    summary = [
        {"accepted": r.converged[0], "steps": r.steps[0], "loss": r.loss[0], "initial_loss": r.initial_loss[0],
         "threshold": r.threshold, "candidate": r.chosen[0], "seconds": r.seconds}
        for r in results
    ]
    return SailOutcome(noise=out, results=results, summary=summary, warnings=warnings)


# ----------------------------------------------------------------------------------------------
# Infotext (A1111 ``extra_generation_params``; read back by "send to txt2img"): core/io/infotext.py's keys
# ----------------------------------------------------------------------------------------------
IMAGE_FIELDS = ("wen", "sharpness", "original_wen", "original_sharpness", "steps", "converged", "start_loss", "loss",
                "status")
"""Per-image infotext entries the WebUI script writes (registry names of :mod:`sailscope.core.io.infotext`)."""
PASTED_SETTINGS = ("sail", "objective", "threshold", "alpha", "lr", "max_steps", "candidates", "sphere")
"""The :class:`HostOptions` fields a pasted infotext restores (hosts run one round and no trigger)."""


def infotext_settings(options: HostOptions | Mapping[str, Any]) -> dict[str, str]:
    """SAIL settings -> ``{infotext key: text}`` (only when SAIL is on)."""
    d = options.to_dict() if isinstance(options, HostOptions) else dict(options)
    if not d.get("sail"):
        return {}
    return infotext.fields(sail="on", **{k: d.get(k) for k in PASTED_SETTINGS if k != "sail"}, rounds=1, trigger="none")


def infotext_image(image: Mapping[str, Any]) -> dict[str, str]:
    """One image's metrics and SAIL result (keys of :data:`IMAGE_FIELDS`) -> ``{infotext key: text}``."""
    return infotext.fields(**{k: image.get(k) for k in IMAGE_FIELDS})


def parse_infotext(params: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed infotext -> the :class:`HostOptions` fields it restores (:data:`PASTED_SETTINGS` present in
    it); the inverse of :func:`infotext_settings`, also for PNGs from the app and the CLI."""
    settings = infotext.parse_settings(params)
    if settings.get("objective") not in (None, *OBJECTIVE_CHOICES):
        settings.pop("objective")
    return {k: v for k, v in settings.items() if k in PASTED_SETTINGS}


parse_infotext_line = infotext.parse_line


__all__ = [
    "HostError", "sigma_vp_from_k", "vp_from_k", "k_from_vp", "first_step_scale", "noise_to_vp", "vp_to_noise",
    "cat_conds", "batched_x0_pair", "guided_from_x0_pair", "guided_from_denoiser", "wen_from_denoised",
    "Probe", "probe", "gradients_through_host_model", "grad_ready", "run_sail", "SailOutcome", "HostOptions",
    "repeat_cond", "select_cond",
    "IMAGE_FIELDS", "PASTED_SETTINGS", "infotext_settings", "infotext_image", "parse_infotext", "parse_infotext_line",
]
