"""Step-1 detection on a demo model export: sharpness and Wen at step 1, n=4 seeds, memorized vs 40 held-out.

The cheap early check during training (about 3 s per prompt): no 50-step generation, no copy distances.

    python tests/bench/demo_step1_detect.py runs/demo_v2_export --hvp exact --out runs/demo_v2/eval_step1.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sailscope.core.demo.evaluate import load_memorized, load_pipeline
from sailscope.core.detect import roc_auc, tpr_at_fpr
from sailscope.core.sampling import GenerationResult, GenerationSettings, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", default="assets/models/demo")
    ap.add_argument("--hvp", choices=("exact", "fd"), default="exact")
    ap.add_argument("--heldout", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = Path(args.model_dir)
    pipe, memo = load_pipeline(d), load_memorized(d)
    held = [p for p in (d / "heldout_prompts.txt").read_text().splitlines() if p.strip()][:args.heldout]
    rows = []
    for lab, kind, p in [(1, m["kind"], m["caption"]) for m in memo] + [(0, "heldout", p) for p in held]:
        t = time.time()
        r = None
        settings = GenerationSettings(prompt=p, seed=0, num_images=4, steps=50, sharpness_at=(1,), hvp=args.hvp)
        for it in generate(pipe, settings, stop_after=1):
            if isinstance(it, GenerationResult):
                r = it
        rows.append({"caption": p, "kind": kind, "label": lab, "sharp1": float(np.mean(r.records[0].sharpness)),
                     "wen1": float(np.mean(r.records[0].wen))})
        print(lab, round(rows[-1]["sharp1"], 4), round(rows[-1]["wen1"], 3), round(time.time() - t, 1), p, flush=True)
    out = {"model_dir": str(d), "hvp": args.hvp, "rows": rows}
    for k in ("sharp1", "wen1"):
        s, y = [r[k] for r in rows], [r["label"] for r in rows]
        out[k] = {"auc": roc_auc(s, y), "tpr_at_1fpr": tpr_at_fpr(s, y, 0.01)}
    print(json.dumps({k: out[k] for k in ("sharp1", "wen1")}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
