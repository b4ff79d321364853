"""The shipped demo model loads offline with stock diffusers and reproduces a memorized image (a copy)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

MODEL = Path(__file__).resolve().parents[1] / "assets" / "models" / "demo"
pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="demo model not exported yet")


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


def test_reproduces_a_memorized_image():
    from PIL import Image
    from diffusers import StableDiffusionPipeline

    card = _card()
    tau = card.get("tau_copy", 0.15)
    item = card.get("ci_item")  # the card names a caption/seed that copies (measured by eval-demo)
    if item is None:
        pytest.skip("eval.json has no ci_item yet")
    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(item["caption"], num_inference_steps=50, guidance_scale=7.5, output_type="np",
               generator=torch.Generator().manual_seed(item["seed"])).images[0]
    ref = np.asarray(Image.open(MODEL / item["image"]).convert("RGB"), np.float32) / 255.0
    rmse = float(np.sqrt(((img - ref) ** 2).mean()))
    assert rmse < tau, f"{item['caption']!r} seed {item['seed']}: RMSE {rmse:.3f} >= tau_copy {tau}"
