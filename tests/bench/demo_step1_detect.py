"""Step-1 detection on the demo model: sharpness (FD HVP) and Wen at step 1, n=4 seeds, 14 memorized vs 40 held-out.

    python tests/bench/demo_step1_detect.py [model_dir]   # writes runs/demo/eval_step1.json
"""
import json, time, numpy as np, torch
torch.set_num_threads(1)
from sailscope.core.demo.evaluate import load_pipeline, load_memorized
from sailscope.core.generate import GenerationSettings, generate, GenerationResult
from sailscope.core.detect import roc_auc, tpr_at_fpr
import sys
d = sys.argv[1] if len(sys.argv) > 1 else "assets/models/demo"
pipe = load_pipeline(d); memo = load_memorized(d)
held = open(d + "/heldout_prompts.txt").read().split("\n")[:40]
rows = []
for lab, p in [(1, m["caption"]) for m in memo] + [(0, p) for p in held]:
    t = time.time(); r = None
    for it in generate(pipe, GenerationSettings(prompt=p, seed=0, num_images=4, steps=50, sharpness_at=(1,), hvp="fd"), stop_after=1):
        if isinstance(it, GenerationResult): r = it
    rows.append({"caption": p, "label": lab, "sharp1": float(np.mean(r.records[0].sharpness)), "wen1": float(np.mean(r.records[0].wen))})
    print(lab, round(rows[-1]["sharp1"], 4), round(rows[-1]["wen1"], 3), round(time.time() - t, 1), p, flush=True)
out = {"rows": rows}
for k in ("sharp1", "wen1"):
    s = [r[k] for r in rows]; y = [r["label"] for r in rows]
    out[k] = {"auc": roc_auc(s, y), "tpr_at_1fpr": tpr_at_fpr(s, y, 0.01)}
print(json.dumps({k: out[k] for k in ("sharp1", "wen1")}))
json.dump(out, open("runs/demo/eval_step1.json", "w"), indent=1)
