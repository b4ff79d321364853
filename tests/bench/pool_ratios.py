"""Pool the per-pair app/core ratios of several ``app_bench.py`` outputs (same code, same command).

    python tests/bench/pool_ratios.py RUN.json [RUN.json ...]

Prints JSON: per run its median ratio, and over all pairs the median, a 95 % bootstrap interval of that median
(5000 resamples, fixed seed) and the share of pairs at or under 1.1. One run's 20 pairs spread over about
±0.2 on a shared 2-core machine; pooling says how well the median itself is known.
"""
from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path


def load(path: str) -> dict:
    text = Path(path).read_text()
    return json.JSONDecoder().raw_decode(text[text.index("{"):])[0]  # the bench's JSON (a server line may follow)


def main(paths: list[str]) -> int:
    runs = {p: load(p) for p in paths}
    ratios = [r for d in runs.values() for r in d["ratios"]]
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(5000))
    print(json.dumps({
        "runs": {Path(p).name: round(d["ratio_app_over_core"], 3) for p, d in runs.items()},
        "pairs": len(ratios), "median": round(statistics.median(ratios), 3),
        "median_95ci": [round(medians[124], 3), round(medians[-125], 3)],
        "share_at_or_under_1_1": round(sum(r <= 1.1 for r in ratios) / len(ratios), 2),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
