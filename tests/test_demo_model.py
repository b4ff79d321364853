"""The shipped demo model loads offline with stock diffusers and reproduces a memorized image (a copy)."""
import json
from pathlib import Path

import numpy as np
import torch

MODEL = Path(__file__).resolve().parents[1] / "assets" / "models" / "demo"


def _card():
    p = MODEL / "eval.json"
    return json.loads(p.read_text()) if p.exists() else {}


def test_loads_offline_with_stock_pipeline():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL), local_files_only=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.safety_checker is None
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size <= 50 * 2**20
    rows = [json.loads(l) for l in (MODEL / "memorized.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "exact" for r in rows) >= 12
    assert len((MODEL / "heldout_prompts.txt").read_text().split("\n")) >= 100

def test_reproduces_a_memorized_image_as_a_copy():
    """The best memorized (caption, seed) of the model card's evaluation (``eval.json``), regenerated through
    ``core.generate`` alone (seed i = image i of the card's seed batch), is a copy: RMSE to its training image
    below the card's ``tau_copy``, and equal to the recorded distance (the evaluation is reproducible)."""
    from PIL import Image

    from sailscope.core.sampling import GenerationSettings, run_generation
    from sailscope.core.models import load_pipeline

    card = _card()
    tau = card["tau_copy"]
    exact = [r for r in card["rows"] if r["kind"] == "exact"]
    row, seed = min(((r, s) for r in exact for s in range(len(r["copy_rmse"]))), key=lambda rs: rs[0]["copy_rmse"][rs[1]])
    assert row["copy_rmse"][seed] < tau
    memo = {m["caption"]: m for m in map(json.loads, (MODEL / "memorized.jsonl").read_text().splitlines())}
    train = np.asarray(Image.open(MODEL / memo[row["caption"]]["image"]).convert("RGB"), np.float32) / 255.0
    pipe = load_pipeline("demo", device="cpu", dtype="fp32")
    res = run_generation(pipe, GenerationSettings(prompt=row["caption"], seed=seed, steps=card["steps"],
                                                  guidance=card["guidance"], sharpness_at="none"))
    d = float(np.sqrt(((res.array[0] - train) ** 2).mean()))
    assert d < tau, (row["caption"], seed, d, tau)
    assert abs(d - row["copy_rmse"][seed]) < 0.01


def test_card_records_the_attribute_ceiling_of_the_shipped_vae():
    """The card's "most a UNet can reach through this VAE": the attribute checker on VAE round trips of
    ground-truth renders, recomputed here for the card's first 8 held-out prompts (1 render each) with the
    shipped VAE; ``attribute_failures`` splits them exactly as the checker decides."""
    from sailscope.core.demo import data as D
    from sailscope.core.demo import evaluate as E

    card = _card()
    pipe = E.load_pipeline(MODEL)
    held = [r["caption"] for r in card["rows"] if r["kind"] == "heldout"][:8]
    truth = E.heldout_truth_renders(held, "v2", 1)
    rt = E.vae_roundtrip(pipe, truth)
    assert rt.shape == truth.shape and float(E.rmse(rt, truth).max()) < card["tau_copy"]  # a round trip is a copy
    fails = E.attribute_failures(rt, held)
    assert sum(fails.values()) == 8 and fails["ok"] == sum(D.check_attributes(a, c) for a, c in zip(rt, held))
    assert fails == E.attribute_failures(rt, held)  # deterministic
    ceiling = card["heldout_truth_decoded_attribute_accuracy"]
    assert card["heldout_truth_attribute_accuracy"] >= 0.95 and ceiling < card["heldout_truth_attribute_accuracy"]
    assert card["attribute_accuracy_heldout"] <= ceiling + 0.05
