"""The demo data oracle (perfect-denoiser step-1 metrics) against dense Hessians and stock diffusers noise."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from sailscope.core.demo import data as D
from sailscope.core.demo import oracle as O
from sailscope.core.demo.train import TrainConfig, make_scheduler, make_vae
from sailscope.core.oracles import DiffusedPoints


def test_first_step_abar_and_seed_noise_match_the_pipeline():
    sched = make_scheduler()
    assert O.first_step_abar(sched, 50) == float(sched.alphas_cumprod[981])
    from diffusers.utils.torch_utils import randn_tensor

    gens = [torch.Generator("cpu").manual_seed(s) for s in range(3)]
    assert torch.equal(O.seed_noise(3, (4, 16, 16)), randn_tensor((3, 4, 16, 16), generator=gens))


def test_ceiling_matches_dense_hessians_on_a_tiny_dataset():
    """Every row's sharpness is ‖(H_c − H_u) sΔ‖² of the exact mixtures, from dense (d×d) Hessians."""
    cfg = TrainConfig.tiny()
    ds = D.dataset_from_config(asdict(cfg))
    torch.manual_seed(0)
    vae = make_vae(cfg).eval()
    t = O.ceiling(ds, vae, make_scheduler(), design=cfg.data_design, memorized_weight=1.5, seeds=2, heldout=2,
                  samples=8, log=lambda *_: None)
    assert len(t["rows"]) == len(ds.memorized) + 2
    exact = [r for r in t["rows"] if r["kind"] == "exact"]
    assert all(r["n_points"] == cfg.n_dup for r in exact)

    points = O.encode_latents(vae, ds.images)
    weights = torch.tensor([1.0 if k == "general" else 1.5 for k in ds.kinds], dtype=torch.float64)
    uncond = DiffusedPoints.from_points(points, t["abar"], weights)
    x = O.seed_noise(2, (4, 16, 16)).double().flatten(1)
    row = exact[0]
    idx = [i for i, c in enumerate(ds.captions) if c == row["caption"]]
    cond = DiffusedPoints.from_points(points[idx], t["abar"])
    s_delta = cond.score(x) - uncond.score(x)
    h_delta = cond.hessian(x) - uncond.hessian(x)
    want = (torch.einsum("bij,bj->bi", h_delta, s_delta) ** 2).sum(1)
    np.testing.assert_allclose(row["sharp1_per_seed"], want.numpy(), rtol=1e-8)
    # Wen's metric is σ‖sΔ‖ (eps space)
    np.testing.assert_allclose(row["wen1"], float(((1 - t["abar"]) ** 0.5 * s_delta.norm(dim=1)).mean()), rtol=1e-10)
    # duplicates of one image: the conditional is a single Gaussian, H_c = -I/(1-ᾱ)
    assert torch.allclose(cond.hessian(x)[0], -torch.eye(x.shape[1], dtype=torch.float64) / (1 - t["abar"]))
    assert set(t["detection"]) >= {"sharp1", "wen1", "sharp1_exact_only"}
