"""AUTOMATIC1111 / Forge: an always-visible "SAIL Scope" script (loaded by ``scripts/sailscope.py``).

What it does, hook by hook (A1111 >= 1.10 and Forge call them in this order):

==================================  ==============================================================
``ui``                              the accordion; its controls' order is the API's ``args`` order
                                    (:data:`ARG_NAMES`)
``process``                         parse/validate the options, start the run state, put the SAIL
                                    settings into ``p.extra_generation_params``
``process_before_every_sampling``   txt2img first pass only (pure noise): build a GuidedScore from the
                                    host denoiser at ``sigmas[0]``, measure step-1 Wen/sharpness, run
                                    SAIL, replace ``x_T`` (A1111: ``x.copy_``; Forge: ``p.modified_noise``),
                                    optionally render the original for comparison. Idempotent across
                                    the hires pass (Forge and A1111 call it again there).
``on_cfg_denoiser``/``on_cfg_denoised``  (A1111) per-step Wen from the cond/uncond x0 rows
post-CFG hook on the UNet patcher   (Forge, where ``on_cfg_denoised`` never fires) the same
``postprocess_image``               keep each result for the comparison image
``postprocess``                     diagnostics image per result into the gallery (and files), metrics
                                    into the infotext / API info, visible messages in the comments
==================================  ==============================================================

Every number comes from ``core`` through :mod:`.common`; this file only talks to the host.
"""
from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from modules import script_callbacks, scripts

from sailscope.core.io import infotext
from sailscope.core.errors import SailScopeError
from sailscope.extension import common, plots

TITLE = "SAIL Scope"
ARG_NAMES = ("sail", "objective", "threshold", "max_steps", "candidates", "lr", "sharpness", "show_original", "save_plots",
             "low_memory")
LOG_PREFIX = "[SAIL Scope]"


def log(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", flush=True)


# ----------------------------------------------------------------------------------------------
# Options from the script args (UI or API ``alwayson_scripts``)
# ----------------------------------------------------------------------------------------------
def options_from_args(args: tuple | list) -> common.HostOptions:
    """``HostOptions`` from positional script args in :data:`ARG_NAMES` order; a dict as the first arg also
    works (API convenience: the WebUI fills the script's other slots with the UI's defaults, which are then
    ignored). Missing trailing args take the defaults; bad values raise ``UserInputError``."""
    if args and isinstance(args[0], dict):
        values = dict(args[0])
    else:
        values = dict(zip(ARG_NAMES, args))
    unknown = set(values) - set(ARG_NAMES)
    if unknown:
        raise common.UserInputError(f"unknown SAIL Scope argument(s) {sorted(unknown)}; expected {list(ARG_NAMES)}")
    casts = {"sail": bool, "objective": str, "threshold": float, "max_steps": int, "candidates": int, "lr": float,
             "sharpness": str, "show_original": bool, "save_plots": bool, "low_memory": bool}
    kwargs = {}
    for name, value in values.items():
        if value is None:
            continue
        try:
            kwargs[name] = casts[name](value)
        except (TypeError, ValueError):
            raise common.UserInputError(f"SAIL Scope argument {name!r} must be {casts[name].__name__}, got {value!r}") from None
    return common.HostOptions(**kwargs)


def _pasted(name: str):
    """``infotext_fields`` entry: the setting ``name`` from a pasted PNG's parsed infotext; ``None`` (A1111:
    leave the control as it is) when the PNG does not record it."""

    def value(params: dict):
        return common.parse_infotext(params).get(name)

    return value


# ----------------------------------------------------------------------------------------------
# Run state (one generation job; A1111 runs one job at a time)
# ----------------------------------------------------------------------------------------------
@dataclass
class ImageRecord:
    seed: int | None = None
    original: common.Probe | None = None  # step-1 metrics at the seed's noise
    sailed: common.Probe | None = None  # step-1 metrics at SAIL's noise
    sail: dict | None = None  # core.mitigation summary (accepted, steps, loss, ...)
    wen: dict = field(default_factory=dict)  # run -> {step: value}
    status: list = field(default_factory=list)
    original_image: Any = None  # PIL, when "show original" rendered it
    result_image: Any = None  # PIL, from postprocess_image


@dataclass
class RunState:
    options: common.HostOptions | None
    batch_size: int
    error: str | None = None
    images: dict = field(default_factory=dict)  # global index -> ImageRecord
    done_first_pass: set = field(default_factory=set)  # iterations whose first pass was handled
    run_label: str = "sampled"
    recording: bool = False
    batch_offset: int = 0
    last_sigma: float | None = None
    step: int = 0
    messages: list = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def record(self, index: int) -> ImageRecord:
        return self.images.setdefault(index, ImageRecord())

    def message(self, text: str, p: Any = None) -> None:
        """Visible: console, the job's comments under the gallery, and the infotext status."""
        if text not in self.messages:
            self.messages.append(text)
            log(text)
            if p is not None and hasattr(p, "comment"):
                p.comment(f"SAIL Scope: {text}")


_ACTIVE: RunState | None = None


def active_state() -> RunState | None:
    return _ACTIVE


def can_record(p: Any) -> bool:
    """Per-step metrics need an uncond pass (CFG > 1) and k-diffusion rows (x0 predictions, sigmas)."""
    return float(getattr(p, "cfg_scale", 7.0)) > 1.0 and hasattr(getattr(p, "sampler", None), "get_sigmas")


def is_forge(p: Any) -> bool:
    """Forge's processing objects carry ``modified_noise``; A1111's do not."""
    return hasattr(p, "modified_noise")


# ----------------------------------------------------------------------------------------------
# Host -> GuidedScore
# ----------------------------------------------------------------------------------------------
def step0_conds(p: Any, c: Any, uc: Any) -> tuple[Any, Any, list]:
    """Per-image (cond, uncond) tensors at step 0 from A1111's prompt-schedule objects; notes for AND prompts."""
    from modules import prompt_parser

    conds_list, cond_tensor = prompt_parser.reconstruct_multicond_batch(c, 0)
    uncond = prompt_parser.reconstruct_cond_batch(uc, 0)
    notes = []
    rows = []
    for i, sub in enumerate(conds_list):
        if len(sub) != 1 or not math.isclose(float(sub[0][1]), 1.0):
            notes.append(f"image {i + 1}: composable (AND / weighted) prompt; metrics and SAIL use its first sub-prompt")
        rows.append(int(sub[0][0]))
    index = torch.tensor(rows, dtype=torch.long)
    if isinstance(cond_tensor, dict):
        cond = {k: v[index.to(v.device)] for k, v in cond_tensor.items()}
    else:
        cond = cond_tensor[index.to(cond_tensor.device)]
    return cond, uncond, notes


def a1111_denoiser(p: Any):
    """``(x_k, sigma_rows, cond) -> x0`` through A1111's k-diffusion wrapper (CompVisDenoiser/CompVisVDenoiser)."""
    model_wrap = p.sampler.model_wrap

    def denoise(x, sigma, cond):
        image_cond = p.txt2img_image_conditioning(x)
        if isinstance(cond, dict):  # SDXL: {"crossattn", "vector"}, as A1111's CFGDenoiser builds it
            cond_in = {**cond, "c_concat": [image_cond]}
        else:
            cond_in = {"c_crossattn": [cond], "c_concat": [image_cond]}
        return model_wrap(x, sigma, cond=cond_in)

    return denoise


def forge_denoiser(p: Any):
    """``(x_k, sigma_rows, cond) -> x0`` through Forge's UNet patcher (``model.apply_model(x, sigma, ...)``)."""
    unet = p.sd_model.forge_objects.unet

    def denoise(x, sigma, cond):
        if isinstance(cond, dict):  # SDXL
            return unet.model.apply_model(x, sigma, c_crossattn=cond["crossattn"], y=cond["vector"])
        return unet.model.apply_model(x, sigma, c_crossattn=cond)

    return denoise


def first_sigma(p: Any) -> float:
    """``sigmas[0]`` of the schedule the sampler will use (k-diffusion samplers only)."""
    get_sigmas = getattr(p.sampler, "get_sigmas", None)
    if get_sigmas is None:
        raise common.HostError(
            f"sampler {getattr(p, 'sampler_name', '?')!r} is not a k-diffusion sampler (no sigmas); "
            "SAIL and the metrics are available with k-diffusion samplers (Euler, Euler a, DPM++ ...)"
        )
    sigmas = get_sigmas(p, p.steps)
    return float(sigmas[0])


def noise_scaling(p: Any) -> str:
    """A1111/Forge start at ``noise * sigmas[0]`` unless "SGM noise multiplier" is on (``sqrt(1+sigma^2)``)."""
    from modules import shared

    return "max_denoise" if getattr(shared.opts, "sgm_noise_multiplier", False) else "sigma"


@dataclass
class HostScore:
    sigma_k: float
    scaling: str
    cond: Any
    uncond: Any
    denoise: Any
    notes: list

    def image(self, i: int) -> common.GuidedScore:
        """Image ``i``'s guided score (one-row conditioning: any batch, for SAIL's candidates)."""
        return common.guided_from_denoiser(self.denoise, common.select_cond(self.cond, i), common.select_cond(self.uncond, i), self.sigma_k)

    def batch(self) -> common.GuidedScore:
        return common.guided_from_denoiser(self.denoise, self.cond, self.uncond, self.sigma_k)


def host_score(p: Any, c: Any, uc: Any) -> HostScore:
    sigma_k = first_sigma(p)
    cond, uncond, notes = step0_conds(p, c, uc)
    denoise = forge_denoiser(p) if is_forge(p) else a1111_denoiser(p)
    return HostScore(sigma_k=sigma_k, scaling=noise_scaling(p), cond=cond, uncond=uncond, denoise=denoise, notes=notes)


def prediction_type(p: Any) -> str:
    """``v_prediction`` for v-models (SD 2.x 768): SAIL's default α depends on it."""
    if getattr(p.sd_model, "parameterization", "eps") == "v":
        return "v_prediction"
    return "epsilon"


def unet_dtype(p: Any) -> torch.dtype | None:
    """The UNet's compute dtype (A1111/Forge: ``devices.dtype_unet``); None when unknown."""
    try:
        from modules import devices

        return getattr(devices, "dtype_unet", None)
    except ImportError:
        return None


def prepare_forge_model(p: Any, x: Any) -> Any:
    """Forge loads the UNet in ``sampler.sample``; load it now for our calls. Returns a cleanup callable."""
    try:
        from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare
    except ImportError:
        return lambda: None
    unet = p.sd_model.forge_objects.unet
    sampling_prepare(unet, x)
    return lambda: sampling_cleanup(unet)


# ----------------------------------------------------------------------------------------------
# Per-step metrics (A1111 CFG callbacks, Forge post-CFG hook)
# ----------------------------------------------------------------------------------------------
def _record_step(state: RunState, sigma: Any, x0_c: Any, x0_u: Any) -> None:
    b = state.batch_size
    sig = float(torch.as_tensor(sigma).reshape(-1)[0])
    if state.last_sigma is None or not math.isclose(sig, state.last_sigma, rel_tol=1e-6):
        state.step += 1
        state.last_sigma = sig
    if x0_u is None or x0_c is None or x0_c.shape[0] < b or x0_u.shape[0] < b:
        state.message("per-step metrics not available: the sampler ran no unconditional pass at some steps")
        return
    # A skipped uncond pass ("skip early CFG", NGMS): A1111 puts the cond prediction in its rows, Forge's
    # calc_cond_uncond_batch returns zeros for it.
    if torch.equal(x0_c[:b], x0_u[:b]) or not bool(torch.any(x0_u[:b])):
        state.message("per-step metrics not available at steps where the uncond pass was skipped")
        return
    wen = common.wen_from_denoised(x0_c[:b], x0_u[:b], sig).tolist()
    for i, value in enumerate(wen):
        state.record(state.batch_offset + i).wen.setdefault(state.run_label, {})[state.step] = value


def on_cfg_denoiser(params: Any) -> None:
    """A1111: remember nothing but that a step starts (sigma comes with the denoised rows below)."""
    state = _ACTIVE
    if state is None or not state.recording:
        return
    state._pending_sigma = params.sigma  # type: ignore[attr-defined]


def on_cfg_denoised(params: Any) -> None:
    """A1111: ``params.x`` holds the cond rows first and the uncond rows last (batch_size each)."""
    state = _ACTIVE
    if state is None or not state.recording:
        return
    x_out = params.x
    b = state.batch_size
    sigma = getattr(state, "_pending_sigma", None)
    if sigma is None:
        return
    if x_out.shape[0] != 2 * b:
        state.message("per-step metrics not available for composable (AND) prompts")
        return
    _record_step(state, sigma, x_out[:b], x_out[b:])


def forge_post_cfg(args: dict) -> Any:
    """Forge: ``sampler_post_cfg_function`` gets cond_denoised/uncond_denoised/sigma/input; returns denoised."""
    state = _ACTIVE
    if state is not None and state.recording:
        try:
            _record_step(state, args["sigma"], args.get("cond_denoised"), args.get("uncond_denoised"))
        except Exception as exc:  # never break the user's sampling
            state.message(f"per-step metric failed: {type(exc).__name__}: {exc}")
    return args["denoised"]


def install_forge_hook(p: Any) -> None:
    unet = p.sd_model.forge_objects.unet.clone()
    unet.set_model_sampler_post_cfg_function(forge_post_cfg)
    p.sd_model.forge_objects.unet = unet


_REGISTERED = False


def register_callbacks() -> None:
    """Called by the shim each time A1111 (re)loads scripts (``load_scripts`` clears all callbacks first)."""
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="sailscope_cfg_denoiser")
    script_callbacks.on_cfg_denoised(on_cfg_denoised, name="sailscope_cfg_denoised")
    script_callbacks.on_ui_tabs(on_ui_tabs, name="sailscope_tab")


# ----------------------------------------------------------------------------------------------
# The "SAIL Scope" tab
# ----------------------------------------------------------------------------------------------
def on_ui_tabs():
    """The app's Blocks as a tab; its Model tab lists A1111's checkpoints (loaded separately, in diffusers)."""
    import gradio as gr

    try:
        from modules import paths, shared

        from sailscope.ui.app import build_ui
        from sailscope.ui.jobs import AppConfig

        models_dir = os.path.join(getattr(paths, "models_path", "models"), "Stable-diffusion")
        outdir = os.path.join(getattr(shared.opts, "outdir_samples", "") or "outputs", "sailscope")
        demo = build_ui(AppConfig(model=None, models_dirs=(models_dir,), allow_paths=True, outputs=outdir))
    except Exception as exc:
        log(f"tab unavailable: {type(exc).__name__}: {exc}")
        with gr.Blocks(analytics_enabled=False) as demo:
            gr.Markdown(f"**SAIL Scope tab could not be built**: `{type(exc).__name__}: {exc}`. "
                        "The txt2img accordion still works.")
    return [(demo, TITLE, "sailscope_tab")]


# ----------------------------------------------------------------------------------------------
# The script
# ----------------------------------------------------------------------------------------------
class SailScopeScript(scripts.Script):
    sorting_priority = 50

    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr  # A1111 3.41 / Forge 4.x: only components and arguments both versions share

        d = common.HostOptions()
        with gr.Accordion(TITLE, open=False, elem_id=self.elem_id("accordion")):
            if is_img2img:
                gr.Markdown("SAIL changes the initial noise, so it only applies where sampling starts from pure noise "
                            "(txt2img). Here it is skipped; the metrics are still recorded.")
            with gr.Row():
                sail = gr.Checkbox(label="SAIL: optimize the initial noise", value=d.sail, elem_id=self.elem_id("sail"))
                show_original = gr.Checkbox(label="Also render the original (for comparison)", value=d.show_original,
                                            elem_id=self.elem_id("show_original"))
            with gr.Row():
                objective = gr.Dropdown(label="Objective", choices=list(common.OBJECTIVE_CHOICES), value=d.objective,
                                        elem_id=self.elem_id("objective"))
                threshold = gr.Number(label="Threshold (8.2 = SD 1.4, reference objective; calibrate per model)",
                                      value=d.threshold, elem_id=self.elem_id("threshold"))
                sharpness = gr.Radio(label="Step-1 sharpness", choices=list(common.SHARPNESS_METHODS),
                                     value=d.sharpness, elem_id=self.elem_id("sharpness"))
            with gr.Row():
                max_steps = gr.Slider(label="Max Adam steps", minimum=0, maximum=50, step=1, value=d.max_steps,
                                      elem_id=self.elem_id("max_steps"))
                candidates = gr.Slider(label="Candidates", minimum=1, maximum=16, step=1, value=d.candidates,
                                       elem_id=self.elem_id("candidates"))
                lr = gr.Number(label="Learning rate", value=d.lr, elem_id=self.elem_id("lr"))
                save_plots = gr.Checkbox(label="Save diagnostics files", value=d.save_plots, elem_id=self.elem_id("save_plots"))
                low_memory = gr.Checkbox(label="SAIL low memory (activations in CPU RAM: same result, GPU memory of plain sampling; "
                                               "needs much RAM, ~42 GB for SDXL at 1024², and is slower)",
                                         value=d.low_memory, elem_id=self.elem_id("low_memory"))
        controls = [sail, objective, threshold, max_steps, candidates, lr, sharpness, show_original, save_plots, low_memory]
        pasted = {"sail": sail, "objective": objective, "threshold": threshold, "max_steps": max_steps,
                  "candidates": candidates, "lr": lr}
        # A1111 calls each function with the parsed infotext; a value the PNG lacks keeps the UI's own
        self.infotext_fields = [(component, _pasted(name)) for name, component in pasted.items()]
        self.paste_field_names = [infotext.text(name) for name in pasted]
        return controls

    # -- process ---------------------------------------------------------------------------------
    def process(self, p, *args):
        global _ACTIVE
        _ACTIVE = None
        try:
            options = options_from_args(args)
        except SailScopeError as exc:
            state = RunState(options=None, batch_size=int(p.batch_size), error=str(exc))
            _ACTIVE = state
            state.message(f"settings rejected, SAIL Scope is off for this job: {exc}", p)
            return
        state = RunState(options=options, batch_size=int(p.batch_size))
        _ACTIVE = state
        if options.sail:
            p.extra_generation_params.update(common.infotext_settings(options))
        for name in common.IMAGE_FIELDS:
            p.extra_generation_params[infotext.text(name)] = _infotext_value(state, name)
        if float(getattr(p, "cfg_scale", 7.0)) <= 1.0:
            state.message("not available at CFG scale 1: SAIL and the metrics compare the conditional and "
                          "unconditional predictions, and the sampler runs no unconditional pass", p)

    # -- before every sampling ---------------------------------------------------------------------
    def process_before_every_sampling(self, p, *args, **kwargs):
        state = _ACTIVE
        if state is None or state.options is None:
            return
        iteration = int(getattr(p, "iteration", 0))
        state.batch_offset = iteration * state.batch_size
        hires = bool(getattr(p, "is_hr_pass", False))
        if is_forge(p):
            install_forge_hook(p)  # Forge resets its UNet patcher before every sampling
        if hires or iteration in state.done_first_pass:
            state.recording = False  # the hires pass: nothing changes, nothing is recorded twice
            return
        state.done_first_pass.add(iteration)
        state.recording = can_record(p)
        if not hasattr(getattr(p, "sampler", None), "get_sigmas"):
            state.message(f"not available for sampler {getattr(p, 'sampler_name', '?')!r}: SAIL Scope reads k-diffusion "
                          "samplers (Euler, Euler a, DPM++ ...); timestep samplers (DDIM, PLMS, UniPC) are not supported", p)
            return
        state.run_label = "sampled"
        state.step, state.last_sigma = 0, None
        seeds = list(getattr(p, "seeds", []) or [])
        for i in range(state.batch_size):
            state.record(state.batch_offset + i).seed = seeds[i] if i < len(seeds) else None
        if float(getattr(p, "cfg_scale", 7.0)) <= 1.0:
            return
        x = kwargs.get("x")
        if x is None:
            state.message("this host version passes no x_T to process_before_every_sampling (A1111 >= 1.10 needed)", p)
            return
        pure_noise = not hasattr(p, "init_images")  # img2img/inpaint start from an image, not from x_T
        try:
            self._step1(p, state, x, kwargs.get("noise", x), kwargs.get("c"), kwargs.get("uc"), pure_noise, seeds)
        except SailScopeError as exc:
            state.message(str(exc), p)
        except Exception as exc:  # never fail silently, never break the user's generation
            log(traceback.format_exc())
            state.message(f"SAIL Scope failed ({type(exc).__name__}: {exc}); the image uses the seed's noise", p)
        finally:
            state.recording = can_record(p)

    def _step1(self, p, state: RunState, x, noise, c, uc, pure_noise: bool, seeds: list) -> None:
        opts = state.options
        if c is None or uc is None:
            raise common.HostError("the host passed no conditioning (c/uc) to process_before_every_sampling")
        if not pure_noise:
            state.message("step-1 metrics and SAIL skipped: sampling starts from an image here, not from pure noise "
                          "(per-step metrics are still recorded)", p)
            return
        cleanup = prepare_forge_model(p, x) if is_forge(p) else (lambda: None)
        try:
            hs = host_score(p, c, uc)
            for note in hs.notes:
                state.message(note, p)
            start_noise = noise.detach().clone()
            if opts.sharpness != "off":
                pr = common.probe(hs.batch(), common.noise_to_vp(start_noise, hs.sigma_k, hs.scaling), method=opts.sharpness)
                self._store_probe(state, pr, "original")
            if not opts.sail:
                return
            try:
                outcome = common.run_sail(hs.image, start_noise, hs.sigma_k, hs.scaling, opts, seeds=seeds,
                                          prediction_type=prediction_type(p), model_dtype=unet_dtype(p))
            except common.HostError as exc:
                raise common.HostError(f"SAIL did not run, so the image uses the seed's noise: {exc}") from exc
            for w in outcome.warnings:
                state.message(w, p)
            for i, s in enumerate(outcome.summary):
                state.record(state.batch_offset + i).sail = s
            if opts.sharpness != "off":
                pr = common.probe(hs.batch(), common.noise_to_vp(outcome.noise, hs.sigma_k, hs.scaling), method=opts.sharpness)
                self._store_probe(state, pr, "sailed")
            if opts.show_original:
                self._render_original(p, state, x.detach().clone(), c, uc)
            new = outcome.noise.to(x.device, x.dtype)
            if is_forge(p):
                p.modified_noise = new
            else:
                x.copy_(new)
            state.run_label = "sail"
        finally:
            cleanup()

    @staticmethod
    def _store_probe(state: RunState, pr: common.Probe, attr: str) -> None:
        for i in range(len(pr.wen)):
            one = common.Probe(wen=[pr.wen[i]], sharpness=[pr.sharpness[i]], sharpness_eps=[pr.sharpness_eps[i]],
                               sigma_vp=pr.sigma_vp, method=pr.method)
            setattr(state.record(state.batch_offset + i), attr, one)

    def _render_original(self, p, state: RunState, x_orig, c, uc) -> None:
        """Sample the seed's noise once more with a fresh sampler and decode it (shown next to the result)."""
        from modules import processing, sd_samplers

        state.run_label = "original"
        try:
            sampler = sd_samplers.create_sampler(p.sampler_name, p.sd_model)
            samples = sampler.sample(p, x_orig, c, uc, image_conditioning=p.txt2img_image_conditioning(x_orig))
            decoded = processing.decode_latent_batch(p.sd_model, samples, target_device=torch.device("cpu"), check_for_nans=True)
            for i, img in enumerate(decoded):
                state.record(state.batch_offset + i).original_image = _tensor_to_pil(img)
        finally:
            state.step, state.last_sigma = 0, None

    # -- results -----------------------------------------------------------------------------------
    def postprocess_image(self, p, pp, *args):
        state = _ACTIVE
        if state is None or state.options is None:
            return
        index = int(getattr(p, "iteration", 0)) * state.batch_size + int(getattr(p, "batch_index", 0))
        state.record(index).result_image = pp.image

    def postprocess(self, p, processed, *args):
        global _ACTIVE
        state = _ACTIVE
        if state is None:
            return
        try:
            if state.options is not None:
                self._publish(p, processed, state)
        except Exception as exc:
            log(traceback.format_exc())
            state.message(f"diagnostics failed: {type(exc).__name__}: {exc}", p)
        finally:
            state.recording = False
            _ACTIVE = None

    def _publish(self, p, processed, state: RunState) -> None:
        outdir = os.path.join(getattr(p, "outpath_samples", "") or "outputs", "sailscope")
        report = []
        for index in sorted(state.images):
            rec = state.images[index]
            summary = image_summary(state, index)
            report.append({"index": index, "seed": rec.seed, **summary, "wen_per_step": rec.wen})
            panel = diagnostics_image(state, index)
            extra = [panel]
            if rec.original_image is not None and rec.result_image is not None:
                extra.insert(0, plots.side_by_side([rec.original_image, rec.result_image], ["original", "SAIL"]))
            for im in extra:
                processed.images.append(im)
                processed.infotexts.append(processed.infotexts[0] if processed.infotexts else "")
            if state.options.save_plots and not getattr(p, "do_not_save_samples", False):  # API save_images=false
                from sailscope.core.io.files import save_png_atomic, write_json_atomic  # only when plots are saved

                stem = f"{rec.seed if rec.seed is not None else index}-{int(time.time())}-{index}"
                save_png_atomic(panel, os.path.join(outdir, f"{stem}-diagnostics.png"))
                write_json_atomic(os.path.join(outdir, f"{stem}-report.json"), report[-1])
        # API info (json of p.extra_generation_params): concrete values of the first image, not callables
        first = common.infotext_image(image_summary(state, min(state.images))) if state.images else {}
        for name in common.IMAGE_FIELDS:
            key = infotext.text(name)
            if key in first:
                p.extra_generation_params[key] = first[key]
            else:
                p.extra_generation_params.pop(key, None)
        processed.sailscope = report
        if hasattr(processed, "comments"):  # shown under the gallery; p.comment() already added most of them
            comments = processed.comments or ""
            for m in state.messages:
                if f"SAIL Scope: {m}" not in comments:
                    comments = (comments + f"\nSAIL Scope: {m}").strip()
            processed.comments = comments


# ----------------------------------------------------------------------------------------------
# Summaries, infotext values and the diagnostics image
# ----------------------------------------------------------------------------------------------
def image_summary(state: RunState, index: int) -> dict:
    """The per-image dict :func:`common.infotext_image` formats."""
    rec = state.images.get(index, ImageRecord())
    out: dict = {}
    current = rec.sailed or rec.original
    if current is not None:
        out["wen"], out["sharpness"] = current.wen[0], current.sharpness[0]
    if rec.sailed is not None and rec.original is not None:
        out["original_wen"], out["original_sharpness"] = rec.original.wen[0], rec.original.sharpness[0]
    if rec.sail is not None:
        out["sail"] = rec.sail
        out.update(steps=rec.sail.get("steps"), converged=rec.sail.get("accepted"), start_loss=rec.sail.get("initial_loss"),
                   loss=rec.sail.get("loss"))
    if state.messages:
        out["status"] = "; ".join(state.messages)[:300]
    return out


def _infotext_value(state: RunState, name: str):
    """A callable for ``p.extra_generation_params``: A1111 calls it with create_infotext's locals. From
    process_images (``all_prompts`` is the batch's ``p.prompts``) ``index`` is the position in the batch
    ``p.iteration``; from ``Processed.infotext`` / the hires "before" image (``all_prompts`` = the job's) and for
    the grid (``use_main_prompt``, index 0) it is already the job-wide index."""
    key = infotext.text(name)

    def value(**kw):
        p = kw.get("p")
        i = int(kw.get("index") or 0)
        per_batch = p is not None and not kw.get("use_main_prompt") and kw.get("all_prompts") is getattr(p, "prompts", None)
        index = int(getattr(p, "iteration", 0)) * state.batch_size + i if per_batch else i
        return common.infotext_image(image_summary(state, index)).get(key)

    return value


def diagnostics_image(state: RunState, index: int):
    rec = state.images.get(index, ImageRecord())
    n = max([max(v) for v in rec.wen.values() if v] + [1])
    series = {run: [vals.get(s) for s in range(1, n + 1)] for run, vals in rec.wen.items()}
    chart = plots.line_plot(series, title=f"Wen's metric per step (image {index + 1}, seed {rec.seed})",
                            ylabel="‖eps_c - eps_u‖")
    lines = []
    if rec.original is not None:
        lines.append(f"step-1 sharpness ‖HΔsΔ‖² ({rec.original.method}): original {rec.original.sharpness[0]:.4g}"
                     + (f", SAIL {rec.sailed.sharpness[0]:.4g}" if rec.sailed else ""))
        lines.append(f"step-1 Wen: original {rec.original.wen[0]:.4g}" + (f", SAIL {rec.sailed.wen[0]:.4g}" if rec.sailed else ""))
    if rec.sail:
        lines.append(f"SAIL: {'accepted' if rec.sail.get('accepted') else 'not accepted'}, {rec.sail.get('steps')} steps, "
                     f"loss {rec.sail.get('initial_loss', float('nan')):.4g} -> {rec.sail.get('loss', float('nan')):.4g} "
                     f"(threshold {rec.sail.get('threshold')})")
    if not rec.wen:
        lines.append("per-step metrics: not available")
    lines += [f"note: {m}" for m in state.messages]
    return plots.stack([chart, plots.text_panel(lines or ["no metrics"], size=(512, 130))])


def _tensor_to_pil(t: Any):
    import numpy as np
    from PIL import Image

    arr = ((t.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return Image.fromarray(np.moveaxis(arr, 0, 2))


__all__ = ["SailScopeScript", "register_callbacks", "options_from_args", "ARG_NAMES", "on_ui_tabs"]
