"""ComfyUI node contract, run through stand-ins of ComfyUI's API.

The stand-ins (tests/hosts/comfyui: comfy.samplers.CFGGuider/KSAMPLER/KSamplerX0Inpaint/sampling_function/
cfg_function/calc_cond_batch, comfy.sample.prepare_noise, comfy.model_patcher.ModelPatcher,
comfy_extras.nodes_custom_sampler.Noise_RandomNoise/SamplerCustomAdvanced) follow the published signatures
and hook semantics exactly (post-CFG args, the CFG = 1 uncond skip, noise_scaling(max_denoise)), reduced to
whole-latent text conditioning. The model is tests/hosts/denoisers.ComfyBaseModel around the tiny diffusers
UNet, so the SAIL noise can be checked against core.mitigation on the diffusers path. Nodes run under
torch.inference_mode(), as ComfyUI runs them.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

HOSTS = os.path.join(os.path.dirname(__file__), "hosts")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def comfy():
    sys.path.insert(0, os.path.join(HOSTS, "comfyui"))
    sys.path.insert(0, HOSTS)
    try:
        import comfy.samplers
        from comfy.model_patcher import ModelPatcher
        from comfy_extras import nodes_custom_sampler
        from denoisers import ComfyBaseModel, host_loaded_unet
        from fixtures import tiny

        pipe, dsm = tiny()
        with torch.no_grad():
            cond, uncond = pipe.encode_prompt("a red square", "cpu", 1, True, None)
        # the UNet as ComfyUI holds it: weights loaded inside the prompt's torch.inference_mode()
        base = ComfyBaseModel(host_loaded_unet(pipe.unet), pipe.scheduler.alphas_cumprod)
        ms = base.model_sampling
        yield dict(
            samplers=comfy.samplers, ncs=nodes_custom_sampler, pipe=pipe, base=base,
            model=ModelPatcher(base, torch.device("cpu"), torch.device("cpu")), positive=[[cond, {}]], negative=[[uncond, {}]], cond=cond, uncond=uncond,
            latent={"samples": torch.zeros(2, 4, 8, 8)}, dsm=dsm,
            sigmas=torch.cat([ms.sigmas[[999, 666, 333]], torch.zeros(1)]),
        )
    finally:
        sys.path.remove(os.path.join(HOSTS, "comfyui"))
        sys.path.remove(HOSTS)
        for name in [m for m in sys.modules if m == "comfy" or m.startswith(("comfy.", "comfy_extras"))]:
            del sys.modules[name]


def close(a, b, rtol):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    err = float((a - b).norm() / b.norm().clamp_min(1e-30))
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def test_registration_is_cheap_and_complete():
    """ComfyUI imports the folder under its own name; no torch at import, mappings exported."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('ComfyUI-SAILScope', {os.path.join(ROOT, '__init__.py')!r},"
        f" submodule_search_locations=[{ROOT!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['ComfyUI-SAILScope'] = m; spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules, 'torch imported at registration'\n"
        "assert set(m.NODE_CLASS_MAPPINGS) == {'SailScopeNoise', 'SailScopeSharpness', 'SailScopeCompare'}, m.NODE_CLASS_MAPPINGS\n"
        "assert set(m.NODE_DISPLAY_NAME_MAPPINGS) == set(m.NODE_CLASS_MAPPINGS)\n"
        "assert not any(k in sys.modules for k in ('core', 'ui', 'extension'))\n"
    )
    env = dict(os.environ, PYTHONPATH="")
    r = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr


VALID_TYPES = {"MODEL", "CONDITIONING", "LATENT", "INT", "FLOAT", "BOOLEAN", "STRING", "NOISE", "SIGMAS", "IMAGE"}


def test_node_declarations():
    from sailscope.extension.comfyui import NODE_CLASS_MAPPINGS

    for name, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}, name
        for section in spec.values():
            for inp, decl in section.items():
                assert isinstance(decl, tuple) and 1 <= len(decl) <= 2, (name, inp)
                kind = decl[0]
                assert (isinstance(kind, list) and kind) or kind in VALID_TYPES, (name, inp, kind)
                if len(decl) == 2:
                    assert isinstance(decl[1], dict)
        assert isinstance(cls.RETURN_TYPES, tuple) and all(t in VALID_TYPES for t in cls.RETURN_TYPES)
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        assert callable(getattr(cls(), cls.FUNCTION)) and cls.CATEGORY.startswith("sampling")
        # every required input is a parameter of FUNCTION (ComfyUI passes them by keyword)
        import inspect

        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        assert all(k in params for s in spec.values() for k in s), name


def _euler(c):
    return c["samplers"].KSAMPLER(c["ncs"].sample_euler)


def test_sail_noise_node_end_to_end(comfy):
    from sailscope.core import mitigation as core_sail
    from sailscope.extension.comfyui import SailNoise, SailScopeNoise

    c = comfy
    with torch.inference_mode():
        noise_obj, report, plot = SailScopeNoise().build(
            c["model"], c["positive"], c["negative"], c["latent"], 42, 7.5, True, "reference", 0.0, 2, 1, 0.05)
        assert isinstance(noise_obj, SailNoise) and noise_obj.seed == 42
        assert isinstance(report, str) and "SAIL" in report and "sharpness" in report
        assert plot.dtype == torch.float32 and plot.dim() == 4 and plot.shape[-1] == 3 and 0 <= plot.min() <= plot.max() <= 1
        stock = c["ncs"].Noise_RandomNoise(42).generate_noise(c["latent"])
        got = noise_obj.generate_noise(c["latent"])
        # SamplerCustomAdvanced consumes it as it does RandomNoise
        guider = c["samplers"].CFGGuider(c["model"])
        guider.set_conds(c["positive"], c["negative"])
        guider.set_cfg(7.5)
        out, _ = c["ncs"].SamplerCustomAdvanced().sample(noise_obj, guider, _euler(c), c["sigmas"], c["latent"])
    assert out["samples"].shape == (2, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    assert not torch.allclose(got, stock)
    # the same numbers as core.mitigation on the diffusers path (ComfyUI: x_vp = noise, scale 1, t = 999)
    gs = c["dsm"].guided(999, c["cond"], c["uncond"])
    ref = torch.stack([
        core_sail.optimize(gs.eps_pair, stock[i:i + 1].clone(), core_sail.SailSettings(objective="reference", threshold=0.0,
                           max_steps=2, lr=0.05, sphere=False), sigma=gs.sigma, threshold=0.0, alpha=0.05, scale=1.0).x_T[0]
        for i in range(2)
    ])
    close(got, ref, 1e-4)
    losses = next(line for line in report.splitlines() if line.startswith("SAIL loss:")).split(":", 1)[1].split("->")
    assert all(b < a for a, b in zip(*(map(float, side.strip(" []").split(",")) for side in losses)))
    # the model patcher given to the node was not modified (the node works on a clone), nor its weights
    assert "sampler_post_cfg_function" not in c["model"].model_options
    assert all(w.is_inference() and w.grad is None for w in c["base"].diffusion_model.parameters())


def test_sail_off_is_random_noise_and_img2img_is_refused(comfy):
    from sailscope.extension.comfyui import SailScopeNoise

    c = comfy
    with torch.inference_mode():
        noise_obj, report, _ = SailScopeNoise().build(
            c["model"], c["positive"], c["negative"], c["latent"], 7, 7.5, False, "reference", 8.2, 10, 1, 0.05)
        assert torch.equal(noise_obj.generate_noise(c["latent"]), c["ncs"].Noise_RandomNoise(7).generate_noise(c["latent"]))
        assert "off" in report
        with pytest.raises(Exception, match="pure noise"):
            SailScopeNoise().build(c["model"], c["positive"], c["negative"], {"samples": torch.ones(1, 4, 8, 8)}, 7, 7.5,
                                   True, "reference", 8.2, 10, 1, 0.05)
        with pytest.raises(Exception, match="pure noise"):
            SailScopeNoise().build(c["model"], c["positive"], c["negative"], c["latent"], 7, 7.5, True, "reference",
                                   8.2, 10, 1, 0.05, sigmas=c["sigmas"][1:])
        with pytest.raises(ValueError, match="shape"):
            noise_obj.generate_noise({"samples": torch.zeros(1, 4, 16, 16)})


@pytest.mark.parametrize("spectrum_k", [2, 0])
def test_sharpness_probe_node(comfy, spectrum_k):
    from sailscope.core.metrics import sharpness
    from sailscope.extension.comfyui import SailScopeSharpness

    c = comfy
    with torch.inference_mode():
        value, plot, report = SailScopeSharpness().probe(
            c["model"], c["positive"], c["negative"], c["latent"], 3, "fd", spectrum_k)
    assert isinstance(value, float) and math.isfinite(value) and value > 0
    assert plot.dim() == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3
    assert "sharpness" in report and ("eigenvalues" in report) == (spectrum_k > 0)
    stock = c["ncs"].Noise_RandomNoise(3).generate_noise(c["latent"])
    ref = sharpness(c["dsm"].guided(999, c["cond"].expand(2, -1, -1), c["uncond"].expand(2, -1, -1)), stock, method="fd")
    assert value == pytest.approx(float(ref.value.mean()), rel=1e-3)


def test_cfg_one_still_evaluates_uncond(comfy):
    """At CFG = 1 ComfyUI skips the uncond pass unless disable_cfg1_optimization: the nodes set it."""
    from sailscope.extension.comfyui import run_with_model

    c = comfy
    with torch.inference_mode():
        x_k = torch.randn(2, 4, 8, 8) * 14.6
        c0, u0 = run_with_model(c["model"], c["positive"], c["negative"], 1.0, c["latent"]["samples"], 14.6, 0,
                                lambda pair: pair(x_k, torch.full((2,), 14.6)))
    assert u0.abs().sum() > 0 and not torch.allclose(c0, u0)


def test_compare_node():
    from sailscope.extension.comfyui import SailScopeCompare

    a, b = torch.rand(2, 64, 64, 3), torch.rand(2, 64, 64, 3)
    with torch.inference_mode():
        img, report = SailScopeCompare().compare(a, b, "wen 1", "wen 2")
    assert img.shape[0] == 2 and img.shape[2] > 128 and img.shape[-1] == 3
    assert "[original]" in report and "[SAIL]" in report
    with pytest.raises(ValueError, match="batches"):
        SailScopeCompare().compare(a, b[:1])


def test_sail_failure_stops_the_prompt_with_cause_and_fix(comfy, monkeypatch):
    """ComfyUI aborts a prompt whose node raises: the message says so, names the cause and the fix."""
    from sailscope.core import mitigation as core_sail
    from sailscope.extension.comfyui import SailScopeNoise

    def unreadable_weights(*args, **kwargs):
        raise RuntimeError("Inference tensors cannot be saved for backward. To work around you can make a clone")

    monkeypatch.setattr(core_sail, "optimize_first_step", unreadable_weights)
    c = comfy
    with torch.inference_mode(), pytest.raises(Exception) as info:
        SailScopeNoise().build(c["model"], c["positive"], c["negative"], c["latent"], 1, 7.5, True, "reference", 8.2,
                               2, 1, 0.05)
    msg = str(info.value)
    assert "stopped this prompt" in msg and "quantized" in msg and "Fix: load the checkpoint unquantized" in msg
    assert "set 'sail' to false" in msg
