"""Memorized vs held-out prompts: Hessian spectra at step 1 and at the last step (workshop paper §5).

    sailscope spectra-study --model demo --memorized 4 --heldout 4 \\
        --out docs/spectra_memorization.png --json docs/spectra_memorization.json

For each prompt (memorized captions from the model folder's ``memorized.jsonl``, ``exact`` items first;
held-out captions from ``heldout_prompts.txt``) it runs tracked generation with a
:class:`~sailscope.core.spectra.SpectrumProbe` at step 1 and the last step and records the spectrum of
``H(x,c)`` (the paper's conditional Hessian; ``--which`` to change). ``--method dense`` gives every eigenvalue
(the positive count is then exact, tolerance stated); ``arnoldi`` gives the ``k`` most negative and ``k``
most positive eigenvalues (cheap; the count is then "positive among the 2k found"). The PNG is drawn with
Pillow (no plotting dependency): sorted real parts, memorized in red, held-out in blue, signed-log axis.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from sailscope.core.errors import UserInputError
from sailscope.core.io.prompts import read_heldout, read_memorized
from sailscope.core.models import DEMO_MODEL_DIR
from sailscope.core.sampling import GenerationSettings, encode, generate
from sailscope.core.score import DiffusersScoreModel
from sailscope.core.spectra import SpectrumProbe, count_positive

GROUPS = ("memorized", "held-out")
COLORS = {"memorized": (200, 30, 30), "held-out": (30, 80, 200)}


def model_folder(name: str) -> Path:
    path = DEMO_MODEL_DIR if name == "demo" else Path(name)
    if not (path / "memorized.jsonl").is_file() or not (path / "heldout_prompts.txt").is_file():
        raise UserInputError(f"--model {name}: needs memorized.jsonl and heldout_prompts.txt in {path}")
    return path


def load_prompts(folder: Path, n_memorized: int, n_heldout: int) -> dict[str, list[str]]:
    """``exact`` memorized captions first (then templates), and the first held-out captions."""
    rows = sorted(read_memorized(folder), key=lambda r: r.get("kind") != "exact")
    held = read_heldout(folder)
    return {"memorized": [r["caption"] for r in rows[:n_memorized]], "held-out": held[:n_heldout]}


def spectra_for_prompt(pipe, prompt: str, *, seed: int, steps: int, which: str, method: str, k: int, chunk: int,
                       products: str) -> dict:
    """Real parts of the spectrum at step 1 and ``steps`` of one seeded generation, with sign counts."""
    settings = GenerationSettings(prompt=prompt, seed=seed, steps=steps, sharpness_at="none")
    with torch.no_grad():
        cond, uncond, _ = encode(pipe, settings, pipe._execution_device)
    model = DiffusersScoreModel.from_pipeline(pipe)
    at = {1, steps}
    if method == "dense":
        probes = [SpectrumProbe(at, which=which, k=None, method="dense", score_model=model, embeddings=(cond, uncond),
                                seed=seed, chunk=chunk)]
    else:
        probes = [SpectrumProbe(at, which=which, k=k, method="arnoldi", target=t, score_model=model,
                                embeddings=(cond, uncond), seed=seed, chunk=chunk, products=products)
                  for t in ("most_negative", "most_positive")]
    for _ in generate(pipe, settings, probes=probes, stop_after=steps):
        pass
    out = {}
    for step in sorted(at):
        specs = [p.results[step][0] for p in probes]
        lam = specs[0].eigenvalues
        for other in specs[1:]:  # the two ends may overlap (small d): keep values not already found
            scale = float(torch.cat([lam, other.eigenvalues]).abs().max())
            new = [v for v in other.eigenvalues if bool(((lam - v).abs() > 1e-6 * scale).all())]
            lam = torch.cat([lam, torch.stack(new)]) if new else lam
        pc = count_positive(lam)
        out[str(step)] = {
            "real_sorted": sorted(lam.real.tolist()), "positive": pc.positive, "negative": pc.negative,
            "near_zero": pc.near_zero, "tol": pc.tol, "total": pc.total, "min": float(lam.real.min()),
            "max": float(lam.real.max()), "converged": all(s.all_converged for s in specs),
            "hvps": sum(s.hvps for s in specs), "seconds": sum(s.seconds for s in specs),
        }
    return out


def summarize(rows: list[dict], steps: int) -> list[dict]:
    """Per group and step: median positive count, median most-negative eigenvalue, median negative count."""
    table = []
    for group in GROUPS:
        for step in (1, steps):
            r = [row["spectra"][str(step)] for row in rows if row["group"] == group]
            if not r:
                continue
            table.append({"group": group, "step": step, "prompts": len(r),
                          "median_positive": float(np.median([x["positive"] for x in r])),
                          "median_negative": float(np.median([x["negative"] for x in r])),
                          "median_min_eigenvalue": float(np.median([x["min"] for x in r])),
                          "all_converged": all(x["converged"] for x in r)})
    return table


def _symlog(v: float) -> float:
    return math.copysign(math.log10(1 + abs(v)), v)


def plot_png(rows: list[dict], steps: int, path: Path, title: str) -> None:
    """Two panels (step 1, last step): sorted real parts per prompt on a signed-log axis."""
    from PIL import Image, ImageDraw

    w, h, pad = 560, 420, 60
    img = Image.new("RGB", (2 * w, h + 40), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill="black")
    for panel, step in enumerate((1, steps)):
        x0 = panel * w + pad
        series = [(row["group"], row["spectra"][str(step)]["real_sorted"]) for row in rows]
        ys = [_symlog(v) for _, s in series for v in s] or [0.0]
        lo, hi = min(ys + [0.0]), max(ys + [0.0])
        hi = hi if hi > lo else lo + 1
        top, bottom, right = 40, h - 20, (panel + 1) * w - 20
        to_y = lambda v: bottom - (_symlog(v) - lo) / (hi - lo) * (bottom - top)
        draw.rectangle([x0, top, right, bottom], outline="black")
        zero = to_y(0.0)
        draw.line([x0, zero, right, zero], fill=(150, 150, 150))
        for tick in sorted({lo, 0.0, hi}):
            value = math.copysign(10 ** abs(tick) - 1, tick)
            yy = bottom - (tick - lo) / (hi - lo) * (bottom - top)
            draw.text((x0 - 55, yy - 6), f"{value:.3g}", fill="black")
        draw.text((x0, top - 16), f"step {step}: sorted Re(eigenvalue) of H, signed log scale", fill="black")
        for group, s in series:
            n = len(s)
            pts = [(x0 + (right - x0) * (i / max(n - 1, 1)), to_y(v)) for i, v in enumerate(s)]
            if len(pts) > 1:
                draw.line(pts, fill=COLORS[group], width=1)
            for p in pts if n <= 60 else []:
                draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], outline=COLORS[group])
    for i, group in enumerate(GROUPS):
        draw.text((2 * w - 170, 8 + 14 * i), f"-- {group}", fill=COLORS[group])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def run_study(pipe, prompts: dict[str, list[str]], *, seed: int, steps: int, which: str, method: str, k: int,
              chunk: int, products: str, log=print) -> tuple[list[dict], list[dict]]:
    """Spectra of every prompt of every group at step 1 and at the last step: ``(rows, summary)``."""
    rows = []
    for group in GROUPS:
        for prompt in prompts[group]:
            spectra = spectra_for_prompt(pipe, prompt, seed=seed, steps=steps, which=which, method=method, k=k,
                                         chunk=chunk, products=products)
            rows.append({"group": group, "prompt": prompt, "spectra": spectra})
            s1, sl = spectra["1"], spectra[str(steps)]
            log(f"{group:>9}  step1 +{s1['positive']}/-{s1['negative']} min {s1['min']:.4g}   "
                f"step{steps} +{sl['positive']}/-{sl['negative']} min {sl['min']:.4g}   {prompt}")
    return rows, summarize(rows, steps)
