"""ComfyUI nodes: SAIL noise (-> NOISE for SamplerCustomAdvanced), a sharpness probe and a compare node.

Importing this module is cheap (no torch, no ComfyUI imports): the repository root's ``__init__.py``
re-exports :data:`NODE_CLASS_MAPPINGS` when ComfyUI scans ``custom_nodes``. Everything heavy happens
inside the node functions.

How the model is evaluated: the nodes never rebuild ComfyUI's conditioning logic. They run ComfyUI's own
``CFGGuider`` with a one-step custom ``KSAMPLER`` whose sampler function calls the model; a post-CFG hook
(``set_model_sampler_post_cfg_function(..., disable_cfg1_optimization=True)``) captures
``cond_denoised``/``uncond_denoised`` (x0 predictions), which :mod:`.common` turns into a
:class:`~sailscope.core.score.GuidedScore`. So ControlNets, LoRAs, area conds and model patches apply
exactly as in sampling. ComfyUI runs nodes under ``torch.inference_mode()``; SAIL re-enables autograd
(``inference_mode(False)`` + cloned tensors).

Noise convention: ``noise_scaling(max_denoise=True)`` starts sampling at ``x_k = noise sqrt(1+sigma^2)``,
so at full denoise the VP latent is the unit noise itself (``c = 1`` in :mod:`.common`).
"""
from __future__ import annotations

from typing import Any

CATEGORY = "sampling/SAIL Scope"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _conditioning_inputs() -> dict:
    """The inputs every SAIL Scope node samples from: model, both conditionings, the latent to match."""
    return {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",)}


def _sail_inputs() -> dict:
    return {
        "sail": ("BOOLEAN", {"default": True, "tooltip": "Optimize the initial noise with SAIL (off: the seed's noise)"}),
        "objective": (["reference", "paper"], {"default": "reference",
                                                "tooltip": "reference: the authors' eps-space proxy; paper: ‖HΔsΔ‖² by finite difference"}),
        "threshold": ("FLOAT", {"default": 8.2, "min": 0.0, "max": 1e12, "step": 0.1,
                                "tooltip": "Accept a noise when its SAIL loss is <= this (8.2: SD 1.4, reference objective; calibrate per model)"}),
        "max_steps": ("INT", {"default": 10, "min": 0, "max": 1000}),
        "candidates": ("INT", {"default": 1, "min": 1, "max": 64}),
        "lr": ("FLOAT", {"default": 0.05, "min": 1e-5, "max": 10.0, "step": 0.005}),
    }


def _common():
    """The torch side, imported when a node first runs: ComfyUI imports this module at start-up (keep it cheap)."""
    from sailscope.extension import common

    return common


# ----------------------------------------------------------------------------------------------
# Evaluating a ComfyUI MODEL through its own guider
# ----------------------------------------------------------------------------------------------
def sigma_start(model: Any, sigmas: Any = None) -> tuple[float, bool]:
    """``(sigma_k of step 1, max_denoise)``: ``sigmas[0]`` when given, else the model's ``sigma_max``."""
    sampling = model.get_model_object("model_sampling")
    sigma_max = float(sampling.sigma_max)
    if sigmas is None or len(sigmas) == 0:
        return sigma_max, True
    s0 = float(sigmas[0])
    import math

    return s0, math.isclose(sigma_max, s0, rel_tol=1e-05) or s0 > sigma_max


def run_with_model(model: Any, positive: Any, negative: Any, cfg: float, latent_samples: Any, sigma_k: float,
                   seed: int, fn: Any) -> Any:
    """Call ``fn(x0_pair)`` inside ComfyUI's sampling context (model loaded, conds processed, patches on).

    ``x0_pair(x_k, sigma_rows) -> (cond_denoised, uncond_denoised)`` is one guided model call.
    """
    import torch
    import comfy.samplers

    common = _common()
    captured: list = []

    def capture(args: dict) -> Any:
        captured.append((args["cond_denoised"], args["uncond_denoised"]))
        return args["denoised"]

    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(capture, disable_cfg1_optimization=True)
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    out: dict = {}

    def sampler_function(model_k, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        extra = dict(extra_args or {})
        device = x.device

        def x0_pair(x_k, sigma_rows):
            captured.clear()
            model_k(x_k.to(device), sigma_rows.to(device), **extra)
            if not captured:
                raise common.HostError("ComfyUI did not call the post-CFG hook; this ComfyUI version is not supported")
            return captured[-1]

        out["value"] = fn(x0_pair)
        return x

    sampler = comfy.samplers.KSAMPLER(sampler_function)
    sigmas = torch.tensor([float(sigma_k), 0.0], dtype=torch.float32)
    guider.sample(torch.zeros_like(latent_samples), latent_samples, sampler, sigmas, disable_pbar=True, seed=seed)
    if "value" not in out:
        raise common.HostError("ComfyUI's sampler did not run the SAIL Scope evaluation")
    return out["value"]


def _model_dtype(model: Any) -> Any:
    """``ModelPatcher.model_dtype()`` (the UNet's compute dtype) when available."""
    fn = getattr(model, "model_dtype", None)
    try:
        return fn() if callable(fn) else None
    except Exception:
        return None


def _prediction_type(model: Any) -> str:
    """``v_prediction`` when ComfyUI's model_sampling is V_PREDICTION (SAIL's default α depends on it)."""
    sampling = model.get_model_object("model_sampling")
    names = [c.__name__ for c in type(sampling).__mro__]
    return "v_prediction" if "V_PREDICTION" in names else "epsilon"


def _stock_noise(latent: dict, seed: int) -> Any:
    """Exactly what ComfyUI's ``RandomNoise`` gives for this latent and seed."""
    import comfy.sample

    return comfy.sample.prepare_noise(latent["samples"], seed, latent.get("batch_index"))


def _is_empty_latent(samples: Any) -> bool:
    return bool((samples == 0).all())


def _to_comfy_image(pil_images: list) -> Any:
    """PIL images (same size) -> ComfyUI IMAGE: float tensor (B, H, W, 3) in [0, 1]."""
    import numpy as np
    import torch

    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in pil_images]
    return torch.from_numpy(np.stack(arrays))


def _from_comfy_image(image: Any) -> list:
    import numpy as np
    from PIL import Image

    arr = (image.detach().cpu().float().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a[..., :3]) for a in arr]


def _fmt_list(values: list) -> str:
    return ", ".join("n/a" if v is None else f"{float(v):.4g}" for v in values)


# ----------------------------------------------------------------------------------------------
# NOISE object (the contract SamplerCustomAdvanced consumes)
# ----------------------------------------------------------------------------------------------
class SailNoise:
    """A ComfyUI NOISE: ``.seed`` and ``.generate_noise(input_latent)`` returning the SAIL-optimized noise."""

    def __init__(self, seed: int, noise: Any, report: str = "") -> None:
        self.seed = int(seed)
        self.noise = noise
        self.report = report

    def generate_noise(self, input_latent: dict) -> Any:
        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.noise.shape):
            raise ValueError(
                f"SAIL noise was optimized for a latent of shape {tuple(self.noise.shape)}, but the sampler got "
                f"{tuple(samples.shape)}: connect the same LATENT to the SAIL Scope noise node and the sampler"
            )
        return self.noise.clone()


# ----------------------------------------------------------------------------------------------
# Nodes
# ----------------------------------------------------------------------------------------------
class SailScopeNoise:
    """SAIL: optimize the initial noise for (model, prompt) before sampling; plug into SamplerCustomAdvanced."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **_conditioning_inputs(),
                "noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                **_sail_inputs(),
            },
            "optional": {
                "sigmas": ("SIGMAS",),
                "low_memory": ("BOOLEAN", {"default": False, "tooltip": "Keep SAIL's saved activations in CPU RAM: the same "
                                           "noise with the VRAM of plain sampling, but much RAM (~42 GB for SDXL at "
                                           "1024²) and slower"}),
            },
        }

    RETURN_TYPES = ("NOISE", "STRING", "IMAGE")
    RETURN_NAMES = ("noise", "report", "plot")
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = "SAIL (sharpness-aware initialization): a memorization-mitigating initial noise for SamplerCustomAdvanced."

    def build(self, model, positive, negative, latent_image, noise_seed, cfg, sail, objective, threshold, max_steps,
              candidates, lr, sigmas=None, low_memory=False):
        from sailscope.extension import plots  # plotting libraries load when a node runs, not at ComfyUI start-up

        common = _common()
        options = common.HostOptions(sail=bool(sail), objective=objective, threshold=float(threshold),
                                     max_steps=int(max_steps), candidates=int(candidates), lr=float(lr),
                                     low_memory=bool(low_memory))
        stock = _stock_noise(latent_image, noise_seed)
        if not options.sail:
            report = "SAIL off: the seed's noise (same as RandomNoise)"
            return (SailNoise(noise_seed, stock, report), report, _to_comfy_image([plots.text_panel([report])]))
        samples = latent_image["samples"]
        sigma_k, max_denoise = sigma_start(model, sigmas)
        if not (max_denoise and _is_empty_latent(samples)):
            raise common.HostError(
                "SAIL needs sampling to start from pure noise (an empty latent and denoise = 1); this latent is "
                "an image or the sigmas start below sigma_max. Turn SAIL off for img2img / second passes."
            )
        batch = int(samples.shape[0])
        seeds = [int(noise_seed) + i for i in range(batch)]

        def evaluate(x0_pair):
            # ComfyUI repeats a conditioning to any latent batch, so one image's SAIL candidates can be
            # evaluated on their own (one prompt per ComfyUI batch, as the sampler itself uses it).
            def make_gs(i):
                return common.guided_from_x0_pair(x0_pair, sigma_k)

            outcome = common.run_sail(make_gs, stock, sigma_k, "max_denoise", options, seeds=seeds,
                                      prediction_type=_prediction_type(model), model_dtype=_model_dtype(model))
            gs = common.guided_from_x0_pair(x0_pair, sigma_k)
            before = common.probe(gs, common.noise_to_vp(stock, sigma_k, "max_denoise"))
            after = common.probe(gs, common.noise_to_vp(outcome.noise, sigma_k, "max_denoise"))
            return outcome, before, after

        try:
            outcome, before, after = run_with_model(model, positive, negative, cfg, samples, sigma_k, noise_seed, evaluate)
        except common.HostError as exc:
            raise common.HostError(
                f"SAIL Scope stopped this prompt because SAIL could not run: {exc} Images of earlier prompts are "
                "kept; set 'sail' to false on this node to sample from the seed's noise (RandomNoise's noise)."
            ) from exc
        lines = [
            f"SAIL ({options.objective}, threshold {options.threshold:g}, ≤{options.max_steps} steps) on {batch} image(s)",
            "accepted: " + ", ".join(str(s["accepted"]) for s in outcome.summary),
            "Adam steps: " + ", ".join(str(s["steps"]) for s in outcome.summary),
            "SAIL loss: " + _fmt_list([s["initial_loss"] for s in outcome.summary]) + " -> "
            + _fmt_list([s["loss"] for s in outcome.summary]),
            "Wen (step 1): " + _fmt_list(before.wen) + " -> " + _fmt_list(after.wen),
            "sharpness ‖HΔsΔ‖² (step 1, fd): " + _fmt_list(before.sharpness) + " -> " + _fmt_list(after.sharpness),
            *outcome.warnings,
        ]
        report = "\n".join(lines)
        curves = {f"image {i + 1}": [_trace_loss(r, step) for step in r.trace] for i, r in enumerate(outcome.results)}
        plot = plots.stack([plots.line_plot(curves, title="SAIL loss per Adam step", xlabel="evaluation"),
                            plots.text_panel(lines, size=(512, 150))])
        return (SailNoise(noise_seed, outcome.noise, report), report, _to_comfy_image([plot]))


def _trace_loss(result: Any, step: Any) -> float | None:
    """Image 0's (the only image of a per-image SAIL result) lowest active-candidate loss at a trace step."""
    vals = [v for v, g in zip(step.loss, result.candidate_image) if g == 0 and v is not None]
    return min(vals) if vals else None


class SailScopeSharpness:
    """Memorization probe at step 1: Wen's metric, sharpness ‖HΔ sΔ‖² and (optionally) the eigen-spectrum."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **_conditioning_inputs(),
                "noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED}),
                "method": (["fd", "exact"], {"default": "fd",
                                             "tooltip": "fd: one extra CFG call; exact: a JVP (MATH attention, more memory)"}),
                "spectrum_k": ("INT", {"default": 0, "min": 0, "max": 64,
                                       "tooltip": "Eigenvalues of HΔ to compute (Arnoldi) for image 1; 0 = off"}),
            },
            "optional": {"noise": ("NOISE",), "sigmas": ("SIGMAS",)},
        }

    RETURN_TYPES = ("FLOAT", "IMAGE", "STRING")
    RETURN_NAMES = ("sharpness", "plot", "report")
    FUNCTION = "probe"
    CATEGORY = CATEGORY
    DESCRIPTION = "Step-1 memorization metrics for a prompt and noise (SAIL noise or the seed's)."

    def probe(self, model, positive, negative, latent_image, noise_seed, method, spectrum_k, noise=None, sigmas=None):
        from sailscope.extension import plots

        common = _common()
        if method not in ("fd", "exact"):
            raise common.HostError(f"method must be fd or exact, got {method!r}")
        samples = latent_image["samples"]
        x_T = noise.generate_noise(latent_image) if noise is not None else _stock_noise(latent_image, noise_seed)
        sigma_k, max_denoise = sigma_start(model, sigmas)
        scaling = "max_denoise" if max_denoise else "sigma"
        if not _is_empty_latent(samples):
            raise common.HostError("the sharpness probe reads pure-noise starts: connect an empty latent")

        def evaluate(x0_pair):
            gs = common.guided_from_x0_pair(x0_pair, sigma_k)
            x_vp = common.noise_to_vp(x_T, sigma_k, scaling)
            pr = common.probe(gs, x_vp, method=method)
            spec = None
            if spectrum_k > 0:
                from sailscope.core.spectra import spectrum_at

                with common.gradients_through_host_model():
                    spec = spectrum_at(gs, common.grad_ready(x_vp[:1]), which="delta", k=int(spectrum_k),
                                       method="arnoldi", hvp=method)
            return pr, spec

        pr, spec = run_with_model(model, positive, negative, 7.5, samples, sigma_k, int(noise_seed), evaluate)
        lines = [
            f"Wen ‖eps_c - eps_u‖ (step 1): {_fmt_list(pr.wen)}",
            f"sharpness ‖HΔ sΔ‖² (score space, {pr.method}): {_fmt_list(pr.sharpness)}",
            f"sharpness (authors' eps-space units): {_fmt_list(pr.sharpness_eps)}",
            f"sigma_t = {pr.sigma_vp:.4f} (k-sigma {sigma_k:.4g})",
        ]
        panels = [plots.text_panel(lines, size=(512, 90))]
        if spec is not None:
            panels.insert(0, plots.spectrum_plot(spec.eigenvalues.tolist(), title=f"HΔ spectrum at step 1 (top {spectrum_k} |λ|)"))
            lines.append("eigenvalues: " + ", ".join(f"{complex(v).real:.4g}" for v in spec.eigenvalues.tolist()))
        plot = plots.stack(panels)
        mean = sum(pr.sharpness) / len(pr.sharpness)
        return (float(mean), _to_comfy_image([plot]), "\n".join(lines))


class SailScopeCompare:
    """Original and SAIL images side by side, labelled, with both reports."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"original": ("IMAGE",), "sail": ("IMAGE",)},
            "optional": {"original_report": ("STRING", {"forceInput": True}), "sail_report": ("STRING", {"forceInput": True})},
        }

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("comparison", "report")
    FUNCTION = "compare"
    CATEGORY = CATEGORY
    DESCRIPTION = "Side-by-side comparison of the original and the SAIL image."

    def compare(self, original, sail, original_report="", sail_report=""):
        from sailscope.extension import plots

        a, b = _from_comfy_image(original), _from_comfy_image(sail)
        if len(a) != len(b):
            raise ValueError(f"original has {len(a)} images but sail has {len(b)}; compare equal batches")
        pairs = [plots.side_by_side([x, y], ["original", "SAIL"]) for x, y in zip(a, b)]
        report = "\n".join(t for t in ("[original]\n" + original_report if original_report else "",
                                        "[SAIL]\n" + sail_report if sail_report else "") if t)
        return (_to_comfy_image(pairs), report)


NODE_CLASS_MAPPINGS = {
    "SailScopeNoise": SailScopeNoise,
    "SailScopeSharpness": SailScopeSharpness,
    "SailScopeCompare": SailScopeCompare,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SailScopeNoise": "SAIL Scope: SAIL noise",
    "SailScopeSharpness": "SAIL Scope: sharpness probe",
    "SailScopeCompare": "SAIL Scope: compare original / SAIL",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "SailNoise", "SailScopeNoise", "SailScopeSharpness",
           "SailScopeCompare", "run_with_model", "sigma_start"]
