"""Per-step memorization metrics on a :class:`~sailscope.core.score.GuidedScore` (docs/math.md §2).

All values are per sample (shape ``(B,)``), fp32, in the score space of docs/math.md §1
(``s = -eps / sigma_t``). The authors' code reports eps-space numbers: ``eps_Δ = -sigma_t sΔ``, and
because ``HΔ`` is a Jacobian w.r.t. ``x`` in both, ``‖HΔ^eps eps_Δ‖ = sigma_t^2 ‖HΔ sΔ‖`` —
see :func:`to_eps_space`. Wen's metric is reported as the authors do, in eps space.

Hessian-vector products come in two flavours:

* ``exact``: one forward-mode JVP (``torch.func.jvp``) through the batched cond+uncond call. Fused
  attention kernels have no forward-mode derivative, so the JVP runs under the MATH SDPA kernel.
* ``fd``: forward difference ``(f(x + h v) - f(x)) / h`` with a *relative* step
  ``h = fd_step * ‖x‖ / ‖v‖`` per sample (default ``fd_step = 1e-3``), i.e. the perturbation is 0.1 % of
  the latent's norm whatever the scale of ``v``. With ``f(x)`` already known (it is, during sampling)
  this is one extra CFG evaluation.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from sailscope.core.score import GuidedScore

HvpMethod = Literal["exact", "fd"]
Which = Literal["cond", "uncond", "delta"]

DEFAULT_FD_STEP = 1e-3


def at_least_fp32(x: Tensor) -> Tensor:
    """Promote half/bfloat16 to fp32; keep fp32/fp64 (oracle tests run in fp64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _flat_norm(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).norm(dim=1)


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def explicit_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                       dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                       enable_gqa: bool = False) -> Tensor:
    """``scaled_dot_product_attention`` written out (``softmax(q kᵀ · scale + mask) v``, softmax in at least fp32): plain ops
    whose forward-mode derivatives exist on every device and keep the inputs' dtype."""
    if dropout_p:
        raise ValueError("attention dropout has no place in an inference-time derivative")
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    scale = 1.0 / query.shape[-1] ** 0.5 if scale is None else scale
    n_q, n_k = query.shape[-2], key.shape[-2]
    if is_causal:
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device).tril()
        attn_mask = causal if attn_mask is None else (causal & attn_mask if attn_mask.dtype == torch.bool
                                                      else attn_mask.masked_fill(~causal, float("-inf")))
    # rows of the softmax are independent: query chunks bound the score matrix (SDXL at 1024²: 4096 × 4096 per head)
    rows = max(1, ATTENTION_CHUNK_ELEMENTS // max(1, query[..., :1, :1].numel() * n_k))
    out = []
    for i in range(0, n_q, rows):
        scores = query[..., i:i + rows, :] @ key.transpose(-2, -1)
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * scale
        if attn_mask is not None:
            mask = attn_mask[..., i:i + rows, :] if attn_mask.dim() >= 2 and attn_mask.shape[-2] == n_q else attn_mask
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        out.append(scores.softmax(dim=-1).to(query.dtype) @ value)
    return out[0] if len(out) == 1 else torch.cat(out, dim=-2)


ATTENTION_CHUNK_ELEMENTS = 2**26  # score elements per query chunk of explicit_attention (256 MiB in fp32)


class _ExplicitAttentionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            return explicit_attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forward_ad_attention():
    """Attention that forward-mode AD can differentiate in half precision on any device: fused SDPA kernels have no
    forward derivative, and on CUDA the MATH kernel's derivative mixes fp32 into fp16 models (measured on an H200,
    docs/performance.md), so every ``scaled_dot_product_attention`` call inside runs :func:`explicit_attention`."""
    with _ExplicitAttentionMode():
        yield


# ----------------------------------------------------------------------------------------------
# Free metrics
# ----------------------------------------------------------------------------------------------
def wen_metric(eps_c: Tensor, eps_u: Tensor) -> Tensor:
    """Wen et al.'s ``‖eps_c - eps_u‖`` per sample (eps space, as published)."""
    return _flat_norm(at_least_fp32(eps_c) - at_least_fp32(eps_u))


def to_eps_space(sharpness_value: Tensor | float, sigma: Tensor | float) -> Tensor:
    """Score-space ``‖HΔ sΔ‖²`` -> the authors' eps-space ``‖HΔ^eps eps_Δ‖²`` (= sigma_t^4 times it)."""
    value = torch.as_tensor(sharpness_value)
    sigma = torch.as_tensor(sigma, dtype=value.dtype if value.is_floating_point() else torch.float64)
    return value * sigma**4


# ----------------------------------------------------------------------------------------------
# Hessian-vector products
# ----------------------------------------------------------------------------------------------
def _score_fn(gs: GuidedScore, which: Which) -> Callable[[Tensor], Tensor]:
    return lambda x: gs.score(x, which)


def jvp(fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(fn(x), J_fn(x) v)`` by forward-mode AD (attention written out), in fp32. Under ``no_grad``: forward mode
    needs no tape, and with one (weights that require grad) every activation would be kept for a backward pass that
    never comes."""
    x = at_least_fp32(x.detach())
    v = at_least_fp32(v.detach()).to(x.dtype)
    with torch.no_grad(), forward_ad_attention():
        out, tangent = torch.func.jvp(fn, (x,), (v,))
    return out.detach(), tangent.detach()


def fd_step_size(x: Tensor, v: Tensor, fd_step: float = DEFAULT_FD_STEP) -> Tensor:
    """Per-sample forward-difference step ``h = fd_step * ‖x‖ / ‖v‖`` (shape ``(B,)``)."""
    xn, vn = _flat_norm(at_least_fp32(x)), _flat_norm(at_least_fp32(v))
    scale = torch.where(xn > 0, xn, torch.ones_like(xn))
    return fd_step * scale / vn.clamp_min(torch.finfo(vn.dtype).tiny)


@torch.no_grad()
def fd_jvp(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    v: Tensor,
    *,
    fx: Tensor | None = None,
    fd_step: float = DEFAULT_FD_STEP,
) -> tuple[Tensor, Tensor]:
    """``(fn(x), ≈ J_fn(x) v)`` by a forward difference with a relative step (see module docstring)."""
    x = at_least_fp32(x)
    v = at_least_fp32(v).to(x.dtype)
    if fx is None:
        fx = at_least_fp32(fn(x))
    h = _per_sample(fd_step_size(x, v, fd_step), x)
    return fx, (at_least_fp32(fn(x + h * v)) - fx) / h


def hvp(
    gs: GuidedScore,
    x: Tensor,
    v: Tensor,
    *,
    which: Which = "delta",
    method: HvpMethod = "exact",
    fd_step: float = DEFAULT_FD_STEP,
) -> Tensor:
    """``H v`` for ``H`` one of ``H(x,c)``, ``H(x,∅)``, ``HΔ`` (``which``), exact or finite-difference."""
    fn = _score_fn(gs, which)
    if method == "exact":
        return jvp(fn, x, v)[1]
    if method == "fd":
        return fd_jvp(fn, x, v, fd_step=fd_step)[1]
    raise ValueError(f"method must be 'exact' or 'fd', got {method!r}")


# ----------------------------------------------------------------------------------------------
# Sharpness ‖HΔ sΔ‖²
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sharpness:
    """``‖HΔ sΔ‖²`` per sample with what it was computed from."""

    value: Tensor  # (B,) score space, squared norm
    score_delta: Tensor  # sΔ(x)
    hvp: Tensor  # HΔ sΔ
    sigma: float
    method: str

    @property
    def eps_space(self) -> Tensor:
        """The same quantity in the authors' eps-space units."""
        return to_eps_space(self.value, self.sigma)


def sharpness(
    gs: GuidedScore,
    x: Tensor,
    *,
    method: HvpMethod = "exact",
    score_delta: Tensor | None = None,
    fd_step: float = DEFAULT_FD_STEP,
) -> Sharpness:
    """The paper's sharpness ``‖HΔ(x) sΔ(x)‖²`` (§4.4) per sample.

    Pass ``score_delta`` when it is already known (during sampling the CFG step computed it): then
    ``exact`` costs one JVP and ``fd`` one extra CFG evaluation.
    """
    fn = _score_fn(gs, "delta")
    if score_delta is None:
        with torch.no_grad():
            score_delta = at_least_fp32(fn(at_least_fp32(x)))
    if method == "exact":
        _, h = jvp(fn, x, score_delta)
    elif method == "fd":
        _, h = fd_jvp(fn, x, score_delta, fx=score_delta, fd_step=fd_step)
    else:
        raise ValueError(f"method must be 'exact' or 'fd', got {method!r}")
    value = _flat_norm(h) ** 2
    sigma = gs.sigma if isinstance(gs.sigma, (int, float)) else float(torch.as_tensor(gs.sigma).reshape(-1)[0])
    return Sharpness(value=value, score_delta=score_delta, hvp=h, sigma=float(sigma), method=method)


# ----------------------------------------------------------------------------------------------
# Hutchinson trace of H(x, c)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of ``tr H`` per sample with its standard error."""

    mean: Tensor  # (B,)
    stderr: Tensor  # (B,)
    samples: Tensor  # (probes, B)

    @property
    def converged(self) -> Tensor:
        """True where the standard error is below 5 % of |mean|."""
        return self.stderr <= 0.05 * self.mean.abs()


def hutchinson_trace(
    gs: GuidedScore,
    x: Tensor,
    *,
    which: Which = "cond",
    probes: int = 16,
    method: HvpMethod = "exact",
    generator: torch.Generator | None = None,
    fd_step: float = DEFAULT_FD_STEP,
) -> TraceEstimate:
    """``tr H ≈ mean_k v_kᵀ H v_k`` with Rademacher ``v_k`` (one HVP per probe)."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    samples = []
    for _ in range(probes):
        v = torch.randint(0, 2, x.shape, generator=generator, device="cpu").to(x.device, at_least_fp32(x).dtype) * 2 - 1
        hv = hvp(gs, x, v, which=which, method=method, fd_step=fd_step)
        samples.append((v * hv).reshape(x.shape[0], -1).sum(dim=1))
    s = torch.stack(samples)
    stderr = s.std(dim=0, unbiased=True) / probes**0.5 if probes > 1 else torch.full_like(s[0], float("inf"))
    return TraceEstimate(mean=s.mean(dim=0), stderr=stderr, samples=s)


# ----------------------------------------------------------------------------------------------
# Anisotropy detector: guidance norm at high noise + guidance/unconditional angle at low noise (docs/math.md §6)
# ----------------------------------------------------------------------------------------------
# Asthana & Belagiannis, "Detecting and Mitigating Memorization in Diffusion Models through Anisotropy of the
# Log-Probability", ICLR 2026. Written from the paper's abstract and the released evaluation code
# (rohanasthana/memorization-anisotropy: detect_mem.py, local_model/pipe.py, detect_eval.py); the paper's method
# section itself could not be read here, so §6 says which details come from the code.
AlignmentOver = Literal["sample", "channel"]

# The authors' combination weights (norm, angle) from their evaluation script, per model family; the norm's scale
# depends on the model, so another model needs its own weights (calibrate them like any threshold).
ANISOTROPY_AUTHOR_WEIGHTS: dict[str, tuple[float, float]] = {"sd1": (1.0, 2.0), "sd2": (1.0, 0.1)}


def guidance_alignment(eps_c: Tensor, eps_u: Tensor, *, over: AlignmentOver = "sample") -> Tensor:
    """``cos∠(eps_u, eps_c - eps_u)`` per sample: the angle between the unconditional score and the guidance
    direction (§6). It equals ``cos∠(s_u, sΔ)`` because both are ``-1/sigma_t`` times their eps forms.

    ``over="sample"`` is the angle between the two flattened vectors; ``over="channel"`` is the cosine over the
    channel axis (dim 1) at each spatial position, averaged over positions, as the authors' released code does.
    A zero vector gives 0.
    """
    if over not in ("sample", "channel"):
        raise ValueError(f"over must be 'sample' or 'channel', got {over!r}")
    u = at_least_fp32(eps_u)
    g = at_least_fp32(eps_c) - u
    if over == "sample" or u.dim() <= 2:
        u, g = u.reshape(u.shape[0], -1), g.reshape(g.shape[0], -1)
    tiny = torch.finfo(u.dtype).tiny
    cos = (u * g).sum(dim=1) / (u.norm(dim=1) * g.norm(dim=1)).clamp_min(tiny)
    return cos.reshape(cos.shape[0], -1).mean(dim=1)


def anisotropy_score(
    guidance_norm: Tensor, alignment: Tensor, *, norm_weight: float = 1.0, alignment_weight: float = 2.0
) -> Tensor:
    """The detector's score ``γ_n ‖eps_c - eps_u‖(t_hi) + γ_a cos∠(eps_u, eps_c - eps_u)(t_lo)`` (§6);
    higher = more likely memorized. Defaults: the authors' SD 1.x weights."""
    return norm_weight * torch.as_tensor(guidance_norm) + alignment_weight * torch.as_tensor(alignment)


def low_noise_timestep(timesteps, from_end: int = 3) -> int:
    """The low-noise evaluation timestep: the ``from_end``-th last timestep of the sampling schedule (the
    authors use the third from the end: ``t = 41`` for SD's 50-step DDIM schedule)."""
    ts = [int(t) for t in (timesteps.tolist() if hasattr(timesteps, "tolist") else timesteps)]
    if not 1 <= from_end <= len(ts):
        raise ValueError(f"from_end must be in 1..{len(ts)}, got {from_end}")
    return ts[-from_end]


@dataclass(frozen=True)
class Anisotropy:
    """The anisotropy detector's two terms and their weighted sum, per sample (§6)."""

    guidance_norm: Tensor  # (B,) ‖eps_c - eps_u‖ at the high-noise (first) step, eps space = Wen's metric there
    alignment: Tensor  # (B,) cos∠(eps_u, eps_c - eps_u) at the low-noise timestep, same latent
    score: Tensor  # (B,) norm_weight * guidance_norm + alignment_weight * alignment


def anisotropy(
    gs_high: GuidedScore,
    gs_low: GuidedScore,
    x: Tensor,
    *,
    eps_high: tuple[Tensor, Tensor] | None = None,
    over: AlignmentOver = "sample",
    norm_weight: float = 1.0,
    alignment_weight: float = 2.0,
) -> Anisotropy:
    """Score the pure-noise latent ``x`` with two guided evaluations (§6): ``gs_high`` at the first sampling
    step gives the guidance norm, ``gs_low`` at a low-noise timestep (:func:`low_noise_timestep`), evaluated at
    the *same* ``x``, gives the angle. Pass ``eps_high = (eps_c, eps_u)`` when the first CFG step already computed
    it: then the detector costs one extra guided evaluation.
    """
    x = at_least_fp32(x)
    with torch.no_grad():
        eps_c_hi, eps_u_hi = gs_high.eps_pair(x) if eps_high is None else eps_high
        eps_c_lo, eps_u_lo = gs_low.eps_pair(x)
    norm = wen_metric(eps_c_hi, eps_u_hi)
    align = guidance_alignment(eps_c_lo, eps_u_lo, over=over)
    score = anisotropy_score(norm, align, norm_weight=norm_weight, alignment_weight=alignment_weight)
    return Anisotropy(guidance_norm=norm, alignment=align, score=score)
