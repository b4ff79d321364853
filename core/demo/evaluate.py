"""Evaluate the embedded demo model: copy distance/rate, attribute accuracy, step-1 detection.

One pass per prompt generates seeds ``0..n-1`` as one batch (50 DDIM steps, guidance 7.5) with
:func:`sailscope.core.sampling.run_generation`, recording Wen's metric at every step and the sharpness
``‖HΔ sΔ‖²`` at step 1. From it:

- *copy distance*: RMSE in [0,1] pixel space between a generation and its memorized training image
  (memorized prompts) or its nearest training image (held-out prompts);
- ``tau_copy``: the largest VAE reconstruction RMSE over every training image, rounded up to 0.01, so that
  every VAE reconstruction of a training image counts as a copy (a generation cannot be closer to the
  data than the decoder allows); the report lists the held-out nearest-neighbour distances next to it;
- *attribute accuracy*: :func:`sailscope.core.demo.data.check_attributes` on held-out generations, with the
  first check each failure fails (colour / count / shape); next to it the checker on the ground-truth renders
  and on their VAE round trips (decode(encode(render))): the latter is the most a UNet can reach through this
  VAE, since every generation is a decoded latent;
- *held-out copies*, two ways: within ``tau_copy`` of *any* training image (the issue's wording) and of a
  *memorized* image; next to them the same rate for the generator's own ground-truth renders of the held-out
  prompts, the value a model that draws exactly what each novel prompt asks would get (small shapes on smooth
  backgrounds: a faithful novel image is often nearer than the VAE's error to some training image);
- *detection*: AUC and TPR@1%FPR (memorized exact+template captions positive, held-out negative) of
  step-1 sharpness, Wen at step 1 and Wen averaged over all steps, each averaged over the seeds;
- *look-alikes* (:func:`sailscope.core.demo.data.lookalike_prompts`): fresh captions with a memorized-style suffix
  and memorized captions with another number. Each is generated like the others; it *copies* when a seed lands
  within ``tau_copy`` of a memorized image. Detection is reported against every negative group separately:
  plain held-out, all look-alikes, the non-copying ones (false alarms if flagged) and the copying ones (triggers).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sailscope.core.detect import roc_auc, tpr_at_fpr
from sailscope.core.io.prompts import read_memorized
from sailscope.core.sampling import GenerationSettings, run_generation

from . import data as demo_data


def load_pipeline(model_dir: str | Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_memorized(model_dir: str | Path) -> list[dict]:
    """Rows of ``memorized.jsonl`` with the training image loaded as float [0,1] HxWx3 (key ``array``)."""
    from PIL import Image

    model_dir = Path(model_dir)
    rows = read_memorized(model_dir)
    for r in rows:
        r["array"] = np.asarray(Image.open(model_dir / r["image"]).convert("RGB"), np.float32) / 255.0
    return rows


def rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image RMSE over the last three axes, broadcasting ``a`` (N,...) against ``b``."""
    return np.sqrt(((a - b) ** 2).mean(axis=(-3, -2, -1)))


def nearest_train_rmse(gen: np.ndarray, train: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each generated image (N,H,W,3) the RMSE to its nearest training image (M,H,W,3)."""
    g = gen.reshape(len(gen), -1).astype(np.float32)
    best = np.full(len(g), np.inf, np.float32)
    g2 = (g**2).sum(1)
    for i in range(0, len(train), chunk):
        t = train[i:i + chunk].reshape(-1, g.shape[1]).astype(np.float32)
        d = g2[:, None] + (t**2).sum(1)[None] - 2 * g @ t.T
        best = np.minimum(best, d.min(1))
    return np.sqrt(np.maximum(best, 0) / g.shape[1])


def training_set(model_dir: Path) -> tuple[demo_data.DemoDataset, dict]:
    """Rebuild the training set from the configuration recorded at export."""
    info = json.loads((Path(model_dir) / "train_info.json").read_text())
    return demo_data.dataset_from_config(info["config"]), info


def training_images(model_dir: Path) -> tuple[np.ndarray, dict]:
    """The training images (float [0,1]) and the recorded ``train_info.json``."""
    ds, info = training_set(model_dir)
    return ds.images.astype(np.float32) / 255.0, info


def heldout_truth_renders(prompts: list[str], design: str, per_prompt: int, seed: int = 12345) -> np.ndarray:
    """Ground-truth renders (float [0,1]) of held-out prompts by the data generator: what a perfect model draws."""
    rng = np.random.default_rng(seed)
    return np.stack([demo_data.render(rng, demo_data.parse_caption(p), design) for p in prompts
                     for _ in range(per_prompt)]).astype(np.float32) / 255.0


def vae_roundtrip(pipe, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """decode(encode(x).mean) of float [0,1] HxWx3 images, back in [0,1]."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2) * 2 - 1
            rec = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            out.append(((rec + 1) / 2).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def vae_reconstruction_rmse(pipe, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """RMSE of decode(encode(x).mean) per training image, in [0,1] pixels."""
    return rmse(vae_roundtrip(pipe, images, batch), images)


def failure_counts(failures) -> dict[str, int]:
    """``{"ok", "colour", "count", "shape"}`` counts of :func:`~sailscope.core.demo.data.attribute_failure` results."""
    out = {"ok": 0, "colour": 0, "count": 0, "shape": 0}
    for f in failures:
        out[f or "ok"] += 1
    return out


def attribute_failures(images: np.ndarray, captions: list[str]) -> dict[str, int]:
    """How many images pass the attribute checker (``ok``) and, for the others, the first check they fail."""
    return failure_counts(demo_data.attribute_failure(a, c) for a, c in zip(images, captions))


def roc_summary(positives: list[float], negatives: list[float]) -> dict:
    """AUC and TPR@1%FPR of scores, positives against negatives (None when a side is empty)."""
    if not positives or not negatives:
        return {"auc": None, "tpr_at_1fpr": None, "n_neg": len(negatives)}
    s, y = positives + negatives, [1] * len(positives) + [0] * len(negatives)
    return {"auc": roc_auc(s, y), "tpr_at_1fpr": tpr_at_fpr(s, y, 0.01), "n_neg": len(negatives)}


def evaluate(model_dir: str | Path, *, seeds: int = 4, steps: int = 50, guidance: float = 7.5,
             n_heldout: int | None = None, hvp: str = "exact", n_lookalike: int = 40, per_memorized: int = 2,
             log=print) -> dict:
    """Compute the model card table; returns a JSON-able dict (see module docstring)."""
    model_dir = Path(model_dir)
    t0 = time.time()
    pipe = load_pipeline(model_dir)
    memo = load_memorized(model_dir)
    held = [l for l in (model_dir / "heldout_prompts.txt").read_text().splitlines() if l.strip()]
    if n_heldout is not None:
        held = held[:n_heldout]
    ds, info = training_set(model_dir)
    train = ds.images.astype(np.float32) / 255.0
    lookalikes = demo_data.lookalike_prompts(ds, n_fresh=n_lookalike, per_memorized=per_memorized)

    # 1. tau_copy from the VAE's reconstruction error on every training image
    rec = vae_reconstruction_rmse(pipe, train)
    tau = math.ceil(float(rec.max()) * 100) / 100
    log(f"VAE reconstruction RMSE: mean {rec.mean():.4f} max {rec.max():.4f} -> tau_copy {tau:.2f}")

    def one(prompt: str) -> dict:
        settings = GenerationSettings(prompt=prompt, seed=0, num_images=seeds, steps=steps, guidance=guidance,
                                      sharpness_at=(1,), hvp=hvp)
        r = run_generation(pipe, settings)
        wen = np.array([rec_.wen for rec_ in r.records])  # (steps, seeds)
        return {"array": r.array, "sharp1": float(np.mean(r.records[0].sharpness)), "wen1": float(wen[0].mean()),
                "wen_all": float(wen.mean()), "seconds": r.seconds, "sharp1_per_seed": r.records[0].sharpness}

    # 2. memorized prompts
    rows = []
    for m in memo:
        g = one(m["caption"])
        d = rmse(g["array"], m["array"][None])
        rows.append({"caption": m["caption"], "kind": m["kind"], "copy_rmse": d.tolist(), "label": 1,
                     **{k: g[k] for k in ("sharp1", "wen1", "wen_all", "seconds")}})
        log(f"[mem {m['kind']}] rmse {np.round(d, 3).tolist()} sharp1 {g['sharp1']:.3g} wen1 {g['wen1']:.3g} {m['caption']}")
    # 3. held-out prompts
    memo_train = np.stack([m["array"] for m in memo])
    for i, p in enumerate(held):
        g = one(p)
        nn = nearest_train_rmse(g["array"], train)
        nn_memo = nearest_train_rmse(g["array"], memo_train)
        fail = [demo_data.attribute_failure(a, p) for a in g["array"]]
        attr = [f is None for f in fail]
        rows.append({"caption": p, "kind": "heldout", "nn_rmse": nn.tolist(), "nn_memorized_rmse": nn_memo.tolist(),
                     "attr_ok": attr, "attr_fail": fail, "label": 0,
                     **{k: g[k] for k in ("sharp1", "wen1", "wen_all", "seconds")}})
        if i % 10 == 0:
            log(f"[held {i}] nn {np.round(nn, 3).tolist()} attr {attr} sharp1 {g['sharp1']:.3g} wen1 {g['wen1']:.3g} {p}")

    # 4. look-alike prompts: a memorized-style caption that copies a memorized image is a trigger, not a false alarm
    for group, prompts in lookalikes.items():
        for p in prompts:
            g = one(p)
            d = nearest_train_rmse(g["array"], memo_train)
            rows.append({"caption": p, "kind": group, "memorized_rmse": d.tolist(), "copies": int((d < tau).sum()),
                         "label": 0, **{k: g[k] for k in ("sharp1", "wen1", "wen_all", "seconds")}})
        log(f"[{group}] {len(prompts)} prompts, {sum(r['copies'] > 0 for r in rows if r['kind'] == group)} copy")

    # 5. table
    exact = [r for r in rows if r["kind"] == "exact"]
    templ = [r for r in rows if r["kind"] == "template"]
    hrows = [r for r in rows if r["kind"] == "heldout"]
    copy_exact = np.array([d < tau for r in exact for d in r["copy_rmse"]])
    copy_templ = np.array([d < tau for r in templ for d in r["copy_rmse"]])
    nn_all = np.array([d for r in hrows for d in r["nn_rmse"]])
    nn_memo_all = np.array([d for r in hrows for d in r["nn_memorized_rmse"]])
    held_caps = [r["caption"] for r in hrows]
    truth = heldout_truth_renders(held_caps, info["config"].get("data_design", "v1"), seeds)  # prompt-major
    truth_nn = nearest_train_rmse(truth, train)
    truth_attr = np.array([demo_data.check_attributes(a, c) for a, c in zip(truth, np.repeat(held_caps, seeds))])
    truth_decoded = attribute_failures(vae_roundtrip(pipe, truth), list(np.repeat(held_caps, seeds)))
    gen_failures = failure_counts(f for r in hrows for f in r["attr_fail"])
    attr_all = np.array([a for r in hrows for a in r["attr_ok"]])
    look = [r for r in rows if r["kind"] in lookalikes]
    negatives = {"heldout": hrows, "lookalike": look, "lookalike_not_copying": [r for r in look if r["copies"] == 0],
                 "lookalike_copying": [r for r in look if r["copies"] > 0],
                 **{g: [r for r in look if r["kind"] == g] for g in lookalikes}}
    det = {}
    for key in ("sharp1", "wen1", "wen_all"):
        det[key] = roc_summary([r[key] for r in exact + templ], [r[key] for r in hrows])
        det[key + "_exact_only"] = roc_summary([r[key] for r in exact], [r[key] for r in hrows])
    det_by_negatives = {name: {key: roc_summary([r[key] for r in exact + templ], [r[key] for r in neg])
                               for key in ("sharp1", "wen1")} for name, neg in negatives.items()}
    secs = [r["seconds"] for r in rows]
    table = {
        "model_dir": str(model_dir), "unet_steps_trained": info.get("unet_steps_done"),
        "seeds": seeds, "steps": steps, "guidance": guidance, "hvp": hvp,
        "n_memorized_exact": len(exact), "n_memorized_template": len(templ), "n_heldout": len(hrows),
        "tau_copy": tau, "vae_recon_rmse_mean": float(rec.mean()), "vae_recon_rmse_max": float(rec.max()),
        "copy_rate_exact": float(copy_exact.mean()) if copy_exact.size else None,
        "copy_rate_template": float(copy_templ.mean()) if copy_templ.size else None,
        "copy_rmse_exact_median": float(np.median([d for r in exact for d in r["copy_rmse"]])) if exact else None,
        "copy_rate_heldout": float((nn_all < tau).mean()), "heldout_nn_rmse_min": float(nn_all.min()),
        "heldout_nn_rmse_median": float(np.median(nn_all)),
        "copy_rate_heldout_memorized": float((nn_memo_all < tau).mean()),
        "heldout_truth_within_tau": float((truth_nn < tau).mean()),
        "heldout_truth_nn_rmse_median": float(np.median(truth_nn)),
        "heldout_truth_attribute_accuracy": float(truth_attr.mean()),
        # the checker on decode(encode(ground truth)): what a UNet that hit each render's latent exactly would score
        "heldout_truth_decoded_attribute_accuracy": truth_decoded["ok"] / max(1, sum(truth_decoded.values())),
        "heldout_truth_decoded_failures": truth_decoded,
        "attribute_accuracy_heldout": float(attr_all.mean()),
        "attribute_failures_heldout": gen_failures,
        "detection": det,
        "detection_by_negatives": det_by_negatives,
        "lookalike_copying_prompts": [r["caption"] for r in look if r["copies"] > 0],
        "lookalike_copy_rate": {g: float(np.mean([r["copies"] / seeds for r in look if r["kind"] == g]))
                                for g in lookalikes},
        "seconds_per_prompt_median": float(np.median(secs)),
        "eval_wall_s": time.time() - t0,
        "rows": rows,
    }
    return table


def time_generation(model_dir: str | Path, repeats: int = 5, steps: int = 50) -> dict:
    """Median wall time of one stock 50-step DDIM generation (batch 1, guidance 7.5)."""
    pipe = load_pipeline(model_dir)
    pipe("warm up", num_inference_steps=2, output_type="np")
    ts = []
    for i in range(repeats):
        t = time.perf_counter()
        pipe("a red circle on the left", num_inference_steps=steps, guidance_scale=7.5, output_type="np",
             generator=torch.Generator().manual_seed(i))
        ts.append(time.perf_counter() - t)
    return {"median_s": float(np.median(ts)), "all_s": ts, "threads": torch.get_num_threads()}


def format_table(t: dict) -> str:
    d = t["detection"]
    lines = [
        "| quantity | value |", "|---|---|",
        f"| tau_copy (max VAE reconstruction RMSE over all training images, rounded up) | {t['tau_copy']:.2f} |",
        f"| copy rate, memorized exact ({t['n_memorized_exact']} captions x {t['seeds']} seeds) | {t['copy_rate_exact']:.2f} |",
        f"| median copy RMSE, memorized exact | {t['copy_rmse_exact_median']:.3f} |",
        f"| copy rate, template items ({t['n_memorized_template']} x {t['seeds']}) | {t['copy_rate_template']:.2f} |",
        f"| held-out ({t['n_heldout']} prompts x {t['seeds']} seeds) within tau of some training image | {t['copy_rate_heldout']:.2f} |",
        f"| held-out nearest-training-image RMSE, min / median | {t['heldout_nn_rmse_min']:.3f} / {t['heldout_nn_rmse_median']:.3f} |",
        f"| copy rate, held-out vs memorized images only | {t['copy_rate_heldout_memorized']:.2f} |",
        f"| ground-truth renders of the held-out prompts within tau of some training image (what a perfect model gets) | {t['heldout_truth_within_tau']:.2f} |",
        f"| attribute accuracy of those renders (the checker on ground truth) | {t['heldout_truth_attribute_accuracy']:.2f} |",
        f"| attribute accuracy of their VAE round trips, decode(encode(render)) (the most a UNet can reach through this VAE) | {t['heldout_truth_decoded_attribute_accuracy']:.2f} |",
        f"| attribute accuracy, held-out | {t['attribute_accuracy_heldout']:.2f} |",
        "| failed checks, round trips / generations (colour, count, shape) | "
        + " / ".join(", ".join(str(f[k]) for k in ("colour", "count", "shape"))
                     for f in (t["heldout_truth_decoded_failures"], t["attribute_failures_heldout"])) + " |",
        f"| step-1 sharpness, n={t['seeds']}: AUC / TPR@1%FPR | {d['sharp1']['auc']:.3f} / {d['sharp1']['tpr_at_1fpr']:.3f} |",
        f"| Wen, 1 step, n={t['seeds']}: AUC / TPR@1%FPR | {d['wen1']['auc']:.3f} / {d['wen1']['tpr_at_1fpr']:.3f} |",
        f"| Wen, {t['steps']} steps, n={t['seeds']}: AUC / TPR@1%FPR | {d['wen_all']['auc']:.3f} / {d['wen_all']['tpr_at_1fpr']:.3f} |",
    ]
    for name, det in t.get("detection_by_negatives", {}).items():
        if name == "heldout":
            continue
        cells = " / ".join("–" if det[k]["auc"] is None else f"{det[k]['auc']:.3f}" for k in ("sharp1", "wen1"))
        lines.append(f"| memorized vs {name.replace('_', ' ')} (n = {det['sharp1']['n_neg']}): step-1 sharpness / "
                     f"Wen-1 AUC | {cells} |")
    return "\n".join(lines)
