"""Benchmark: the app's verdict over many seeds on the demo model, with and without the noise check (CPU, ~2 min).

    OMP_NUM_THREADS=1 python tests/bench/demo_noise_check.py [--model assets/models/demo] [--seeds 16]
                                                             [--heldout 24] [--json OUT]

For seeds 0..N-1 (50 DDIM steps, guidance 7.5: the calibrated settings) it scores every memorized exact caption and
``--heldout`` held-out captions (spread over ``heldout_prompts.txt``) at step 1, as a Generate run records it, and
applies the app's two rules: ``core.detect.risk_level`` alone, and ``core.detect.verdict`` with the noise check
(the calibration's first 4 prompts scored at the same seed, ``core.detect.noise_check``). Prints, per seed and in
all, the held-out captions called "likely a copy" (false alarms), the memorized ones called so (detections), and
those left without a verdict because the noise is sharp for ordinary prompts too; then the check's cost: one
noise check against one 50-step generation at seed 0 (median of 5 each, same process).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--heldout", type=int, default=24)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from sailscope.core import calibration
    from sailscope.core.detect import noise_check, risk_level, verdict
    from sailscope.core.io.prompts import read_heldout, read_memorized
    from sailscope.core.models import load_pipeline
    from sailscope.core.sampling import GenerationSettings, run_generation

    pipe = load_pipeline(args.model, device="cpu", dtype="fp32")
    folder = pipe.sailscope_info.path
    found = calibration.detection_calibration(pipe)
    threshold, refs = found.threshold, list(found.reference_prompts)
    memorized = [r["caption"] for r in read_memorized(folder) if r["kind"] == "exact"]
    heldout_all = read_heldout(folder)
    step = max(1, len(heldout_all) // args.heldout)
    heldout = heldout_all[::step][: args.heldout]
    groups = {"memorized": memorized, "heldout": heldout}
    start = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        settings = GenerationSettings(prompt="", seed=seed, steps=50, guidance=7.5, scheduler="ddim")
        check = noise_check(pipe, settings, refs, threshold)
        row = {"seed": seed, "reference_median": check.median, "sharp_noise": check.sharp_noise}
        for name, prompts in groups.items():
            values = noise_check(pipe, settings, prompts, threshold).sharpness
            row[name] = {"high_raw": sum(risk_level(v, threshold) == "high" for v in values),
                         "high_checked": sum(verdict(v, threshold, noise=check) == "high" for v in values),
                         "no_verdict": sum(verdict(v, threshold, noise=check) == "sharp-noise" for v in values),
                         "n": len(values)}
        rows.append(row)
        print(f"seed {seed:2d}: ordinary prompts' median {check.median:.4g} ({check.median / threshold:.2g}× the alarm "
              f"level){' SHARP' if check.sharp_noise else ''}; held-out 'likely a copy' {row['heldout']['high_raw']} -> "
              f"{row['heldout']['high_checked']} of {len(heldout)}; memorized {row['memorized']['high_raw']} -> "
              f"{row['memorized']['high_checked']} of {len(memorized)}", flush=True)
    total = {name: {k: sum(r[name][k] for r in rows) for k in ("high_raw", "high_checked", "no_verdict", "n")}
             for name in groups}
    summary = {"model": pipe.sailscope_info.name, "threshold": threshold, "reference_prompts": refs,
               "seeds": args.seeds, "sharp_seeds": [r["seed"] for r in rows if r["sharp_noise"]], "total": total,
               "seconds": time.perf_counter() - start, "rows": rows}
    for name, t in total.items():
        print(f"{name}: 'likely a copy' without the check {t['high_raw']}/{t['n']} ({t['high_raw'] / t['n']:.3f}), "
              f"with it {t['high_checked']}/{t['n']} ({t['high_checked'] / t['n']:.3f}); no verdict (sharp noise) "
              f"{t['no_verdict']}")
    print(f"sharp seeds: {summary['sharp_seeds']}; {summary['seconds']:.0f} s")
    timing = {"noise_check": [], "generation_50_steps": []}
    for _ in range(5):
        settings = GenerationSettings(prompt=memorized[0], seed=0, steps=50, guidance=7.5, scheduler="ddim")
        t0 = time.perf_counter()
        noise_check(pipe, settings, refs, threshold)
        t1 = time.perf_counter()
        run_generation(pipe, settings)
        timing["noise_check"].append(t1 - t0)
        timing["generation_50_steps"].append(time.perf_counter() - t1)
    med = {k: float(np.median(v)) for k, v in timing.items()}
    summary["timing_median_seconds"] = med
    print(f"noise check {med['noise_check']:.3f} s, 50-step generation {med['generation_50_steps']:.3f} s: "
          f"{med['noise_check'] / med['generation_50_steps']:.3f} of a run ({len(refs)} prompts, one step each)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
