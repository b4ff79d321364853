"""Before a full evaluation: would a demo export's calibration work? (seconds; CPU)

    python tests/bench/demo_calibration_check.py runs/demo_v3b_export [--seeds N]

Measures what ``sailscope calibrate --model demo`` would with this export in place (48 fresh captions of its
design x seeds 0-3, or 0..N-1): the q0.99 detection threshold and the per-seed medians and maxima of step-1 sharpness (fd), then
each memorized caption's per-seed score. A model is usable by the app when its memorized captions score above the
threshold at the seeds users start from; one initial noise that is sharp for every caption breaks that.
"""
from __future__ import annotations

import argparse

import numpy as np


def main(folder: str, n_seeds: int = 4) -> int:
    from sailscope.core import calibration as cal
    from sailscope.core.detect import score_prompt
    from sailscope.core.io.prompts import read_memorized
    from sailscope.core.models import load_pipeline

    pipe = load_pipeline(folder, device="cpu", dtype="fp32")
    seeds = list(range(n_seeds))
    record = cal.measure(pipe, cal.demo_calibration_prompts(48, folder), seeds)
    values = np.array(record.values["detection"]["sharpness"]).reshape(-1, len(seeds))  # prompt-major
    threshold = float(np.quantile(values, cal.DETECTION_QUANTILE))
    print(f"q{cal.DETECTION_QUANTILE:g} threshold {threshold:.4g}; fresh captions per seed: median "
          f"{np.round(np.median(values, 0), 4).tolist()}, max {np.round(values.max(0), 4).tolist()}")
    for row in read_memorized(folder):
        score = score_prompt(pipe, row["caption"], seeds=seeds, hvp="fd")
        print(row["kind"], np.round(score.per_seed, 3).tolist(), round(score.score, 3), row["caption"])
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an exported demo folder")
    parser.add_argument("--seeds", type=int, default=4, help="calibrate and score at seeds 0..N-1 (default 4, as calibrate)")
    args = parser.parse_args()
    raise SystemExit(main(args.folder, args.seeds))
