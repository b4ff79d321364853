"""Spectra during generation and ``sailscope spectrum`` on the tiny random SD pipeline (issue 4, items 3-4).

Oracle for "the same latent as generate at step N": stock diffusers ``StableDiffusionPipeline.__call__`` with
``callback_on_step_end`` (latents after step N-1 are the input of step N; DDIM's ``scale_model_input`` is the
identity), and the spectrum recomputed from that latent with the same seeded start vector.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sailscope.cli import main
from sailscope.core.sampling import GenerationResult, GenerationSettings, generate
from sailscope.core.score import DiffusersScoreModel
from sailscope.core.spectra import SpectrumProbe, diffusers_score_factory, spectrum_at


def stock_latent(pipe, prompt: str, seed: int, steps: int, step: int) -> tuple[torch.Tensor, int]:
    """The UNet input latent of 1-based ``step`` in a stock diffusers run, and its timestep."""
    seen = {}

    def cb(p, i, t, kw):
        seen[i] = kw["latents"].clone()
        return kw

    pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed),
         callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"], output_type="latent")
    pipe.scheduler.set_timesteps(steps)
    return seen[step - 2], int(pipe.scheduler.timesteps[step - 1])


def test_cli_spectrum_uses_the_latent_generate_reaches(tiny_pipe, tiny_model_dir, capsys):
    prompt, seed, steps, step = "a red square", 3, 3, 2
    rc = main(["spectrum", "--model", str(tiny_model_dir), "--device", "cpu", "--prompt", prompt, "--seed", str(seed),
               "--steps", str(steps), "--step", str(step), "--k", "4", "--hvp", "fd", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    got = torch.tensor(out["spectrum"]["eigenvalues_real"]) + 1j * torch.tensor(out["spectrum"]["eigenvalues_imag"])
    assert out["spectrum"]["all_converged"] and out["spectrum"]["hvps"] > 0 and out["spectrum"]["seconds"] > 0
    assert len(out["spectrum"]["residuals"]) == 4

    x, t = stock_latent(tiny_pipe, prompt, seed, steps, step)
    assert out["t"] == t
    model = DiffusersScoreModel.from_pipeline(tiny_pipe)
    with torch.no_grad():
        cond, uncond = tiny_pipe.encode_prompt(prompt, torch.device("cpu"), 1, True)
    gen = torch.Generator().manual_seed(seed + 1000003 * step)  # the probe's documented seeding
    ref = spectrum_at(diffusers_score_factory(model, t, cond, uncond), x, "delta", 4, "arnoldi", hvp="fd", generator=gen)
    assert torch.allclose(got.to(torch.complex128), ref.eigenvalues, rtol=1e-5, atol=1e-9)


def test_cli_spectrum_bad_step_names_the_argument(tiny_model_dir, capsys):
    rc = main(["spectrum", "--model", str(tiny_model_dir), "--prompt", "x", "--steps", "3", "--step", "4"])
    assert rc == 1
    assert "--step 4 is outside the schedule" in capsys.readouterr().err


def test_spectrum_probe_keeps_images_and_records_spectra(tiny_pipe):
    settings = GenerationSettings(prompt="a blue circle", seed=1, steps=3, sharpness_at="none")

    def final(items):
        return [i for i in items if isinstance(i, GenerationResult)][0]

    plain = final(generate(tiny_pipe, settings))
    probe = SpectrumProbe(every=2, k=2, method="arnoldi", hvp="fd", tol=1e-4)
    probed = final(generate(tiny_pipe, settings, probes=[probe]))
    assert np.array_equal(plain.array, probed.array)  # probes never change the sample
    assert sorted(probe.results) == [1, 3]
    recs = {r.step: r for r in probed.records}
    assert "spectrum" not in recs[2].extras
    for step in (1, 3):
        spec = recs[step].extras["spectrum"][0]
        assert len(spec["eigenvalues_real"]) == 2 and spec["which"] == "delta"
        assert spec["all_converged"] and np.isfinite(spec["eigenvalues_real"]).all()
    with pytest.raises(Exception, match="exactly one"):
        SpectrumProbe(at={1}, every=2)


def test_study_summary_and_png(tmp_path):
    """The memorization study's table and PNG from synthetic spectra (the model run is a documented command)."""
    from PIL import Image

    from sailscope.core.spectra.study import plot_png, summarize

    def spec(vals):
        return {"real_sorted": sorted(vals), "positive": sum(v > 0 for v in vals), "negative": sum(v < 0 for v in vals),
                "min": min(vals), "converged": True}

    rows = [{"group": "memorized", "prompt": "m", "spectra": {"1": spec([-5.0, -2.0, 0.1]), "3": spec([-50.0, -9.0, -1.0])}},
            {"group": "held-out", "prompt": "h", "spectra": {"1": spec([-1.0, 0.5, 0.7]), "3": spec([-4.0, 2.0, 3.0])}}]
    table = {(t["group"], t["step"]): t for t in summarize(rows, 3)}
    assert table[("memorized", 3)]["median_positive"] == 0 and table[("held-out", 3)]["median_positive"] == 2
    assert table[("memorized", 1)]["median_min_eigenvalue"] == -5.0
    plot_png(rows, 3, tmp_path / "s.png", "synthetic")
    assert Image.open(tmp_path / "s.png").size == (1120, 460)
