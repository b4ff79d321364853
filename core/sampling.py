"""Tracked generation: stock Stable Diffusion sampling that yields a metric record per step.

The flow mirrors ``StableDiffusionPipeline.__call__`` stage by stage (same embeddings, same initial
noise, same scheduler calls), so with the same seed the images equal the stock pipeline's. On top of the
CFG step it already pays for, it records Wen's metric every step (free) and the sharpness
``‖HΔ sΔ‖²`` at the requested steps (one extra CFG evaluation with ``hvp="fd"``, one JVP with
``"exact"``). Extension point: ``probes`` run at each step on the guided score and may add data to the
step record (spectra use it); they never change the sample.

Usage::

    for item in generate(pipe, GenerationSettings(prompt="...", seed=0)):
        if isinstance(item, StepRecord): ...   # live plot
        else: result = item                    # GenerationResult (images, records, report)
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from sailscope.core.errors import Cancelled, NonFiniteError, UserInputError, cancel_requested
from sailscope.core.metrics import DEFAULT_FD_STEP, sharpness, wen_metric
from sailscope.core.families import family_of
from sailscope.core.score import Conditioning, DiffusersScoreModel, GuidedScore, cfg_unet_inputs, unet_inputs

from sailscope.core.choices import SCHEDULERS  # noqa: E402  (names only; torch-free for the CLI)
MAX_STEPS = 1000


# ----------------------------------------------------------------------------------------------
# Settings and records
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """Everything that determines an image and its metrics. UI, CLI and host adapters all build this.

    ``sharpness_at``: ``"none"``, ``"first"`` (step 1, what detection uses), ``"all"``, or 1-based steps.
    Image ``i`` of a batch uses seed ``seed + i`` (A1111's convention), so it equals a single-image run.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    scheduler: str = "ddim"
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    sharpness_at: str | tuple[int, ...] = "first"
    hvp: Literal["exact", "fd"] = "fd"
    fd_step: float = DEFAULT_FD_STEP

    def sharpness_steps(self) -> frozenset[int]:
        if self.sharpness_at == "none":
            return frozenset()
        if self.sharpness_at == "first":
            return frozenset({1})
        if self.sharpness_at == "all":
            return frozenset(range(1, self.steps + 1))
        return frozenset(int(s) for s in self.sharpness_at)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sharpness_at"] = list(self.sharpness_at) if isinstance(self.sharpness_at, tuple) else self.sharpness_at
        return d


def check_settings(settings: GenerationSettings, vae_scale_factor: int = 8, latent_multiple: int = 1) -> list[str]:
    """Validate settings (errors name the argument); return warnings that are not errors."""
    s = settings
    warnings: list[str] = []
    if not isinstance(s.prompt, str):
        raise UserInputError("prompt must be a string")
    if s.prompt.strip() == "":
        warnings.append("empty prompt: this samples the unconditional model (valid; Wen's metric and sharpness are 0)")
    if not isinstance(s.steps, int) or not 1 <= s.steps <= MAX_STEPS:
        raise UserInputError(f"steps must be an integer in [1, {MAX_STEPS}], got {s.steps!r}")
    if not math.isfinite(s.guidance) or s.guidance < 0:
        raise UserInputError(f"guidance must be a finite number >= 0, got {s.guidance!r}")
    if s.scheduler not in SCHEDULERS:
        raise UserInputError(f"unknown scheduler {s.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if s.hvp not in ("exact", "fd"):
        raise UserInputError(f"hvp must be 'exact' or 'fd', got {s.hvp!r}")
    if not isinstance(s.num_images, int) or not 1 <= s.num_images <= 64:
        raise UserInputError(f"num_images must be an integer in [1, 64], got {s.num_images!r}")
    if not isinstance(s.seed, int) or not 0 <= s.seed < 2**63:
        raise UserInputError(f"seed must be an integer in [0, 2^63), got {s.seed!r}")
    if not (s.fd_step > 0):
        raise UserInputError(f"fd_step must be > 0, got {s.fd_step!r}")
    multiple = vae_scale_factor * latent_multiple
    for name, value in (("width", s.width), ("height", s.height)):
        if value is None:
            continue
        if not isinstance(value, int) or value <= 0 or value % multiple:
            raise UserInputError(f"{name} must be a positive multiple of {multiple} pixels for this model, got {value!r}")
        if value > 4096:
            raise UserInputError(f"{name} must be <= 4096 pixels, got {value}")
    if isinstance(s.sharpness_at, str) and s.sharpness_at not in ("none", "first", "all"):
        raise UserInputError(f"sharpness_at must be none, first, all or a list of steps, got {s.sharpness_at!r}")
    bad = [k for k in s.sharpness_steps() if not 1 <= k <= s.steps]
    if bad:
        raise UserInputError(f"sharpness_at steps {sorted(bad)} are outside 1..{s.steps}")
    return warnings


def check_settings_for(pipe: Any, settings: GenerationSettings) -> list[str]:
    """:func:`check_settings` for this pipeline: sizes must be multiples of the VAE factor times ``2^levels`` of the
    UNet's down-sampling (a latent the UNet cannot halve that often is rejected with a message)."""
    levels = len(pipe.unet.config.block_out_channels) - 1
    return check_settings(settings, pipe.vae_scale_factor, 2**levels if levels > 0 else 1)


@dataclass
class StepRecord:
    """One sampling step. ``step`` is 1-based (step 1 = ``t = timesteps[0]``); lists are per image."""

    step: int
    total: int
    t: float
    sigma: float  # VP sigma_t of this step's input latent
    wen: list[float]  # ‖eps_c - eps_u‖ (eps space, as Wen et al.)
    sharpness: list[float] | None = None  # ‖HΔ sΔ‖² (score space); None where not requested
    sharpness_eps: list[float] | None = None  # the same in the authors' eps-space units (sigma_t^4 ×)
    elapsed: float = 0.0  # seconds since the run started
    run: str = "original"  # "original" or "sail" in a SAIL pair
    extras: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepContext:
    """What a probe sees at a step (detached tensors; the probe must not modify them)."""

    step: int
    t: float
    sigma: float
    abar: float
    x: Tensor  # VP latent (B, C, H, W), fp32
    guided: GuidedScore
    eps_c: Tensor
    eps_u: Tensor
    timesteps: Tensor | None = None  # the run's whole schedule
    # the guided score of the same embeddings at another timestep (detectors that look at a second noise level)
    guided_at: Callable[[Any], GuidedScore] | None = None


StepProbe = Callable[[StepContext], "dict | None"]


@dataclass
class GenerationResult:
    images: list  # PIL images
    array: np.ndarray  # (N, H, W, 3) float in [0, 1], before 8-bit rounding
    records: list[StepRecord]
    settings: GenerationSettings
    x_T: Tensor  # unit-variance initial noise (before init_noise_sigma), CPU fp32
    seconds: float
    warnings: list[str] = field(default_factory=list)
    run: str = "original"

    def report(self) -> dict:
        """JSON-serializable report (no image data)."""
        return {
            "run": self.run,
            "settings": self.settings.to_dict(),
            "seconds": self.seconds,
            "warnings": list(self.warnings),
            "steps": [r.to_dict() for r in self.records],
            "step1": {
                "wen": self.records[0].wen if self.records else None,
                "sharpness": self.records[0].sharpness if self.records else None,
            },
        }


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------
def make_scheduler(pipe: Any, name: str):
    """A fresh scheduler of the named kind from the model's own config (the pipeline is not mutated)."""
    import diffusers

    if name not in SCHEDULERS:
        raise UserInputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)


def scheduled(pipe: Any, settings: GenerationSettings, device: torch.device | str = "cpu") -> Any:
    """A fresh scheduler of the settings' kind with their number of steps set; a schedule whose timesteps leave the
    model's training range (e.g. DDIM's 1000 steps with ``steps_offset=1`` starts at t = 1000 of 0..999, where stock
    diffusers fails too) is refused with the largest step count that works."""
    scheduler = make_scheduler(pipe, settings.scheduler)
    scheduler.set_timesteps(settings.steps, device=device)
    n_train = int(scheduler.config.num_train_timesteps)
    if float(scheduler.timesteps.max()) > n_train - 1:
        most = next(s for s in range(settings.steps - 1, 0, -1)
                    if _last_timestep(pipe, settings.scheduler, s) <= n_train - 1)
        raise UserInputError(f"steps {settings.steps} with the {settings.scheduler} scheduler start at timestep "
                             f"{float(scheduler.timesteps.max()):g}, outside this model's 0..{n_train - 1}; "
                             f"use at most {most} steps")
    return scheduler


def _last_timestep(pipe: Any, name: str, steps: int) -> float:
    scheduler = make_scheduler(pipe, name)
    scheduler.set_timesteps(steps)
    return float(scheduler.timesteps.max())


def seed_generators(seed: int, n: int) -> list[torch.Generator]:
    """CPU generators for images ``0..n-1`` (seed + i), as ``torch.Generator("cpu").manual_seed``."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def initial_noise(
    pipe: Any, settings: GenerationSettings, height: int | None = None, width: int | None = None,
    generators: list[torch.Generator] | None = None,
) -> Tensor:
    """The unit-variance ``x_T`` stock diffusers draws for this seed (before ``init_noise_sigma``)."""
    from diffusers.utils.torch_utils import randn_tensor

    c = pipe.unet.config.in_channels
    f = pipe.vae_scale_factor
    native_height, native_width = output_size(pipe, settings)
    height, width = height or native_height, width or native_width
    shape = (settings.num_images, c, height // f, width // f)
    gens = generators or seed_generators(settings.seed, settings.num_images)
    gen = gens[0] if len(gens) == 1 else gens
    return randn_tensor(shape, generator=gen, device=torch.device("cpu"), dtype=torch.float32)


def noise_level(scheduler: Any, score_model: DiffusersScoreModel, index: int, t: Tensor) -> float:
    """``abar`` of the UNet input at step ``index``: k-diffusion samplers define it by their sigma."""
    sigmas = getattr(scheduler, "sigmas", None)
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0 and sigmas is not None and index < len(sigmas):
        sk = float(sigmas[index])
        return 1.0 / (1.0 + sk * sk)
    return score_model.abar(t)


def encode(pipe: Any, settings: GenerationSettings, device: torch.device) -> tuple[Conditioning, Conditioning, list[str]]:
    """(cond, uncond) conditioning, one row per image, as the model family's stock pipeline builds it; warns when
    the prompt is truncated."""
    height, width = output_size(pipe, settings)
    return family_of(pipe).encode(pipe, settings.prompt, settings.negative_prompt, settings.num_images, device,
                                  (height, width))


def decode(pipe: Any, latents: Tensor) -> tuple[list, np.ndarray]:
    """Latents -> images exactly as the family's stock pipeline does (VAE, safety checker/watermark, postprocess)."""
    return family_of(pipe).decode(pipe, latents)


def output_size(pipe: Any, settings: GenerationSettings) -> tuple[int, int]:
    """(height, width) in pixels: the settings', else the model's native size."""
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return settings.height or native, settings.width or native


def step_kwargs(scheduler: Any, generator: Any, eta: float = 0.0) -> dict:
    """``eta``/``generator`` for schedulers whose ``step`` takes them (as the stock pipeline does)."""
    import inspect

    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


# ----------------------------------------------------------------------------------------------
# The flow
# ----------------------------------------------------------------------------------------------
def generate(
    pipe: Any,
    settings: GenerationSettings,
    *,
    x_T: Tensor | None = None,
    probes: Sequence[StepProbe] = (),
    cancel: Callable[[], bool] | threading.Event | None = None,
    run: str = "original",
    stop_after: int | None = None,
) -> Iterator[StepRecord | GenerationResult]:
    """Sample with per-step metrics; yields a :class:`StepRecord` per step, then a :class:`GenerationResult`.

    ``x_T`` replaces the seed's unit-variance initial noise (SAIL); it is scaled by the scheduler's
    ``init_noise_sigma`` like stock diffusers does. ``stop_after=k`` stops after step ``k`` without
    decoding (detection needs only the first steps; the result then has no images). ``cancel`` is checked before every step and raises
    :class:`Cancelled`; non-finite latents raise :class:`NonFiniteError` naming the step.
    """
    start = time.perf_counter()
    # 1. Check inputs
    unet_cfg = pipe.unet.config
    warnings = check_settings_for(pipe, settings)
    height, width = output_size(pipe, settings)
    device = pipe._execution_device
    score_model = DiffusersScoreModel.from_pipeline(pipe)
    do_cfg = settings.guidance > 1.0 and unet_cfg.time_cond_proj_dim is None
    sharp_steps = settings.sharpness_steps()

    # 2. Encode the prompt (cond and uncond; uncond is needed for the metrics even without CFG)
    with torch.no_grad():
        cond, uncond, enc_warnings = encode(pipe, settings, device)
    warnings += enc_warnings
    dtype = cond.dtype

    # 3. Timesteps from a fresh scheduler
    scheduler = scheduled(pipe, settings, device)
    timesteps = scheduler.timesteps

    # 4. Initial noise (stock draw for the seed, or the caller's x_T)
    shape = (settings.num_images, unet_cfg.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    gens = seed_generators(settings.seed, settings.num_images)  # shared with ancestral steps, as stock
    if x_T is None:
        x_T = initial_noise(pipe, settings, height, width, gens)
    elif tuple(x_T.shape) != shape:
        raise UserInputError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
    x_T = x_T.detach().to("cpu", torch.float32)
    latents = (x_T.to(device, dtype) * scheduler.init_noise_sigma)
    extra_step_kwargs = step_kwargs(scheduler, gens[0] if len(gens) == 1 else gens)
    cond_inputs = cfg_unet_inputs(uncond, cond) if do_cfg else unet_inputs(cond)

    # 5. Denoising loop with metrics
    records: list[StepRecord] = []
    for i, t in enumerate(timesteps):
        if cancel_requested(cancel):
            raise Cancelled(f"cancelled before step {i + 1} of {len(timesteps)}")
        step = i + 1
        with torch.no_grad():
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            out = pipe.unet(model_in, t, return_dict=False, **cond_inputs)[0]
            if do_cfg:
                out_u, out_c = out.chunk(2)
                noise_pred = out_u + settings.guidance * (out_c - out_u)
            else:
                out_c, noise_pred = out, out
                x_vp = scheduler.scale_model_input(latents, t)
                out_u = pipe.unet(x_vp, t, return_dict=False, **unet_inputs(uncond))[0]
            x_vp = model_in[: settings.num_images] if do_cfg else scheduler.scale_model_input(latents, t)
            abar = noise_level(scheduler, score_model, i, t)
            eps_c = score_model.eps_from_output(out_c, x_vp, abar)
            eps_u = score_model.eps_from_output(out_u, x_vp, abar)
        sigma = (1.0 - abar) ** 0.5
        record = StepRecord(
            step=step, total=len(timesteps), t=float(t), sigma=sigma,
            wen=wen_metric(eps_c, eps_u).tolist(), run=run,
        )
        needs_guided = step in sharp_steps or probes
        if needs_guided:
            gs = score_model.guided(t, cond, uncond, abar=abar)
            x32 = x_vp.detach().to(torch.float32)
        if step in sharp_steps:
            sd = -(eps_c - eps_u) / sigma
            sh = sharpness(gs, x32, method=settings.hvp, score_delta=sd, fd_step=settings.fd_step)
            record.sharpness = sh.value.tolist()
            record.sharpness_eps = sh.eps_space.tolist()
        for probe in probes:
            extra = probe(StepContext(step, float(t), sigma, abar, x32, gs, eps_c, eps_u, timesteps=timesteps,
                                      guided_at=lambda tt: score_model.guided(tt, cond, uncond)))
            if extra:
                record.extras.update(extra)
        with torch.no_grad():
            latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
        if not torch.isfinite(latents).all():
            raise NonFiniteError(
                f"non-finite values (NaN/inf) in the latents after step {step} (t={float(t):.1f}); "
                "try fp32, another scheduler, or a lower guidance", step=step,
            )
        if any(not math.isfinite(v) for v in record.wen + (record.sharpness or [])):
            warnings.append(f"non-finite metric at step {step}")
        record.elapsed = time.perf_counter() - start
        records.append(record)
        yield record
        if stop_after is not None and step >= stop_after:
            yield GenerationResult(
                images=[], array=np.zeros((0,)), records=records, settings=settings, x_T=x_T,
                seconds=time.perf_counter() - start, warnings=warnings, run=run,
            )
            return

    # 6. Decode
    images, array = decode(pipe, latents)
    yield GenerationResult(
        images=images, array=array, records=records, settings=settings, x_T=x_T,
        seconds=time.perf_counter() - start, warnings=warnings, run=run,
    )


def run_generation(pipe: Any, settings: GenerationSettings, **kwargs: Any) -> GenerationResult:
    """Consume :func:`generate` and return its result."""
    result = None
    for item in generate(pipe, settings, **kwargs):
        if isinstance(item, GenerationResult):
            result = item
    assert result is not None
    return result


__all__ = [
    "GenerationSettings", "GenerationResult", "StepRecord", "StepContext", "StepProbe",
    "generate", "run_generation", "check_settings", "make_scheduler", "initial_noise", "SCHEDULERS",
    "replace",
]
