"""SAIL and RTA on the embedded demo model: the table of docs/mitigation.md, from scratch (CPU, not CI).

    python tests/bench/demo_sail_eval.py --out runs/demo_sail            # full run (seeds 0-3, 50 DDIM steps)
    python tests/bench/demo_sail_eval.py --quick --out /tmp/demo_sail    # 4 memorized, 8 held-out, 2 seeds

Stages: (1) calibrate the model's thresholds on *fresh* grammar captions (neither memorized nor in the
held-out evaluation set), into ``<out>/calibration.json`` (``SAILSCOPE_HOME=<out>`` for this run);
(2) originals (seed's ``x_T``) for memorized and held-out prompts; (3) SAIL at default settings (``--sail
k=v,...`` overrides them), and a control: the stock noise rotated by SAIL's angle towards a random direction
(does SAIL's direction matter?);
(4) SAIL at 5 thresholds and RTA at 5 token counts on the memorized prompts; (5) timings.

Definitions (demo model card): *copy distance* = RMSE in [0, 1] pixels to the memorized training image;
*copy* = distance < ``τ_copy`` (``--tau``, default: the card's ``eval.json`` ``tau_copy``, else
``train_info.json``'s, else 0.15); *attribute accuracy* = :func:`sailscope.core.demo.data.check_attributes`
(every phrase: a blob of the named colour in its region, enough of them, the largest of the named shape);
*colour accuracy* / *shape accuracy* = the fraction of a caption's phrases whose colour is found in its region /
whose largest such blob also has the named shape (the same checker's parts, per phrase: finer than all-or-nothing,
which sits near the floor for every image of this model).
Held-out prompts: copy = distance to the nearest memorized training image < ``τ_copy``.

The reference for SAIL's attribute numbers is the model's normal generations of *held-out* prompts with the same
form (two named objects, like every memorized caption): ``original.heldout.*_2_objects``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--out", default="runs/demo_sail")
    p.add_argument("--seeds", type=int, default=4, help="seeds S..S+N-1 (default 4)")
    p.add_argument("--seed-start", type=int, default=0,
                   help="first seed S (default 0; the development probes in docs/mitigation.md use 4)")
    p.add_argument("--calib-seeds", type=int, default=4, help="seeds 0..N-1 for the calibration (default 4)")
    p.add_argument("--sail", default="",
                   help="overrides of the default-stage SAIL settings, e.g. lr=0.2,max_steps=8,sphere=false,threshold=0")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--heldout", type=int, default=40,
                   help="held-out prompts evaluated, evenly spaced over heldout_prompts.txt (default 40; the file "
                        "lists one-object captions first, so its first lines alone are not representative)")
    p.add_argument("--calib-prompts", type=int, default=48, help="fresh captions for calibration")
    p.add_argument("--tau", type=float, default=None)
    p.add_argument("--objective", default="paper", choices=["paper", "reference"])
    p.add_argument("--quantiles", default="0.1,0.25,0.5,0.75,0.9",
                   help="SAIL threshold sweep (calibration quantiles; the trigger stays at its default)")
    p.add_argument("--thresholds", default="",
                   help="absolute SAIL thresholds for the sweep instead of calibration quantiles (e.g. 0.1,0.01)")
    p.add_argument("--rta", default="1,2,4,6,8", help="RTA token counts")
    p.add_argument("--timing", type=int, default=6, help="memorized prompts in the timing comparison")
    p.add_argument("--timing-seed", type=int, default=None,
                   help="seed of the timing comparison (default: the first evaluated seed)")
    p.add_argument("--sweep-seeds", type=int, default=None,
                   help="seeds for the threshold sweep and RTA stages (default: --seeds)")
    p.add_argument("--candidates", type=int, default=None,
                   help="SAIL candidates per image for the default and sweep stages (default: the model's "
                        "sail_defaults.json, else 1 = the seed's own x_T)")
    p.add_argument("--grid", default=None,
                   help="also write a PNG: per exact caption, its training image, the originals and SAIL's images")
    p.add_argument("--grid-heldout", type=int, default=3,
                   help="rows of two-object held-out prompts (originals | SAIL) under the grid's memorized rows: the "
                        "model's normal generations, for comparison (default 3; needs --heldout > 0)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="reuse the calibration and the original (no-mitigation) images across runs: read from / written "
                        "to DIR, keyed by prompt, seeds, steps, guidance and calibration size (probes of SAIL settings)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip", default="", help="comma list of stages to skip: default,control,sweep,rta,timing")
    return p.parse_args(argv)


def sail_overrides(text: str) -> dict:
    """``"lr=0.2,sphere=false,trigger=none"`` -> keyword arguments for ``SailSettings``."""
    out: dict = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, raw = item.partition("=")
        low = raw.strip().lower()
        if low in ("true", "false"):
            out[key.strip()] = low == "true"
        elif low == "none":
            out[key.strip()] = None
        else:
            try:
                out[key.strip()] = int(raw) if low.lstrip("-").isdigit() else float(raw)
            except ValueError:
                out[key.strip()] = raw.strip()
    return out


def evenly_spaced(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when ``n >= len(items)``), in file order."""
    if n >= len(items):
        return list(items)
    if n <= 0:
        return []
    return [items[i] for i in sorted({int(round(x)) for x in np.linspace(0, len(items) - 1, n)})]


def phrases(caption: str) -> int:
    """Objects named by a grammar caption (1, or 2 for "... above ..." / "... on the left and ... on the right")."""
    from sailscope.core.demo.data import parse_caption

    return len(parse_caption(caption).phrases)


def phrase_scores(img: np.ndarray, caption: str) -> tuple[float, float]:
    """``(colour, shape)``: the fraction of the caption's phrases with a blob of the named colour in the phrase's
    region, and with the largest such blob of the named shape (the parts of
    :func:`sailscope.core.demo.data.attribute_failure`, per phrase instead of the first failure)."""
    from scipy import ndimage

    from sailscope.core.demo.data import COLORS, MIN_BLOB, REGIONS, classify_shape, color_labels, parse_caption

    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(np.round(img * 255), 0, 255)
    spec, lab, names = parse_caption(caption), color_labels(img), list(COLORS)
    colour = shape = 0
    for phrase, region in zip(spec.phrases, spec.regions):
        x0, y0, x1, y1 = REGIONS[region]
        sub = np.zeros(lab.shape, bool)
        sub[y0:y1, x0:x1] = lab[y0:y1, x0:x1] == names.index(phrase.color)
        comp, n = ndimage.label(sub)
        blobs = sorted((comp == i for i in range(1, n + 1) if (comp == i).sum() >= MIN_BLOB), key=lambda b: -b.sum())
        if blobs:
            colour += 1
            shape += classify_shape(blobs[0]) == phrase.shape
    k = max(len(spec.phrases), 1)
    return colour / k, shape / k


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def write_grid(path: Path, memo, originals, mitigated, tau: float, heldout=()) -> None:
    """One row per caption: training image | original per seed | SAIL per seed; copies framed red (RMSE < tau).
    ``heldout``: ``(prompt, originals array, SAIL array)`` rows under them, first cell blank (normal generations);
    images that pass the attribute checker are framed green."""
    from sailscope.core.demo.data import check_attributes
    from PIL import Image, ImageDraw

    def tile(a, frame=None):
        im = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))
        if frame:
            ImageDraw.Draw(im).rectangle([0, 0, im.width - 1, im.height - 1], outline=frame, width=2)
        return im

    rows = []
    for m in memo:
        cells = [tile(m["train"], (40, 40, 40))]
        for arr in (originals[m["caption"]].array, mitigated[m["caption"]]):
            cells.append(None)  # gap
            cells += [tile(a, (220, 30, 30) if rmse(a, m["train"]) < tau else
                           (30, 160, 60) if check_attributes(a, m["caption"]) else None) for a in arr]
        rows.append(cells)
    for prompt, orig, sail in heldout:
        cells = [tile(np.ones_like(orig[0]))]
        for arr in (orig, sail):
            cells.append(None)
            cells += [tile(a, (30, 160, 60) if check_attributes(a, prompt) else None) for a in arr]
        rows.append(cells)
    size, gap = rows[0][0].width, 8
    width = sum(gap if c is None else size for c in rows[0])
    sheet = Image.new("RGB", (width, len(rows) * (size + 2)), "white")
    for i, cells in enumerate(rows):
        x = 0
        for c in cells:
            if c is None:
                x += gap
                continue
            sheet.paste(c, (x, i * (size + 2)))
            x += size
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["SAILSCOPE_HOME"] = str(out.resolve())
    import torch
    from PIL import Image

    from sailscope.core import calibration as cal
    from sailscope.core.demo.data import check_attributes
    from sailscope.core.sampling import GenerationSettings, run_generation
    from sailscope.core.models import DEMO_MODEL_DIR, load_pipeline
    from sailscope.core.mitigation.rta import RtaSettings
    from sailscope.core.mitigation import SailSettings, run_sail

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    folder = DEMO_MODEL_DIR if args.model == "demo" else Path(args.model)
    if not (folder / "model_index.json").is_file():
        print(f"demo_sail_eval: no model at {folder} (train it: sailscope train-demo)", file=sys.stderr)
        return 2
    pipe = load_pipeline(str(folder) if args.model != "demo" else "demo", device="cpu", dtype="fp32")
    memo = [json.loads(l) for l in (folder / "memorized.jsonl").read_text().splitlines() if l.strip()]
    for m in memo:
        m["train"] = np.asarray(Image.open(folder / m["image"]).convert("RGB"), float) / 255.0
    heldout = [l.strip() for l in (folder / "heldout_prompts.txt").read_text().splitlines() if l.strip()]
    info = json.loads((folder / "train_info.json").read_text()) if (folder / "train_info.json").is_file() else {}
    card = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").is_file() else {}
    tau = args.tau if args.tau is not None else float(card.get("tau_copy", info.get("tau_copy", 0.15)))
    n_seeds, steps = args.seeds, args.steps
    if args.quick:
        memo, heldout, n_seeds, args.calib_prompts, args.timing = memo[:4], evenly_spaced(heldout, 8), 2, 12, 2
        args.calib_seeds = 2
    heldout = evenly_spaced(heldout, args.heldout)
    seeds = list(range(args.seed_start, args.seed_start + n_seeds))
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    sweep_seeds = min(args.sweep_seeds or n_seeds, n_seeds)
    skip = set(args.skip.split(","))
    results: dict = {"model": str(folder), "tau_copy": tau, "seeds": seeds, "steps": steps, "guidance": args.guidance,
                     "sweep_seeds": seeds[:sweep_seeds], "command": " ".join(sys.argv)}

    def save() -> None:  # after every stage, so a cut-off run keeps what it measured
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    def gen(prompt, x_T=None, n=n_seeds):
        gs = GenerationSettings(prompt=prompt, seed=args.seed_start, num_images=n, steps=steps, guidance=args.guidance)
        return run_generation(pipe, gs, x_T=x_T)

    def gen_original(prompt):
        """``gen(prompt)``, through ``--cache`` (only what the stages read: the images and step-1 sharpness)."""
        if cache is None:
            return gen(prompt)
        import hashlib
        from types import SimpleNamespace

        key = hashlib.sha1(f"{prompt}|{args.seed_start}|{n_seeds}|{steps}|{args.guidance}".encode()).hexdigest()[:16]
        f = cache / "originals" / f"{key}.npz"
        if f.is_file():
            z = np.load(f)
            return SimpleNamespace(array=z["array"], records=[SimpleNamespace(sharpness=z["sharpness"].tolist())])
        g = gen(prompt)
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f, array=g.array, sharpness=np.asarray(g.records[0].sharpness, float))
        return g

    def gs_of(prompt, n=n_seeds, seed=None):
        return GenerationSettings(prompt=prompt, seed=args.seed_start if seed is None else seed, num_images=n,
                                  steps=steps, guidance=args.guidance)

    # 1. Calibration on fresh captions
    t0 = time.perf_counter()
    from sailscope.core.calibration import demo_calibration_prompts

    calib_prompts = demo_calibration_prompts(args.calib_prompts, folder)  # same prompts as `sailscope calibrate`
    cache = Path(args.cache) if args.cache else None
    cached_cal = cache / f"calibration_{args.calib_prompts}x{args.calib_seeds}_{steps}.json" if cache else None
    if cached_cal is not None and cached_cal.is_file():
        record = cal.Calibration.from_dict(json.loads(cached_cal.read_text()))
    else:
        record = cal.measure(pipe, calib_prompts, list(range(args.calib_seeds)), steps=steps)
        if cached_cal is not None:
            cached_cal.parent.mkdir(parents=True, exist_ok=True)
            cached_cal.write_text(json.dumps(record.to_dict()))
    cal.save_calibration(record)
    det_thr = record.detection_threshold()
    log(f"calibrated on {record.n} values in {time.perf_counter() - t0:.0f}s; detection threshold {det_thr:.4g}")
    results["calibration"] = {"n": record.n, "detection_threshold": det_thr, "seconds": time.perf_counter() - t0}

    # 2. Originals
    save()

    def score_memo(m, arr):
        d = [rmse(a, m["train"]) for a in arr]
        parts = [phrase_scores(a, m["caption"]) for a in arr]
        return {"dist": d, "copy": [x < tau for x in d], "attr": [bool(check_attributes(a, m["caption"])) for a in arr],
                "colour": [c for c, _ in parts], "shape": [sh for _, sh in parts]}

    memo_train = np.stack([m["train"] for m in memo])

    def score_held(p, arr, ref=None):
        near = [float(np.sqrt(((memo_train - a[None]) ** 2).mean(axis=(1, 2, 3))).min()) for a in arr]
        parts = [phrase_scores(a, p) for a in arr]
        r = {"near_memo": near, "copy": [x < tau for x in near], "attr": [bool(check_attributes(a, p)) for a in arr],
             "colour": [c for c, _ in parts], "shape": [sh for _, sh in parts]}
        if ref is not None:
            r["dist_to_original"] = [rmse(a, b) for a, b in zip(arr, ref)]
        return r

    orig_memo, orig_held = {}, {}
    for m in memo:
        g = gen_original(m["caption"])
        orig_memo[m["caption"]] = g
        m["orig"] = score_memo(m, g.array) | {"sharpness": g.records[0].sharpness}
    for p in heldout:
        orig_held[p] = gen_original(p)
    log("originals done")

    def per_image(rows):
        """One record per (memorized caption, seed): does this seed's ``x_T`` copy, how sharp is it at step 1, and
        (SAIL rows) did SAIL reach its threshold and with what loss."""
        return [{"caption": m["caption"], "kind": m["kind"], "seed": args.seed_start + i, "dist": r["dist"][i],
                 "copy": r["copy"][i], "sharpness": r["sharpness"][i]}
                | ({"converged": r["converged"][i], "sail_loss": r["sail_loss"][i], "round": r["round"][i],
                    "trigger_overruled": r["overruled"][i]} if "converged" in r else {})
                for r, m in rows for i in range(len(r["dist"]))]

    def copy_auc(images):
        """Within exact memorized captions: AUC of a seed's step-1 sharpness for "this seed copies" (SAIL's premise
        is that the copying starts are the sharp ones)."""
        from sailscope.core.detect import roc_auc

        ex = [r for r in images if r["kind"] == "exact"]
        n_copy = sum(r["copy"] for r in ex)
        auc = roc_auc([r["sharpness"] for r in ex], [int(r["copy"]) for r in ex]) if 0 < n_copy < len(ex) else None
        return {"n_copy": n_copy, "n_other": len(ex) - n_copy, "auc": auc}

    def summarize_memo(rows, kind="exact"):
        rows = [r for r, m in rows if m["kind"] == kind]
        flat = lambda key: [v for r in rows for v in r[key]]
        out = {"copy_rate": float(np.mean(flat("copy"))), "mean_dist": float(np.mean(flat("dist"))),
               "attr_acc": float(np.mean(flat("attr"))), "n": len(flat("copy"))}
        if rows and "colour" in rows[0]:
            out |= {"colour_acc": float(np.mean(flat("colour"))), "shape_acc": float(np.mean(flat("shape")))}
            # what an artist keeps: a new image (not a copy) that shows what the prompt asks for
            out["new_and_attr"] = float(np.mean([a and not c for a, c in zip(flat("attr"), flat("copy"))]))
        return out

    def attr_by_structure(scores):
        """Held-out attribute accuracy per number of named objects; every memorized caption names two, so the
        two-object held-out prompts are the like-for-like reference for SAIL's attribute accuracy."""
        out = {}
        for k in sorted({phrases(p) for p in scores}):
            for key, name in (("attr", "attr_acc"), ("colour", "colour_acc"), ("shape", "shape_acc")):
                vals = [c for p, s in scores.items() if phrases(p) == k for c in s[key]]
                out[f"{name}_{k}_objects"] = float(np.mean(vals)) if vals else None
            out[f"n_prompts_{k}_objects"] = sum(phrases(p) == k for p in scores)
        return out

    held_orig_scores = {p: score_held(p, orig_held[p].array) for p in heldout}
    results["original"] = {
        "memorized_exact": summarize_memo([(m["orig"], m) for m in memo]),
        "memorized_template": summarize_memo([(m["orig"], m) for m in memo], "template"),
        "heldout": ({"copy_rate": float(np.mean([c for s in held_orig_scores.values() for c in s["copy"]])),
                    "attr_acc": float(np.mean([c for s in held_orig_scores.values() for c in s["attr"]])),
                    "colour_acc": float(np.mean([c for s in held_orig_scores.values() for c in s["colour"]])),
                    "shape_acc": float(np.mean([c for s in held_orig_scores.values() for c in s["shape"]])),
                    "n_prompts": len(heldout)} if heldout else {}) | attr_by_structure(held_orig_scores),
        "step1_sharpness_memorized": float(np.mean([v for m in memo for v in m["orig"]["sharpness"]])),
        "per_image": per_image([(m["orig"], m) for m in memo]),
    }
    results["original"]["sharpness_predicts_copy"] = copy_auc(results["original"]["per_image"])

    save()

    # 3. SAIL at default settings (threshold auto = calibration)
    def same_angle_random(z0, z1, seed):
        """A control for SAIL's direction: rotate each stock noise by SAIL's angle towards a random direction."""
        gen_ = torch.Generator().manual_seed(seed)
        out, angles = [], []
        for a, b in zip(z0.flatten(1).double(), z1.flatten(1).double()):
            theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
            u = torch.randn(a.shape, generator=gen_, dtype=torch.float64)
            u = u - (u @ a) / (a @ a) * a
            out.append(torch.cos(theta) * a + torch.sin(theta) * a.norm() * u / u.norm())
            angles.append(float(torch.rad2deg(theta)))
        return torch.stack(out).reshape(z0.shape).float(), angles

    sail_images: dict = {}
    sail_held_images: dict = {}

    def sail_rows(sail: SailSettings, prompts_memo, prompts_held, n=n_seeds, control=False):
        from sailscope.core.sampling import initial_noise

        rows, held, meta, ctrl = [], {}, [], []
        for m in prompts_memo:
            r = run_sail(pipe, gs_of(m["caption"], n), sail)
            g = gen(m["caption"], x_T=r.x_T, n=n)
            if control:
                sail_images[m["caption"]] = g.array
            rows.append((score_memo(m, g.array) | {"sharpness": g.records[0].sharpness, "converged": r.converged,
                                                    "sail_loss": r.loss, "round": r.chosen_round,
                                                    "overruled": r.trigger_overruled}, m))
            if control and "control" not in skip:
                z_rand, angles = same_angle_random(initial_noise(pipe, gs_of(m["caption"], n)), r.x_T, len(ctrl))
                gr_ = gen(m["caption"], x_T=z_rand, n=n)
                ctrl.append((score_memo(m, gr_.array) | {"sharpness": gr_.records[0].sharpness, "angle": angles}, m))
            meta.append({"converged": r.converged, "steps": r.steps, "seconds": r.seconds, "calls": r.unet_calls,
                         "xT_rms": (r.x_T.flatten(1).norm(dim=1) / r.x_T[0].numel() ** 0.5).tolist(),
                         "threshold": r.threshold, "source": r.threshold_source})
        for p in prompts_held:
            r = run_sail(pipe, gs_of(p), sail)
            g = gen(p, x_T=r.x_T)
            if control:
                sail_held_images[p] = g.array
            held[p] = score_held(p, g.array, orig_held[p].array) | {"steps": r.steps, "converged": r.converged,
                                                                     "overruled": r.trigger_overruled,
                                                                     "round": r.chosen_round}
        out = {"memorized_exact": summarize_memo(rows), "memorized_template": summarize_memo(rows, "template"),
               "converged_rate": float(np.mean([c for x in meta for c in x["converged"]])),
               "mean_steps": float(np.mean([c for x in meta for c in x["steps"]])),
               # RMS of SAIL's x_T entries (a fresh N(0, I) draw gives ~1.00): far above 1 the start leaves the
               # Gaussian shell the model was trained on
               "xT_rms_mean": float(np.mean([c for x in meta for c in x["xT_rms"]])),
               "xT_rms_max": float(np.max([c for x in meta for c in x["xT_rms"]])),
               "threshold": meta[0]["threshold"] if meta else None, "threshold_source": meta[0]["source"] if meta else None,
               "step1_sharpness_exact": [v for r, m in rows if m["kind"] == "exact" for v in r["sharpness"]],
               "per_image": per_image(rows)}
        out["step1_below_detection"] = float(np.mean([v < det_thr for v in out["step1_sharpness_exact"]])) if rows else None
        ex = [x for x in out["per_image"] if x["kind"] == "exact"]
        out["exact_copies_by_convergence"] = {  # is "not converged" a sign of a remaining copy?
            "converged_copies": sum(x["copy"] and x["converged"] for x in ex),
            "converged_new": sum(not x["copy"] and x["converged"] for x in ex),
            "not_converged_copies": sum(x["copy"] and not x["converged"] for x in ex),
            "not_converged_new": sum(not x["copy"] and not x["converged"] for x in ex)}
        angles = [a for r, m in ctrl if m["kind"] == "exact" for a in r["angle"]]
        if ctrl:  # same angle from the stock noise as SAIL's x_T, random direction on the same sphere
            out["random_same_angle"] = summarize_memo(ctrl) | {"mean_angle_deg": float(np.mean(angles))}
        if held:
            out["heldout"] = {
                "copy_rate": float(np.mean([c for s in held.values() for c in s["copy"]])),
                "attr_acc": float(np.mean([c for s in held.values() for c in s["attr"]])),
                "colour_acc": float(np.mean([c for s in held.values() for c in s["colour"]])),
                "shape_acc": float(np.mean([c for s in held.values() for c in s["shape"]])),
                "mean_dist_to_original": float(np.mean([c for s in held.values() for c in s["dist_to_original"]])),
                "converged_rate": float(np.mean([c for s in held.values() for c in s["converged"]])),
                "mean_steps": float(np.mean([c for s in held.values() for c in s["steps"]])),
                "trigger_overruled": float(np.mean([c for s in held.values() for c in s["overruled"]])),
                # kept as drawn: the seed's own start accepted at step 0 (its image is the original's)
                "unchanged": float(np.mean([st == 0 and c and rd == 0 for s in held.values()
                                            for st, c, rd in zip(s["steps"], s["converged"], s["round"])])),
            } | attr_by_structure(held)
        return out

    # the default stage: the model's shipped SAIL defaults (sail_defaults.json, what the app starts at), then options
    from sailscope.core.mitigation.defaults import model_sail_defaults

    model_defaults, model_defaults_source = model_sail_defaults(folder)
    results["model_sail_defaults"] = {"settings": model_defaults, "source": model_defaults_source}
    cand = {"candidates": args.candidates} if args.candidates is not None else {}
    default = SailSettings(**({"objective": args.objective} | model_defaults | cand | sail_overrides(args.sail)))
    args.candidates = default.candidates  # the sweep stage uses the same candidate count
    if "default" not in skip:
        results["sail_default"] = sail_rows(default, memo, heldout, control=True) | {"settings": default.to_dict()}
        log(f"SAIL default: {json.dumps(results['sail_default']['memorized_exact'])}")
        save()

    if args.grid and sail_images:
        two = [p for p in heldout if phrases(p) == 2 and p in sail_held_images][: args.grid_heldout]
        write_grid(Path(args.grid), [m for m in memo if m["kind"] == "exact"], orig_memo, sail_images, tau,
                   [(p, orig_held[p].array, sail_held_images[p]) for p in two])
        log(f"grid written to {args.grid}")

    # 4. Sweeps on memorized prompts
    alpha, alpha_source = cal.resolve_alpha(pipe, default)  # the alpha the runs will use (calibrated, if so)
    results["sweep_alpha"] = {"alpha": alpha, "source": alpha_source}
    if "sweep" not in skip:
        results["sail_sweep"] = []
        fixed = [(None, float(x)) for x in args.thresholds.split(",") if x.strip()]
        points = fixed or [(q, record.sail_threshold(args.objective, alpha, delta=default.delta, quantile=q))
                           for q in (float(x) for x in args.quantiles.split(","))]
        for q, thr in points:
            s = SailSettings(objective=args.objective, threshold=thr, candidates=args.candidates)
            results["sail_sweep"].append({"quantile": q, "threshold": thr} | sail_rows(s, memo, [], sweep_seeds))
            log(f"SAIL threshold {thr:.4g} (q{q}): {json.dumps(results['sail_sweep'][-1]['memorized_exact'])}")
            save()
    if "rta" not in skip:
        results["rta"] = []
        for k in (int(x) for x in args.rta.split(",")):
            rows = []
            for m in memo:
                from sailscope.core.mitigation.rta import iter_rta

                (rr,) = list(iter_rta(pipe, gs_of(m["caption"], sweep_seeds), RtaSettings(tokens=k)))
                g = gen(rr.prompt, n=sweep_seeds)
                # attributes are judged against the user's prompt, not the edited one
                rows.append((score_memo(m, g.array), m))
            results["rta"].append({"tokens": k, "memorized_exact": summarize_memo(rows),
                                   "memorized_template": summarize_memo(rows, "template")})
            log(f"RTA {k}: {json.dumps(results['rta'][-1]['memorized_exact'])}")
            save()

    # 5. Timing (single image, seed 0, memorized exact prompts): plain 50 steps vs SAIL's mitigated half;
    #    time to the first accepted latent, ours (default) vs the authors' loop configuration
    if "timing" not in skip:
        # the authors' loop: reference objective, 8 candidates, <= 10 free Adam steps at lr 0.05 per round (2 rounds,
        # as ours: a failed round re-draws 8 fresh candidates), one threshold
        # (this model's calibrated q0.9 of the reference objective, the level they calibrate to)
        ref_alpha, _ = cal.resolve_alpha(pipe, SailSettings(objective="reference"))
        authors = SailSettings(objective="reference", candidates=8, max_steps=10, stop="first", lr=0.05,
                               sphere=False, trigger=None,
                               threshold=record.sail_threshold("reference", ref_alpha, quantile=cal.TRIGGER_QUANTILE))
        tm = []
        tseed = args.seed_start if args.timing_seed is None else args.timing_seed
        for m in [m for m in memo if m["kind"] == "exact"][: args.timing]:
            g = run_generation(pipe, gs_of(m["caption"], 1, tseed))
            r = run_sail(pipe, gs_of(m["caption"], 1, tseed), default)
            g2 = run_generation(pipe, gs_of(m["caption"], 1, tseed), x_T=r.x_T)
            ra = run_sail(pipe, gs_of(m["caption"], 1, tseed), authors)

            def first_accept(res):
                return next((st.elapsed for st in res.trace if st.accepted), None)

            tm.append({"plain": g.seconds, "sail_half": r.seconds + g2.seconds, "ratio": (r.seconds + g2.seconds) / g.seconds,
                       "ours_first_accept": first_accept(r), "authors_first_accept": first_accept(ra),
                       "ours_steps": r.steps[0], "authors_steps": ra.steps[0], "ours_converged": r.converged[0],
                       "authors_converged": ra.converged[0], "ours_round": r.chosen_round[0] + 1,
                       "ours_trigger_overruled": r.trigger_overruled[0], "ours_unet_calls": r.unet_calls})
        med = lambda k: statistics.median([t[k] for t in tm if t[k] is not None]) if any(t[k] is not None for t in tm) else None
        results["timing"] = {"seed": tseed, "rows": tm, "median_plain_s": med("plain"), "median_sail_half_s": med("sail_half"),
                             "median_ratio": med("ratio"), "median_ours_first_accept_s": med("ours_first_accept"),
                             "median_authors_first_accept_s": med("authors_first_accept"),
                             "threads": torch.get_num_threads()}
        log(f"timing: {json.dumps({k: v for k, v in results['timing'].items() if k != 'rows'})}")

    save()
    print(json.dumps({k: v for k, v in results.items() if k not in ("sail_sweep", "rta")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
