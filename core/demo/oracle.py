"""Step-1 detection ceiling of a demo data design: the metrics a *perfect* denoiser would give.

A model cannot be sharper than its data. At the first sampling step the exact noised density of the training
set is ``p_t(x) = Σ_i w_i N(x; √ᾱ x_i, (1-ᾱ) I)`` (the training latents ``x_i`` with their sampling weights),
and the exact conditional density of a caption is the same mixture over the images it was paired with
(:class:`sailscope.core.oracles.DiffusedPoints`). Evaluating step-1 sharpness ``‖HΔ sΔ‖²`` and Wen's
``‖eps_c - eps_u‖`` on these exact scores (the product's own :func:`sailscope.core.metrics.sharpness`, in the
same score-space units as a real run) gives the detection AUC that an ideally trained model of that data
would reach. It costs minutes, no training, so a caption/data design can be checked before hours of UNet
training.

- unconditional: every training latent, weighted as the UNet sampler draws them;
- memorized caption: the latents of its duplicates (one point for ``exact`` items);
- held-out prompt: ``samples`` fresh renders of the caption from the generator (the caption's true
  conditional distribution; 256 samples change the values by about 10 % against 2,048);
- ``x_T``: the per-seed noise stock diffusers draws for seeds ``0..n-1``; ``ᾱ`` of the first of ``steps``
  steps of the model's scheduler.

    sailscope demo-oracle --design v1 --heldout 40 --out docs/demo_oracle_v1.json
"""
from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor

from sailscope.core.detect import roc_auc, tpr_at_fpr
from sailscope.core.metrics import sharpness, wen_metric
from sailscope.core.oracles import DiffusedPoints, guided_from_models

from . import data as demo_data
from .train import to_tensor_images


def encode_latents(vae, images: np.ndarray, batch: int = 256) -> Tensor:
    """Scaled posterior means ``scaling_factor · E[z|x]`` of uint8 images, flattened, float64 ``(N, d)``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            z = vae.encode(to_tensor_images(images[i:i + batch])).latent_dist.mean
            out.append((z * vae.config.scaling_factor).double().flatten(1))
    return torch.cat(out)


def first_step_abar(scheduler, steps: int) -> float:
    """``ᾱ`` at the first timestep of a ``steps``-step schedule (981 for SD's DDIM at 50 steps)."""
    scheduler.set_timesteps(steps)
    return float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])


def seed_noise(seeds: int, shape: tuple[int, ...]) -> Tensor:
    """``x_T`` for seeds ``0..n-1``, one CPU generator per seed as the pipeline draws it."""
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in range(seeds)])


def step1_metrics(cond: DiffusedPoints, uncond: DiffusedPoints, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-seed ``(‖HΔ sΔ‖², ‖eps_c - eps_u‖)`` of the exact scores at ``x`` (``(B, d)``)."""
    sigma = (1.0 - cond.abar) ** 0.5
    gs = guided_from_models(cond, uncond, sigma=sigma)
    value = sharpness(gs, x, method="exact").value
    eps_c, eps_u = gs.eps_pair(x)
    return value, wen_metric(eps_c, eps_u)


def ceiling(ds: demo_data.DemoDataset, vae, scheduler, *, design: str, memorized_weight: float, seeds: int = 4,
            steps: int = 50, heldout: int = 40, samples: int = 256, log=print) -> dict:
    """The step-1 detection table of a perfect denoiser of ``ds`` (module docstring)."""
    start = time.perf_counter()
    abar = first_step_abar(scheduler, steps)
    points = encode_latents(vae, ds.images)
    weights = torch.tensor([1.0 if k == "general" else memorized_weight for k in ds.kinds], dtype=torch.float64)
    uncond = DiffusedPoints.from_points(points, abar, weights)
    latent_shape = (vae.config.latent_channels, ds.images.shape[1] // 4, ds.images.shape[2] // 4)
    x = seed_noise(seeds, latent_shape).double().flatten(1)
    rows = []

    def add(caption: str, kind: str, cond_points: Tensor) -> None:
        sh, wen = step1_metrics(DiffusedPoints.from_points(cond_points, abar), uncond, x)
        rows.append({"caption": caption, "kind": kind, "label": int(kind != "heldout"), "n_points": len(cond_points),
                     "sharp1": float(sh.mean()), "wen1": float(wen.mean()), "sharp1_per_seed": sh.tolist()})

    captions = np.array(ds.captions)
    for item in ds.memorized:
        add(item.caption, item.kind, points[torch.from_numpy(np.flatnonzero(captions == item.caption))])
    for j, prompt in enumerate(ds.heldout[:heldout]):
        rng = np.random.default_rng([99, j])
        spec = demo_data.parse_caption(prompt)
        renders = np.stack([demo_data.render(rng, spec, design) for _ in range(samples)])
        add(prompt, "heldout", encode_latents(vae, renders))
    det = {}
    for key in ("sharp1", "wen1"):
        for name, keep in (("", lambda r: True), ("_exact_only", lambda r: r["kind"] != "template")):
            sel = [r for r in rows if keep(r)]
            s, lab = [r[key] for r in sel], [r["label"] for r in sel]
            det[key + name] = {"auc": roc_auc(s, lab), "tpr_at_1fpr": tpr_at_fpr(s, lab, 0.01)}
    by_kind = {k: [r["sharp1"] for r in rows if r["kind"] == k] for k in ("exact", "template", "heldout")}
    log(f"abar {abar:.5f}; sharpness exact {np.round(np.percentile(by_kind['exact'], [0, 50, 100]), 3).tolist()}, "
        f"held-out {np.round(np.percentile(by_kind['heldout'], [0, 50, 100]), 3).tolist()}")
    return {"design": design, "data_design": asdict(demo_data.get_design(design)), "abar": abar, "seeds": seeds,
            "steps": steps, "n_heldout": len(by_kind["heldout"]), "samples_per_heldout": samples,
            "memorized_weight": memorized_weight, "detection": det, "seconds": time.perf_counter() - start,
            "rows": rows}


def format_table(t: dict) -> str:
    d = t["detection"]
    return "\n".join([
        f"perfect denoiser of data design {t['design']} (ᾱ {t['abar']:.4f}, n={t['seeds']}, "
        f"{t['n_heldout']} held-out prompts x {t['samples_per_heldout']} renders)",
        "| metric | AUC | TPR@1%FPR |", "|---|---|---|",
        f"| step-1 sharpness | {d['sharp1']['auc']:.3f} | {d['sharp1']['tpr_at_1fpr']:.3f} |",
        f"| Wen, step 1 | {d['wen1']['auc']:.3f} | {d['wen1']['tpr_at_1fpr']:.3f} |",
    ])
