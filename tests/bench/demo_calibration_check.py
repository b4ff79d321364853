"""Before a full evaluation: would a demo export's calibration work? (seconds; CPU)

    python tests/bench/demo_calibration_check.py runs/demo_v3b_export

Measures what ``sailscope calibrate --model demo`` would with this export in place (48 fresh captions of its
design x seeds 0-3): the q0.99 detection threshold and the per-seed medians and maxima of step-1 sharpness (fd), then
each memorized caption's per-seed score. A model is usable by the app when its memorized captions score above the
threshold at the seeds users start from; one initial noise that is sharp for every caption breaks that.
"""
import json, sys, numpy as np
from sailscope.core import calibration as cal
from sailscope.core.models import load_pipeline
from sailscope.core.detect import score_prompt
folder = sys.argv[1]
pipe = load_pipeline(folder, device="cpu", dtype="fp32")
prompts = cal.demo_calibration_prompts(48, folder)
rec = cal.measure(pipe, prompts, [0, 1, 2, 3])
v = np.array(rec.values["detection"]["sharpness"]).reshape(48, 4)
thr = float(np.quantile(v, cal.DETECTION_QUANTILE))
print("q0.99 threshold", round(thr, 4), "per-seed median", np.round(np.median(v, 0), 4), "max", np.round(v.max(0), 4))
rows = [json.loads(l) for l in open(folder + "/memorized.jsonl")]
for r in rows:
    s = score_prompt(pipe, r["caption"], seeds=4, hvp="fd")
    print(r["kind"][:5], np.round(s.per_seed, 3) if hasattr(s, "per_seed") else "", round(s.score, 3))
