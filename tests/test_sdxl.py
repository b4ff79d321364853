"""SDXL in the engine, against stock diffusers' ``StableDiffusionXLPipeline`` on a tiny random SDXL built here:
the same image for the same seed/steps/guidance/scheduler, step-1 metrics equal to an independent JVP through the
stock UNet with SDXL's own unconditional side and time ids, SAIL lowers its objective, and the folder loads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sailscope.core.families import family_of
from torch.nn.attention import SDPBackend, sdpa_kernel
from sailscope.core.mitigation import SailSettings, run_sail
from sailscope.core.models import load_pipeline
from sailscope.core.sampling import GenerationSettings, initial_noise, make_scheduler, run_generation
from sailscope.core.testing import tiny_sdxl_pipeline

PROMPT = "a red circle on blue"


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl_pipeline()


@pytest.fixture(scope="module")
def sdxl_v():
    return tiny_sdxl_pipeline(seed=1, prediction_type="v_prediction", force_zeros_for_empty_prompt=False)


def stock_image(pipe, scheduler: str, **kw) -> np.ndarray:
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(pipe, scheduler)
    try:
        return pipe(PROMPT, num_inference_steps=kw["steps"], guidance_scale=kw["guidance"],
                    negative_prompt=kw.get("negative") or None,
                    generator=torch.Generator("cpu").manual_seed(kw["seed"]), output_type="np").images
    finally:
        pipe.scheduler = original


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm"])
def test_tracked_generation_is_stock_sdxl(sdxl, scheduler):
    kw = dict(seed=3, steps=5, guidance=6.0)
    ours = run_generation(sdxl, GenerationSettings(prompt=PROMPT, scheduler=scheduler, sharpness_at="first", **kw))
    assert np.abs(ours.array - stock_image(sdxl, scheduler, **kw)).max() <= 1e-4
    assert family_of(sdxl).name == "sdxl"


def test_v_prediction_sdxl_with_negative_prompt_is_stock(sdxl_v):
    kw = dict(seed=0, steps=4, guidance=5.0, negative="blurry")
    ours = run_generation(sdxl_v, GenerationSettings(prompt=PROMPT, negative_prompt="blurry", seed=0, steps=4,
                                                     guidance=5.0, sharpness_at="first"))
    assert np.abs(ours.array - stock_image(sdxl_v, "ddim", **kw)).max() <= 1e-4


def _independent_step1(pipe, settings):
    """Wen and exact sharpness at step 1 from the stock UNet called by hand: SDXL's own encode_prompt (zeros for the
    empty negative when force_zeros_for_empty_prompt), its time ids, and torch.func.jvp on x -> sΔ(x)."""
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(settings.prompt, None, "cpu", 1, True, None)
    size = (settings.height or 64, settings.width or 64)
    time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=cond.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    scheduler = make_scheduler(pipe, settings.scheduler)
    scheduler.set_timesteps(settings.steps)
    t = scheduler.timesteps[0]
    abar = float(scheduler.alphas_cumprod[int(t)])
    sigma = (1 - abar) ** 0.5
    x = scheduler.scale_model_input(initial_noise(pipe, settings) * scheduler.init_noise_sigma, t)

    def eps(x_in, hidden, text_embeds):
        out = pipe.unet(x_in, t, encoder_hidden_states=hidden,
                        added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
        if pipe.scheduler.config.prediction_type == "v_prediction":
            out = abar**0.5 * out + sigma * x_in
        return out

    def score_delta(x_in):
        return -(eps(x_in, cond, pooled) - eps(x_in, uncond, uncond_pooled)) / sigma

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # torch's own MATH kernel: independent of ours
        sd = score_delta(x)
        _, h = torch.func.jvp(score_delta, (x,), (sd,))
    assert torch.count_nonzero(uncond) == 0 if pipe.config.force_zeros_for_empty_prompt else True
    return float((sd * sigma).flatten().norm()), float(h.flatten().norm() ** 2)


@pytest.mark.parametrize("which", ["eps", "v"])
def test_step1_wen_and_sharpness_equal_a_jvp_through_the_stock_unet(sdxl, sdxl_v, which):
    pipe = sdxl if which == "eps" else sdxl_v
    settings = GenerationSettings(prompt=PROMPT, seed=2, steps=10, hvp="exact", sharpness_at="first")
    record = run_generation(pipe, settings).records[0]
    wen, sharp = _independent_step1(pipe, settings)
    assert record.wen[0] == pytest.approx(wen, rel=1e-5)
    assert record.sharpness[0] == pytest.approx(sharp, rel=1e-4)
    fd = run_generation(pipe, GenerationSettings(prompt=PROMPT, seed=2, steps=10, hvp="fd", sharpness_at="first"))
    assert fd.records[0].sharpness[0] == pytest.approx(sharp, rel=3e-2)


@pytest.mark.parametrize("objective", ["paper", "reference"])
def test_sail_lowers_its_objective_on_sdxl(sdxl, objective):
    settings = GenerationSettings(prompt=PROMPT, seed=1, steps=10)
    result = run_sail(sdxl, settings, SailSettings(objective=objective, threshold=0.0, trigger=None, max_steps=4,
                                                   rounds=1, lr=0.2, alpha=0.0))
    losses = [s.loss[0] for s in result.trace]
    assert losses[-1] < losses[0] and result.initial_loss[0] == losses[0]
    if objective == "paper":  # the first term at the seed's noise is the step-1 sharpness that detection records
        record = run_generation(sdxl, GenerationSettings(prompt=PROMPT, seed=1, steps=10, sharpness_at="first"))
        assert result.trace[0].sharpness[0] == pytest.approx(record.records[0].sharpness[0], rel=2e-2)


def test_an_sdxl_folder_loads_as_sdxl_and_samples_like_the_pipeline_it_came_from(sdxl, tmp_path):
    sdxl.save_pretrained(tmp_path / "xl")
    loaded = load_pipeline(str(tmp_path / "xl"), device="cpu", dtype="fp32")
    assert loaded.sailscope_info.family == "sdxl" and type(loaded).__name__ == "StableDiffusionXLPipeline"
    s = GenerationSettings(prompt=PROMPT, seed=4, steps=3)
    assert np.abs(run_generation(loaded, s).array - run_generation(sdxl, s).array).max() <= 1e-6


def test_checkpointing_changes_memory_not_results(sdxl):
    """SAIL with the UNet's gradient checkpointing (the default) takes the same steps to the same noise as without,
    and leaves the UNet as it found it."""
    settings = GenerationSettings(prompt=PROMPT, seed=5, steps=10)
    sail = SailSettings(objective="paper", threshold=0.0, trigger=None, max_steps=3, rounds=1, lr=0.2)
    with_ckpt = run_sail(sdxl, settings, sail, checkpointing=True)
    without = run_sail(sdxl, settings, sail, checkpointing=False)
    assert torch.allclose(with_ckpt.x_T, without.x_T, rtol=0, atol=1e-5)
    assert [s.loss[0] for s in with_ckpt.trace] == pytest.approx([s.loss[0] for s in without.trace], rel=1e-5)
    assert not sdxl.unet.is_gradient_checkpointing


def test_rta_on_sdxl_samples_the_edited_prompt_like_stock_sdxl(sdxl):
    """RTA edits only the prompt; the mitigated run on SDXL is stock SDXL's image of the edited prompt (both text
    encoders see the inserted words)."""
    from sailscope.core.mitigation.rta import RtaSettings, iter_rta

    settings = GenerationSettings(prompt=PROMPT, seed=3, steps=4)
    (res,) = list(iter_rta(sdxl, settings, RtaSettings(tokens=3, salt=1)))
    assert res.prompt != PROMPT and res.prompt.split() != PROMPT.split() and len(res.added) == 3
    ours = run_generation(sdxl, res.settings).array
    stock = sdxl(res.prompt, num_inference_steps=4, guidance_scale=settings.guidance,
                 generator=torch.Generator("cpu").manual_seed(3), output_type="np").images
    assert np.abs(ours - stock).max() <= 1e-4
    assert np.abs(ours - run_generation(sdxl, settings).array).max() > 1e-3


def test_calibration_on_sdxl_stores_what_detection_and_sail_compute(sdxl, tmp_path, monkeypatch):
    """``calibrate`` on SDXL: its detection values are the step-1 sharpness that generation records, its paper
    terms are SAIL's at the seed's noise, and the record is found again for the same SDXL weights only."""
    from sailscope.core import calibration as cal

    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path))
    record = cal.measure(sdxl, [PROMPT, "two blue squares"], [0, 6], steps=10)
    assert record.n == 4
    gs = GenerationSettings(prompt="two blue squares", seed=6, steps=10, sharpness_at="first")
    g = run_generation(sdxl, gs)
    assert record.values["detection"]["sharpness"][3] == pytest.approx(g.records[0].sharpness[0], rel=2e-2)
    sail = run_sail(sdxl, gs, SailSettings(threshold=1e9, max_steps=0, alpha=0.0))
    assert record.values["paper"]["sharpness"][3] == pytest.approx(sail.trace[0].sharpness[0], rel=2e-2)
    cal.save_calibration(record)
    found = cal.find_calibration(sdxl)
    assert found is not None and found[0].key == cal.model_key(sdxl)
    threshold, source = cal.detection_threshold(sdxl)
    assert threshold == pytest.approx(float(np.quantile(record.values["detection"]["sharpness"], cal.DETECTION_QUANTILE)))
    assert cal.find_calibration(tiny_sdxl_pipeline(seed=2)) is None  # other weights: not this calibration
