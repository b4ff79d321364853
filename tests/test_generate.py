"""Tracked generation and the diffusers score adapter on a tiny random-weight SD pipeline.

Oracles: the stock ``StableDiffusionPipeline.__call__`` (images), the scheduler's own formulas
(noise levels, v-prediction), per-sample runs (batching), exact JVP (finite differences).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sailscope.core.errors import NonFiniteError, UserInputError
from sailscope.core.sampling import GenerationResult, GenerationSettings, generate, make_scheduler, run_generation
from sailscope.core.metrics import sharpness
from sailscope.core.score import DiffusersScoreModel, eps_from_prediction

PROMPT = "a red circle above a blue square"


def stock_images(pipe, scheduler: str, seed: int, steps: int, guidance: float = 7.5, n: int = 1) -> np.ndarray:
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(pipe, scheduler)
    try:
        gen = torch.Generator("cpu").manual_seed(seed)
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                    num_images_per_prompt=n, output_type="np").images
    finally:
        pipe.scheduler = original


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm", "euler_a"])
def test_images_equal_stock_pipeline(tiny_pipe, scheduler):
    s = GenerationSettings(prompt=PROMPT, seed=7, steps=4, scheduler=scheduler, sharpness_at="all")
    ours = run_generation(tiny_pipe, s)
    ref = stock_images(tiny_pipe, scheduler, seed=7, steps=4)
    assert np.abs(ours.array - ref).max() <= 1e-4
    assert len(ours.records) == 4 and all(r.sharpness is not None for r in ours.records)


def test_v_prediction_images_equal_stock(tiny_pipe_v):
    ours = run_generation(tiny_pipe_v, GenerationSettings(prompt=PROMPT, seed=1, steps=3))
    assert np.abs(ours.array - stock_images(tiny_pipe_v, "ddim", seed=1, steps=3)).max() <= 1e-4


def test_guidance_one_keeps_stock_images_and_still_measures(tiny_pipe):
    """CFG off in stock (guidance <= 1): same image; metrics use an extra uncond pass."""
    ours = run_generation(tiny_pipe, GenerationSettings(prompt=PROMPT, seed=2, steps=3, guidance=1.0))
    assert np.abs(ours.array - stock_images(tiny_pipe, "ddim", 2, 3, guidance=1.0)).max() <= 1e-4
    assert ours.records[0].wen[0] > 0 and ours.records[0].sharpness[0] > 0


def test_batch_equals_per_sample_runs(tiny_pipe):
    batch = run_generation(tiny_pipe, GenerationSettings(prompt=PROMPT, seed=5, steps=3, num_images=2, sharpness_at="all"))
    for i in range(2):
        single = run_generation(tiny_pipe, GenerationSettings(prompt=PROMPT, seed=5 + i, steps=3, sharpness_at="all"))
        assert np.abs(batch.array[i] - single.array[0]).max() <= 1e-5
        for rb, rs in zip(batch.records, single.records):
            assert rb.wen[i] == pytest.approx(rs.wen[0], rel=1e-4)
            # fp32 forward difference: ~1e-6 batch-order rounding / relative step 1e-3 -> ~1e-3
            assert rb.sharpness[i] == pytest.approx(rs.sharpness[0], rel=5e-3)


def test_records_carry_schedule_noise_levels(tiny_pipe):
    ddim = run_generation(tiny_pipe, GenerationSettings(prompt=PROMPT, steps=5, sharpness_at="none"))
    ac = tiny_pipe.scheduler.alphas_cumprod
    for r in ddim.records:
        assert r.sigma == pytest.approx(float((1 - ac[int(r.t)]).sqrt()), rel=1e-6)
    assert ddim.records[0].t == 801.0  # leading spacing, steps_offset=1, 5 steps
    euler = run_generation(tiny_pipe, GenerationSettings(prompt=PROMPT, steps=5, scheduler="euler", sharpness_at="none"))
    sched = make_scheduler(tiny_pipe, "euler")
    sched.set_timesteps(5)
    for i, r in enumerate(euler.records):
        sk = float(sched.sigmas[i])
        assert r.sigma == pytest.approx(sk / (1 + sk * sk) ** 0.5, rel=1e-6)


def test_generator_yields_steps_live_then_result(tiny_pipe):
    items = list(generate(tiny_pipe, GenerationSettings(prompt=PROMPT, steps=3)))
    assert [type(i).__name__ for i in items] == ["StepRecord"] * 3 + ["GenerationResult"]
    assert [i.step for i in items[:3]] == [1, 2, 3]
    assert items[0].elapsed <= items[1].elapsed <= items[2].elapsed <= items[3].seconds


def test_exact_and_fd_sharpness_agree_on_unet(tiny_pipe):
    """Exact JVP through the batched cond+uncond UNet call vs one extra CFG evaluation."""
    s = dict(prompt=PROMPT, seed=3, steps=5, sharpness_at="all")
    exact = run_generation(tiny_pipe, GenerationSettings(hvp="exact", **s))
    fd = run_generation(tiny_pipe, GenerationSettings(hvp="fd", **s))
    for re, rf in zip(exact.records, fd.records):
        assert rf.sharpness[0] == pytest.approx(re.sharpness[0], rel=2e-2)
    assert np.abs(exact.array - fd.array).max() == 0.0  # metrics never change the sample


def test_score_adapter_matches_manual_cfg_call(tiny_pipe):
    sm = DiffusersScoreModel.from_pipeline(tiny_pipe)
    cond, uncond = tiny_pipe.encode_prompt([PROMPT, "a cat"], "cpu", 1, True)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = 601
    gs = sm.guided(t, cond, uncond)
    e_c, e_u = gs.eps_pair(x)
    with torch.no_grad():
        out = tiny_pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    assert torch.allclose(e_u, out[:2], atol=1e-6) and torch.allclose(e_c, out[2:], atol=1e-6)
    assert gs.sigma == pytest.approx(float((1 - tiny_pipe.scheduler.alphas_cumprod[t]).sqrt()))
    # batched metric = per-sample metric
    both = sharpness(gs, x, method="exact").value
    for i in range(2):
        one = sharpness(sm.guided(t, cond[i:i + 1], uncond[i:i + 1]), x[i:i + 1], method="exact").value
        assert one.item() == pytest.approx(both[i].item(), rel=1e-4)


def test_eps_v_sample_conversions_roundtrip():
    """x = α x0 + σ ε; v = α ε − σ x0 (diffusers' get_velocity); each parameterization maps back to ε."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500, 500])
    abar = sched.alphas_cumprod[500]
    x = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = sched.get_velocity(x0, eps, t)
    assert torch.allclose(eps_from_prediction(v, x, abar, "v_prediction"), eps, atol=1e-5)
    assert torch.allclose(eps_from_prediction(x0, x, abar, "sample"), eps, atol=1e-4)
    assert torch.equal(eps_from_prediction(eps, x, abar, "epsilon"), eps)
    with pytest.raises(ValueError, match="prediction_type"):
        eps_from_prediction(eps, x, abar, "flow")


def test_v_model_metrics_are_in_eps_units(tiny_pipe_v):
    """For a v-model, the adapter's eps equals the DDIM scheduler's own pred_epsilon."""
    sm = DiffusersScoreModel.from_pipeline(tiny_pipe_v)
    cond, uncond = tiny_pipe_v.encode_prompt(PROMPT, "cpu", 1, True)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = 401
    e_c, _ = sm.guided(t, cond, uncond).eps_pair(x)
    with torch.no_grad():
        v = tiny_pipe_v.unet(x, t, encoder_hidden_states=cond).sample
    a = tiny_pipe_v.scheduler.alphas_cumprod[t]
    assert torch.allclose(e_c, a.sqrt() * v + (1 - a).sqrt() * x, atol=1e-5)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=0), "steps must be"),
        (dict(steps=1001), "steps must be"),
        (dict(guidance=-1.0), "guidance must be"),
        (dict(guidance=float("nan")), "guidance must be"),
        (dict(scheduler="heun2"), "unknown scheduler"),
        (dict(width=60), "width must be a positive multiple of 16"),
        (dict(sharpness_at=(0,)), "outside"),
    ],
)
def test_bad_settings_raise_named_errors(tiny_pipe, kwargs, match):
    with pytest.raises(UserInputError, match=match):
        next(generate(tiny_pipe, GenerationSettings(prompt=PROMPT, **kwargs)))


def test_empty_prompt_is_valid_unconditional(tiny_pipe):
    res = run_generation(tiny_pipe, GenerationSettings(prompt="", steps=2))
    assert any("empty prompt" in w for w in res.warnings)
    assert res.records[0].wen[0] == pytest.approx(0.0, abs=1e-6)


def test_overlong_prompt_warns_and_truncates(tiny_pipe):
    res = run_generation(tiny_pipe, GenerationSettings(prompt="cat " * 100, steps=1))
    assert any("truncated" in w for w in res.warnings) and len(res.images) == 1


def test_nan_latents_stop_with_the_step(tiny_pipe, monkeypatch):
    real_step = None

    def poisoned(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        if self._step_index == 2:  # after the second step
            out[0][...] = float("nan")
        return out

    from diffusers import DDIMScheduler

    real_step = DDIMScheduler.step

    def step_with_index(self, model_output, timestep, sample, *a, **k):
        self._step_index = getattr(self, "_step_index", 0) + 1
        return poisoned(self, model_output, timestep, sample, *a, **k)

    monkeypatch.setattr(DDIMScheduler, "step", step_with_index)
    with pytest.raises(NonFiniteError, match="after step 2") as info:
        run_generation(tiny_pipe, GenerationSettings(prompt=PROMPT, steps=4))
    assert info.value.step == 2


def test_cancel_stops_before_next_step(tiny_pipe):
    import threading

    from sailscope.core.errors import Cancelled

    ev = threading.Event()
    seen = []
    with pytest.raises(Cancelled, match="before step 3"):
        for item in generate(tiny_pipe, GenerationSettings(prompt=PROMPT, steps=5), cancel=ev):
            seen.append(item)
            if len(seen) == 2:
                ev.set()
    assert len(seen) == 2


def test_stop_after_returns_records_without_decoding(tiny_pipe):
    items = list(generate(tiny_pipe, GenerationSettings(prompt=PROMPT, steps=50), stop_after=1))
    assert isinstance(items[-1], GenerationResult) and items[-1].images == [] and len(items[-1].records) == 1


def test_a_schedule_outside_the_training_range_gets_a_message(tiny_pipe):
    """DDIM with 1000 steps and steps_offset=1 starts at t = 1000 of 0..999 (stock diffusers indexes past the end):
    a message with the largest step count that works, before any model work; 999 steps are fine."""
    from sailscope.core.errors import UserInputError
    from sailscope.core.sampling import scheduled

    with pytest.raises(UserInputError, match=r"steps 1000 with the ddim scheduler start at timestep 1000.*at most 999"):
        run_generation(tiny_pipe, GenerationSettings(prompt=PROMPT, steps=1000, sharpness_at="none"))
    assert float(scheduled(tiny_pipe, GenerationSettings(prompt=PROMPT, steps=999)).timesteps.max()) <= 999
