"""A1111 / Forge script contract, run through stand-ins of the hosts' modules.

The stand-ins (tests/hosts/a1111/modules: scripts, script_callbacks, processing, sd_samplers, prompt_parser,
shared) follow the published signatures of A1111 1.10 exactly: ``Script`` hooks and ``ScriptRunner`` slicing
of ``p.script_args``, ``process_before_every_sampling(p, *args, **kwargs)`` with ``x, noise, c, uc``,
``CFGDenoiserParams``/``CFGDenoisedParams`` (cond rows first, uncond rows last), ``create_infotext``'s
handling of ``extra_generation_params`` (lists indexed, callables called with its locals), sampling under
``torch.no_grad()``; and Forge's differences: ``p.modified_noise``, ``torch.inference_mode()``, no
``on_cfg_denoised`` (a post-CFG hook on the UNet patcher instead, uncond skipped at CFG 1), and
``process_before_every_sampling`` called again for the hires pass. The hooks run in the hosts' real order:
process -> [per batch: process_before_every_sampling -> sampling (CFG callbacks) -> hires pass -> decode ->
postprocess_image per image] -> postprocess. The UNet is the tiny diffusers one wrapped in k-diffusion's
CompVisDenoiser parameterization (A1111) or ComfyUI-style apply_model (Forge), so SAIL's x_T is checked
against core.mitigation on the diffusers path.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch

HOSTS = os.path.join(os.path.dirname(__file__), "hosts")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("sail", "objective", "threshold", "max_steps", "candidates", "lr", "sharpness", "show_original", "save_plots",
          "low_memory")


class ForgePatcher:
    """Forge's UNet patcher surface we use: model.apply_model, model_options, clone, post-CFG hooks."""

    def __init__(self, model, model_options=None):
        self.model = model
        self.model_options = model_options or {}

    def clone(self):  # backend/patcher: model_options deep-copied
        return ForgePatcher(self.model, copy.deepcopy(self.model_options))

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.model_options["sampler_post_cfg_function"] = self.model_options.get("sampler_post_cfg_function", []) + [post_cfg_function]
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True


class ForgeObjects:
    def __init__(self, unet):
        self.unet = unet

    def shallow_copy(self):
        return ForgeObjects(self.unet)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    added = [os.path.join(HOSTS, "a1111"), HOSTS]
    for path in added:
        sys.path.insert(0, path)
    try:
        from denoisers import ComfyBaseModel, a1111_lora_networks, host_loaded_unet, mark_lora_change
        from fixtures import tiny

        from modules import processing, script_callbacks, scripts, sd_samplers, shared

        pipe, dsm = tiny()
        # Forge's UNet as Forge holds it: inference-tensor weights, in-place residuals (tests/hosts/denoisers.py)
        base = ComfyBaseModel(host_loaded_unet(pipe.unet, forge_blocks=True), pipe.scheduler.alphas_cumprod)
        lora = ForgeObjects(ForgePatcher(base))
        # A1111's UNet as A1111 holds it: loaded under no_grad (weights requires_grad=True), Lora's weight restore
        a1111_unet = host_loaded_unet(pipe.unet, inference=False)
        a1111_lora_networks(a1111_unet)
        sd_model = SimpleNamespace(pipe=pipe, unet=a1111_unet, alphas_cumprod=pipe.scheduler.alphas_cumprod,
                                   forge_objects=lora.shallow_copy(), forge_objects_after_applying_lora=lora)
        # load the shim as A1111's script_loading does: extension root first on sys.path, module named by file
        script_callbacks.clear_callbacks()
        old_path = sys.path
        sys.path = [ROOT] + sys.path
        try:
            path = os.path.join(ROOT, "scripts", "sailscope.py")
            spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
            shim = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(shim)
        finally:
            sys.path = old_path
        # load_scripts registers every Script subclass found in the loaded module's namespace
        scripts.scripts_data.clear()
        scripts.register_scripts_from_module(shim, path, ROOT)
        classes = [d.script_class for d in scripts.scripts_data]
        yield SimpleNamespace(processing=processing, scripts=scripts, callbacks=script_callbacks, samplers=sd_samplers, shared=shared,
                              shim=shim, classes=classes, sd_model=sd_model, pipe=pipe,
                              lora_change=lambda: mark_lora_change(a1111_unet),
                              dsm=dsm, out=str(tmp_path_factory.mktemp("outputs")))
    finally:
        for path in added:
            sys.path.remove(path)
        for name in [m for m in sys.modules if m == "modules" or m.startswith("modules.") or m == "denoisers"]:
            del sys.modules[name]


def make_runner(h, is_img2img=False):
    import gradio as gr

    runner = h.scripts.ScriptRunner()
    runner.initialize_scripts(is_img2img)
    with gr.Blocks():
        runner.setup_ui()
    return runner


def run_job(h, args, *, forge=False, img2img=False, cfg_scale=7.0, batch_size=2, n_iter=2, enable_hr=True, skip_early_cond=0.0):
    h.processing.FORGE = forge
    h.shared.opts.skip_early_cond = skip_early_cond
    h.lora_change()  # each job as if the prompt's LoRAs changed: the first forward restores weights
    h.samplers.created.clear()
    runner = make_runner(h, img2img)
    script = runner.alwayson_scripts[0]
    script_args = [None] * script.args_from + list(args)
    kwargs = dict(sd_model=h.sd_model, prompt="a red square", negative_prompt="", seed=11, steps=3, cfg_scale=cfg_scale,
                  batch_size=batch_size, n_iter=n_iter, script_args=script_args, scripts=runner, outpath_samples=h.out)
    calls = []
    original_hook = script.process_before_every_sampling

    def spy(p, *a, **kw):
        calls.append((p.iteration, p.is_hr_pass, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return original_hook(p, *a, **kw)

    script.process_before_every_sampling = spy
    if img2img:
        p = h.processing.StableDiffusionProcessingImg2Img(init_images=["img"], **kwargs)
    else:
        p = h.processing.StableDiffusionProcessingTxt2Img(enable_hr=enable_hr, **kwargs)
    try:
        processed = h.processing.process_images(p)
    finally:
        h.processing.FORGE = False
        h.shared.opts.skip_early_cond = 0.0
    return p, processed, calls


def ui_args(**over):
    from sailscope.extension.common import HostOptions

    d = HostOptions().to_dict()
    d.update(sail=True, threshold=0.0, max_steps=2, sharpness="fd", show_original=True, save_plots=True)
    d.update(over)
    return [d[k] for k in FIELDS]


def parse(text):
    from sailscope.extension.common import parse_infotext_line

    return parse_infotext_line(text.splitlines()[-1])


# ---------------------------------------------------------------------------------------------
def test_shim_registers_one_always_visible_script(host):
    h = host
    assert [c.__name__ for c in h.classes] == ["SailScopeScript"]
    runner = make_runner(h)
    script = runner.alwayson_scripts[0]
    assert script.title() == "SAIL Scope" and script.show(False) is h.scripts.AlwaysVisible
    assert script.args_to - script.args_from == len(FIELDS)  # the API's alwayson_scripts args order
    from sailscope.extension.a1111 import ARG_NAMES

    assert ARG_NAMES == FIELDS
    assert len(runner.infotext_fields) == 6 and all(callable(k) for _, k in runner.infotext_fields)
    assert set(runner.paste_field_names) == {"SAIL", "SAIL objective", "SAIL threshold", "SAIL max steps",
                                             "SAIL candidates", "SAIL lr"}
    names = {c.name for c in h.callbacks.callback_map["callbacks_cfg_denoised"]}
    assert "sailscope_cfg_denoised" in names
    assert not any(k in sys.modules for k in ("core", "ui", "extension"))


def test_ui_tab_is_the_app(host):
    tabs = host.callbacks.ui_tabs_callback()
    assert [(t[1], t[2]) for t in tabs] == [("SAIL Scope", "sailscope_tab")]
    assert hasattr(tabs[0][0], "sailscope_context")  # the app's Blocks, not the error fallback


def test_a1111_txt2img_batch_hires_sail_and_metrics(host):
    from sailscope.core import mitigation as core_sail
    from sailscope.extension import common

    h = host
    p, processed, calls = run_job(h, ui_args())
    # hook order: twice per batch (first pass, hires pass), under no_grad as A1111 samples
    assert [(it, hr) for it, hr, _, _ in calls] == [(0, False), (0, True), (1, False), (1, True)]
    assert all(not grad and not inf for _, _, grad, inf in calls)
    # gallery: 4 results, then per image a comparison (original | SAIL) and a diagnostics image
    assert len(processed.images) == 4 + 4 * 2 and len(processed.infotexts) == len(processed.images)
    infos = [parse(t) for t in processed.infotexts[:4]]
    for info in infos:
        assert info["SAIL"] == "on" and float(info["SAIL threshold"]) == 0.0
        assert info["SAIL converged"] == "False" and info["SAIL steps"] == "2"
        assert float(info["SAIL loss"]) < float(info["SAIL start loss"])
        assert float(info["SAIL Scope step-1 sharpness"]) > 0 and float(info["SAIL Scope original step-1 sharpness"]) > 0
        assert common.HostOptions(**common.parse_infotext(info)).threshold == 0.0
    assert len({i["SAIL Scope original step-1 sharpness"] for i in infos}) == 4  # per image, not copied
    # SAIL's x_T equals core.mitigation on the diffusers path: A1111 starts at noise * sigma_max -> scale sigma_vp
    state_report = processed.sailscope
    assert [r["index"] for r in state_report] == [0, 1, 2, 3]
    sigma_k = float(h.samplers.created[0].get_sigmas(p, 3)[0])
    scale = common.first_step_scale(sigma_k, "sigma")
    with torch.no_grad():
        c, _ = h.pipe.encode_prompt("a red square", "cpu", 1, True, None)
        u = h.pipe.encode_prompt("", "cpu", 1, False, None)[0]
    gs = h.dsm.guided(999, c, u)
    noise = torch.randn(4, 8, 8, generator=torch.Generator("cpu").manual_seed(13))[None]  # image 2 of batch 2 = seed 13
    ref = core_sail.optimize(gs.eps_pair, noise, core_sail.SailSettings(objective="reference", threshold=0.0, max_steps=2, lr=0.05, sphere=False), sigma=gs.sigma,
                             threshold=0.0, alpha=0.05, scale=scale)
    assert state_report[2]["sail"]["loss"] == pytest.approx(ref.loss[0], rel=1e-4)
    # per-step Wen per image for the original render and the SAIL run (3 steps each; hires not recorded)
    assert set(state_report[0]["wen_per_step"]) == {"original", "sail"}
    assert all(len(v) == 3 for v in state_report[0]["wen_per_step"].values())
    # files written without "always save"
    files = os.listdir(os.path.join(h.out, "sailscope"))
    assert sum(f.endswith("-diagnostics.png") for f in files) >= 4 and sum(f.endswith(".json") for f in files) >= 4
    # API info: JSON with concrete values (callables replaced), infotexts carry per-image metrics
    info = json.loads(processed.js())
    assert info["extra_generation_params"]["SAIL Scope step-1 sharpness"] is not None
    assert all("SAIL Scope step-1 sharpness" in t for t in info["infotexts"][:4])
    # the sampler really started from SAIL's x_T (step-1 Wen of the run = probe at SAIL's noise), and the
    # comparison render from the seed's noise (= probe at the original noise)
    for r in state_report:
        assert r["wen_per_step"]["sail"][1] == pytest.approx(r["wen"], rel=1e-4)
        assert r["wen_per_step"]["original"][1] == pytest.approx(r["original_wen"], rel=1e-4)
        assert r["wen"] != pytest.approx(r["original_wen"], rel=1e-3)


def test_forge_modified_noise_inference_mode_and_post_cfg(host):
    h = host
    p, processed, calls = run_job(h, ui_args(show_original=False), forge=True, n_iter=1)
    # Forge calls the hook twice in the hires pass (before and after resetting forge_objects)
    assert [(it, hr) for it, hr, _, _ in calls] == [(0, False), (0, True), (0, True)]
    assert all(inf for _, _, _, inf in calls)  # Forge samples under inference_mode
    assert p.modified_noise is None  # consumed by the host after our hook set it
    report = processed.sailscope
    assert [r["sail"]["steps"] for r in report] == [2, 2]
    assert set(report[0]["wen_per_step"]) == {"sail"} and len(report[0]["wen_per_step"]["sail"]) == 3
    # hook installed on the per-sampling UNet clone, never on the LoRA-applied original
    assert "sampler_post_cfg_function" not in h.sd_model.forge_objects_after_applying_lora.unet.model_options
    # the same numbers as A1111 for the same seed (same UNet, x0 through apply_model instead of CompVisDenoiser)
    _, processed_a, _ = run_job(h, ui_args(show_original=False), n_iter=1, enable_hr=False)
    for a, b in zip(processed_a.sailscope, report):
        assert a["sail"]["loss"] == pytest.approx(b["sail"]["loss"], rel=1e-3)
        assert a["sharpness"] == pytest.approx(b["sharpness"], rel=1e-2)


@pytest.mark.parametrize("forge", [False, True])
def test_skipped_uncond_steps_are_not_recorded(host, forge):
    """"Skip early CFG": A1111 puts the cond rows where the uncond ones would be, Forge runs the step at
    cond_scale 1 and its post-CFG hook gets a zero uncond_denoised; neither is a Wen value."""
    h = host
    _, processed, _ = run_job(h, ui_args(sail=False, show_original=False), forge=forge, n_iter=1, enable_hr=False,
                              skip_early_cond=0.2)
    assert "uncond pass was skipped" in processed.comments
    for r in processed.sailscope:
        assert set(r["wen_per_step"]["sampled"]) == {2, 3}  # step 1 (0/3 <= 0.2) skipped the uncond


def test_infotext_callables_for_batch_and_job_indices(host):
    """create_infotext passes a batch position from process_images and a job-wide index from
    Processed.infotext (params.txt, the hires "before" image); both must name the same image."""
    h = host
    seen = {}
    runner_postprocess = h.scripts.ScriptRunner.postprocess

    def spy(self, p, processed):
        key = "SAIL Scope step-1 sharpness"
        seen["job"] = [parse(h.processing.Processed(p, []).infotext(p, i)).get(key) for i in range(4)]
        seen["batch"] = [parse(h.processing.create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i,
                                                            all_negative_prompts=p.negative_prompts)).get(key) for i in range(2)]
        seen["main"] = parse(h.processing.create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, use_main_prompt=True)).get(key)
        return runner_postprocess(self, p, processed)

    h.scripts.ScriptRunner.postprocess = spy
    try:
        _, processed, _ = run_job(h, ui_args(sail=False, show_original=False, save_plots=False), n_iter=2, enable_hr=False)
    finally:
        h.scripts.ScriptRunner.postprocess = runner_postprocess
    final = [parse(t)["SAIL Scope step-1 sharpness"] for t in processed.infotexts[:4]]
    assert seen["job"] == final and seen["batch"] == final[2:] and seen["main"] == final[0]
    assert len(set(final)) == 4


@pytest.mark.parametrize("forge", [False, True])
def test_cfg_one_is_not_available(host, forge):
    h = host
    p, processed, calls = run_job(h, ui_args(), forge=forge, cfg_scale=1.0, n_iter=1, enable_hr=False)
    assert len(processed.images) >= 2 and "not available" in processed.comments
    text = processed.infotexts[0]
    assert "not available" in parse(text)["SAIL Scope status"]
    assert "SAIL steps" not in text and "SAIL loss" not in text


def test_img2img_skips_sail_with_a_message(host):
    h = host
    p, processed, calls = run_job(h, ui_args(), img2img=True, n_iter=1)
    assert "pure noise" in processed.comments
    assert all(r.get("sail") is None for r in processed.sailscope)
    assert all(r["wen_per_step"] for r in processed.sailscope)  # per-step metrics still recorded


def test_api_args_and_bad_args(host):
    from sailscope.extension.a1111 import options_from_args

    h = host
    opts = options_from_args([{"sail": True, "threshold": 7.5}])
    assert opts.sail and opts.threshold == 7.5 and opts.max_steps == 10
    # the API (modules/api/api.py init_script_args) fills the script's other slots with the UI's defaults
    ui_defaults = list(ui_args(sail=True))[1:]
    opts = options_from_args([{"sail": False, "max_steps": 1}, *ui_defaults])
    assert not opts.sail and opts.max_steps == 1 and opts.threshold == 8.2
    assert options_from_args([True, "paper", 3.0]).objective == "paper"
    with pytest.raises(ValueError, match="objective"):
        options_from_args([True, "Paper"])
    p, processed, _ = run_job(h, [True, "bogus"], n_iter=1, enable_hr=False)
    assert "settings rejected" in processed.comments and len(processed.images) == 2
    assert "SAIL" not in parse(processed.infotexts[0])


@pytest.mark.parametrize("forge", [False, True])
def test_sail_runs_through_the_model_as_the_host_holds_it(host, forge):
    """SAIL's gradient pass is the first UNet call of the job (sharpness off): A1111's Lora restore then runs
    under autograd on trainable weights; Forge's weights are inference tensors with in-place residuals. SAIL
    must still lower its loss and change the noise, and the host's weights stay as they were."""
    h = host
    unet = h.sd_model.forge_objects_after_applying_lora.unet.model.diffusion_model if forge else h.sd_model.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    p, processed, _ = run_job(h, ui_args(sharpness="off", show_original=False, max_steps=3), forge=forge, n_iter=1,
                              enable_hr=False)
    assert "did not run" not in (processed.comments or ""), processed.comments
    for r in processed.sailscope:
        assert r["sail"]["steps"] == 3 and r["sail"]["loss"] < r["sail"]["initial_loss"]
    _, plain, _ = run_job(h, ui_args(sail=False, sharpness="off", show_original=False), forge=forge, n_iter=1, enable_hr=False)
    for a, b in zip(processed.images[:2], plain.images[:2]):
        assert list(a.getdata()) != list(b.getdata())
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert all(w.grad is None for w in unet.parameters())
    assert all(w.is_inference() for w in unet.parameters()) == forge


def test_sail_off_leaves_the_noise_alone(host):
    h = host
    _, on, _ = run_job(h, ui_args(sail=False, show_original=False), n_iter=1, enable_hr=False)
    _, plain, _ = run_job(h, [False, "reference", 8.2, 10, 1, 0.05, "off", False, False], n_iter=1, enable_hr=False)
    for a, b in zip(on.images[:2], plain.images[:2]):
        assert list(a.getdata()) == list(b.getdata())
    assert "SAIL Scope step-1 sharpness" in on.infotexts[0] and "SAIL Scope" not in plain.infotexts[0]


def test_timestep_samplers_are_reported_not_available(host):
    """DDIM/PLMS/UniPC in A1111 are timestep samplers (no get_sigmas, eps rows in the callbacks)."""
    from sailscope.extension import a1111

    h = host
    script = make_runner(h).alwayson_scripts[0]
    p = h.processing.StableDiffusionProcessingTxt2Img(sd_model=h.sd_model, batch_size=1, cfg_scale=7.0)
    script.process(p, *ui_args())
    p.sampler, p.sampler_name = SimpleNamespace(), "DDIM"
    x = torch.randn(1, 4, 8, 8)
    script.process_before_every_sampling(p, *ui_args(), x=x, noise=x, c=None, uc=None)
    assert not a1111.can_record(p) and not a1111.active_state().recording
    assert any("DDIM" in c and "not available" in c for c in p.comments)
    script.postprocess(p, h.processing.Processed(p, []), *ui_args())
    assert a1111.active_state() is None


def pasted_settings(h, png) -> dict:
    """A PNG's infotext through A1111's *PNG Info → Send to txt2img* into the script's controls (stand-in
    ``modules.infotext_utils``): ``{control name: value}`` for the controls the paste changes."""
    from modules.infotext_utils import UNCHANGED, paste

    from sailscope.ui.outputs import read_infotext

    runner = make_runner(h)
    values = paste(runner.infotext_fields, read_infotext(png))
    prefix = "script_txt2img_sail_scope_"
    return {c.elem_id.removeprefix(prefix): v for (c, _), v in zip(runner.infotext_fields, values) if v is not UNCHANGED}


def test_pngs_from_the_cli_and_the_app_paste_their_sail_settings_into_a1111(host, tmp_path, monkeypatch):
    """One infotext registry: what the CLI and the app write, A1111's paste reads back into the same settings;
    the steps SAIL took never land in the max-steps slider."""
    import glob

    from sailscope.cli import main
    from sailscope.ui.forms import GenerateForm
    from sailscope.ui.jobs import AppConfig, AppContext
    from sailscope.ui.views.generate import generate_handler

    h = host
    model = tmp_path / "tiny"
    h.pipe.save_pretrained(model)
    rc = main(["generate", "--model", str(model), "--prompt", "a red square", "--seed", "3", "--steps", "2", "--sail",
               "--sail-objective", "reference", "--sail-threshold", "1e-3", "--sail-max-steps", "3",
               "--sail-candidates", "1", "--sail-lr", "0.2", "--sail-trigger", "none", "--sail-rounds", "1",
               "--out", str(tmp_path / "cli")])
    assert rc == 0
    [cli_png] = glob.glob(str(tmp_path / "cli" / "sail-*.png"))
    assert pasted_settings(h, cli_png) == dict(sail=True, objective="reference", threshold=1e-3, max_steps=3,
                                               candidates=1, lr=0.2)

    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "home"))
    ctx = AppContext(AppConfig(outputs=str(tmp_path / "app"), live_interval=0.0))
    ctx.models.pipe = h.pipe
    args = dict(prompt="a red square", negative="", seed=0, steps=2, guidance=7.5, width=0, height=0, scheduler="ddim",
                sharpness_at="every step", sail_on=True, sail_objective="paper", sail_threshold="1e12",
                sail_max_steps=4, sail_candidates=2, compare=True, spectrum_steps="", spectrum_method="arnoldi",
                spectrum_k=3, sail_trigger="none", sail_lr=0.25, sail_rounds=1)
    outputs = None
    for outputs in generate_handler(ctx, GenerateForm(**args), request=SimpleNamespace(session_hash="s")):
        pass
    assert pasted_settings(h, outputs["image_sail"]) == dict(sail=True, objective="paper", threshold=1e12, max_steps=4,
                                                            candidates=2, lr=0.25)
    assert pasted_settings(h, outputs["image_original"])["sail"] is False  # the comparison run had SAIL off


def test_sail_failure_keeps_the_image_and_says_why(host, monkeypatch):
    """A1111/Forge never lose the image: SAIL's failure is reported (cause, fix) and the seed's noise is used."""
    from sailscope.core import mitigation as core_sail

    def unreadable_weights(*args, **kwargs):
        raise RuntimeError("Inference tensors cannot be saved for backward. To work around you can make a clone")

    monkeypatch.setattr(core_sail, "optimize_first_step", unreadable_weights)
    h = host
    _, failed, _ = run_job(h, ui_args(sharpness="off", show_original=False), n_iter=1, enable_hr=False)
    _, plain, _ = run_job(h, ui_args(sail=False, sharpness="off", show_original=False), n_iter=1, enable_hr=False)
    status = parse(failed.infotexts[0])["SAIL Scope status"]
    assert "the image uses the seed's noise" in status and "Fix: load the checkpoint unquantized" in status
    for a, b in zip(failed.images[:2], plain.images[:2]):
        assert list(a.getdata()) == list(b.getdata())
