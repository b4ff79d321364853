"""SAIL (and the RTA baseline) on real Stable Diffusion 1.x weights with memorized prompts. Not run in CI.

For users with a GPU and the weights on disk::

    python tests/bench/sd_mitigation.py --model CompVis/stable-diffusion-v1-4 \\
        --sscd ~/weights/sscd_disc_mixup.torchscript.pt --clip ~/weights/clip-vit-large-patch14 \\
        [--train-images DIR] [--limit 50] [--seeds 0-3] [--objective reference] [--out runs/sd_mitigation]

Prompts: the vendored memorized list ``tests/bench/data/sd1_mem.jsonl`` (source in ``data/SOURCE.md``).
Per prompt and seed it generates the original image (seed's ``x_T``), the SAIL image and the RTA image
(same seed), and records:

- ``sscd_train``: SSCD cosine similarity to the training image (only with ``--train-images DIR`` holding
  ``<LAION index>.jpg|png``; the images are not vendored), the paper's copy measure (> 0.5 is a copy);
- ``sscd_orig``: SSCD similarity of the mitigated image to the original one (how much the image changed);
- ``clip``: CLIP score ``100 · cos(image, prompt)`` (prompt fidelity);
- SAIL's steps, convergence, threshold source and the time of the mitigated half vs a plain generation.

Missing weights are reported in one line each: the model is required (exit 2); SSCD and CLIP metrics are
skipped with a message unless ``--require-metrics``. ``--smoke`` runs everything on the tiny random pipeline.
Output: ``<out>/results.jsonl`` and ``<out>/summary.json``; images under ``<out>/images/`` with ``--save-images``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SSCD_MEAN, SSCD_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Missing(Exception):
    """A required file is not there; the message says which and how to get it."""


# ----------------------------------------------------------------------------------------------
# Metrics (loaded only when the user has the weights)
# ----------------------------------------------------------------------------------------------
class SSCD:
    """SSCD copy-detection descriptor (Pizzi et al. 2022), TorchScript release, e.g. sscd_disc_mixup."""

    def __init__(self, path: str, device):
        import torch

        p = Path(path).expanduser()
        if not p.is_file():
            raise Missing(f"SSCD weights not found at {p}: download sscd_disc_mixup.torchscript.pt from "
                          "github.com/facebookresearch/sscd-copy-detection and pass --sscd PATH")
        self.model = torch.jit.load(str(p), map_location=device).eval()
        self.device = device

    def embed(self, images):
        import numpy as np
        import torch

        batch = []
        for im in images:
            im = im.convert("RGB").resize((320, 320))
            a = (np.asarray(im, np.float32) / 255.0 - SSCD_MEAN) / SSCD_STD
            batch.append(torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32)))
        with torch.no_grad():
            e = self.model(torch.stack(batch).to(self.device))
        return torch.nn.functional.normalize(e.float(), dim=1)


class ClipScore:
    """CLIP score ``100 · max(cos(image, text), 0)`` with a local transformers CLIP folder."""

    def __init__(self, path: str, device):
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise Missing(f"CLIP weights not found at {p}: pass --clip with a local transformers CLIP folder "
                          "(e.g. openai/clip-vit-large-patch14 saved with save_pretrained)")
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(str(p), local_files_only=True).to(device).eval()
        self.proc = CLIPProcessor.from_pretrained(str(p), local_files_only=True)
        self.device = device

    def __call__(self, images, prompt: str) -> list[float]:
        import torch

        inp = self.proc(text=[prompt], images=images, return_tensors="pt", padding=True, truncation=True).to(self.device)
        with torch.no_grad():
            out = self.model(**inp)
        i = torch.nn.functional.normalize(out.image_embeds.float(), dim=1)
        t = torch.nn.functional.normalize(out.text_embeds.float(), dim=1)
        return (100 * (i @ t.T).squeeze(1).clamp_min(0)).tolist()


def load_train_image(folder: str | None, index):
    if folder is None:
        return None
    from PIL import Image

    for ext in (".jpg", ".jpeg", ".png", ".webp"):
        p = Path(folder).expanduser() / f"{index}{ext}"
        if p.is_file():
            return Image.open(p).convert("RGB")
    return None


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="CompVis/stable-diffusion-v1-4", help="hub id in the local cache, folder or file")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA), fp32, fp16, bf16")
    p.add_argument("--sscd", default=None, help="SSCD TorchScript file")
    p.add_argument("--clip", default=None, help="local transformers CLIP folder")
    p.add_argument("--train-images", default=None, help="folder with training images named <LAION index>.jpg/png")
    p.add_argument("--require-metrics", action="store_true", help="fail when SSCD or CLIP weights are missing")
    p.add_argument("--prompts", default=str(DATA / "sd1_mem.jsonl"), help="memorized prompts (.jsonl with caption)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--seeds", default="0-3")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--objective", default="reference", choices=["paper", "reference"])
    p.add_argument("--threshold", default="auto", help="SAIL threshold or 'auto' (calibration / paper default)")
    p.add_argument("--candidates", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="Adam step cap (default: per --sail-defaults)")
    p.add_argument("--sail-defaults", default="authors", choices=["authors", "app"],
                   help="authors: the paper's SD loop (lr 0.05, <= 10 free steps, one threshold); app: SAIL Scope's "
                        "defaults (trigger + threshold, lr 0.3, <= 6 steps on the sphere; tuned on the demo model)")
    p.add_argument("--rta-tokens", type=int, default=4, help="RTA baseline tokens (0: skip RTA)")
    p.add_argument("--out", default="runs/sd_mitigation")
    p.add_argument("--save-images", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny random pipeline, 2 prompts, 3 steps (checks the harness)")
    return p.parse_args(argv)


def load(args):
    if args.smoke:
        from sailscope.core.testing import tiny_pipeline

        return tiny_pipeline()
    from sailscope.core.errors import ModelLoadError
    from sailscope.core.models import load_pipeline

    try:
        return load_pipeline(args.model, dtype=args.dtype)
    except ModelLoadError as exc:
        raise Missing(f"Stable Diffusion weights not available: {exc}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    from sailscope.cli.calibrate import parse_seeds, read_prompts
    from sailscope.core.sampling import GenerationSettings, run_generation
    from sailscope.core.mitigation.rta import RtaSettings
    from sailscope.core.mitigation import SailSettings, run_pair

    # 1. Inputs and weights (clear messages, no tracebacks)
    seeds = parse_seeds(args.seeds)
    rows = [json.loads(l) for l in Path(args.prompts).read_text().splitlines() if l.strip()]
    if args.smoke:
        rows, args.steps, args.limit = rows[:2], 3, 2
    rows = rows[: args.limit]
    try:
        pipe = load(args)
    except Missing as exc:
        print(f"sd_mitigation: {exc}", file=sys.stderr)
        return 2
    device = pipe._execution_device
    metrics = {}
    for name, cls, path in (("sscd", SSCD, args.sscd), ("clip", ClipScore, args.clip)):
        try:
            if path is None:
                raise Missing(f"--{name} not given")
            metrics[name] = cls(path, device)
        except Missing as exc:
            if args.require_metrics:
                print(f"sd_mitigation: {exc}", file=sys.stderr)
                return 2
            print(f"sd_mitigation: {name} metric skipped: {exc}", file=sys.stderr)
    threshold = args.threshold if args.threshold == "auto" else float(args.threshold)
    base = (dict(lr=0.05, sphere=False, trigger=None, max_steps=10, rounds=1) if args.sail_defaults == "authors"
            else dict(max_steps=SailSettings().max_steps))
    if args.max_steps is not None:
        base["max_steps"] = args.max_steps
    sail = SailSettings(objective=args.objective, threshold=threshold, candidates=args.candidates, **base)
    if args.smoke:  # one step that always runs (threshold below any loss), same other settings
        sail = SailSettings(objective=args.objective, threshold=-1.0, candidates=args.candidates, **(base | {"max_steps": 1}))
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)

    # 2. Generate: plain (timing), SAIL pair, RTA
    results, times_plain, times_sail = [], [], []
    with open(out / "results.jsonl", "w") as f:
        for pi, row in enumerate(rows):
            prompt = row["caption"]
            train = load_train_image(args.train_images, row.get("index"))
            for seed in seeds:
                gs = GenerationSettings(prompt=prompt, seed=seed, steps=args.steps, guidance=args.guidance,
                                        sharpness_at="first")
                t0 = time.perf_counter()
                run_generation(pipe, gs)
                times_plain.append(time.perf_counter() - t0)
                pair = run_pair(pipe, gs, sail)
                times_sail.append(pair.mitigated_seconds)
                images = {"original": pair.original.images[0], "sail": pair.mitigated.images[0]}
                if args.rta_tokens > 0:
                    rta = run_pair(pipe, gs, RtaSettings(tokens=args.rta_tokens), run_original=False)
                    images["rta"] = rta.mitigated.images[0]
                rec = {"prompt": prompt, "index": row.get("index"), "seed": seed,
                       "sail": {k: pair.mitigation.report()[k] for k in
                                ("converged", "steps", "loss", "initial_loss", "threshold", "threshold_source",
                                 "unet_calls", "seconds")},
                       "sharpness_step1": {"original": pair.original.records[0].sharpness[0],
                                           "sail": pair.mitigated.records[0].sharpness[0]},
                       "seconds": {"plain": times_plain[-1], "sail_half": times_sail[-1]}, "methods": {}}
                if "sscd" in metrics:
                    names = list(images)
                    emb = metrics["sscd"].embed([images[n] for n in names])
                    e_train = metrics["sscd"].embed([train])[0] if train is not None else None
                    for j, n in enumerate(names):
                        m = rec["methods"].setdefault(n, {})
                        m["sscd_orig"] = float(emb[j] @ emb[0])
                        if e_train is not None:
                            m["sscd_train"] = float(emb[j] @ e_train)
                if "clip" in metrics:
                    scores = metrics["clip"]([images[n] for n in images], prompt)
                    for n, s in zip(images, scores):
                        rec["methods"].setdefault(n, {})["clip"] = s
                if args.save_images:
                    for n, im in images.items():
                        im.save(out / "images" / f"{pi:03d}_s{seed}_{n}.png")
                results.append(rec)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print(f"[{pi + 1}/{len(rows)}] seed {seed}: SAIL converged={rec['sail']['converged'][0]} "
                      f"steps={rec['sail']['steps'][0]}", file=sys.stderr)

    # 3. Summary
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return statistics.fmean(xs) if xs else None

    summary = {"model": args.model if not args.smoke else "tiny (smoke)", "prompts": len(rows), "seeds": seeds,
               "sail": sail.to_dict(), "converged_rate": mean([float(r["sail"]["converged"][0]) for r in results]),
               "mean_sail_steps": mean([r["sail"]["steps"][0] for r in results]),
               "time_plain_s": mean(times_plain), "time_sail_half_s": mean(times_sail),
               "sail_half_over_plain": (mean(times_sail) / mean(times_plain)) if times_plain else None,
               "sharpness_step1": {k: mean([r["sharpness_step1"][k] for r in results]) for k in ("original", "sail")},
               "methods": {}}
    for n in ("original", "sail", "rta"):
        vals = [r["methods"].get(n, {}) for r in results]
        summary["methods"][n] = {k: mean([v.get(k) for v in vals]) for k in ("sscd_train", "sscd_orig", "clip")}
        if any("sscd_train" in v for v in vals):
            summary["methods"][n]["copy_rate@0.5"] = mean([float(v["sscd_train"] > 0.5) for v in vals if "sscd_train" in v])
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
