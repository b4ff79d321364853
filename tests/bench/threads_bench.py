"""Plain 50-step demo generation time vs torch/OpenMP thread settings, idle and with competing CPU-bound jobs.

    python tests/bench/threads_bench.py [--threads 1,2,0] [--competitors 0,1] [--repeats 2] [--json out.json]

Each (competitors, threads) cell runs in a fresh interpreter (OpenMP reads its settings once), loads the demo
model, warms up with one 5-step generation, then times ``--repeats`` plain 50-step DDIM generations (sharpness at
step 1, fd HVPs: what ``sailscope generate --model demo`` does). ``threads=0`` = torch's own default (no
``SAILSCOPE_THREADS``, no ``OMP_NUM_THREADS``). Competitors are ``python -c "while True: pass"`` processes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
from sailscope.core.threads import configure_threads
configure_threads()
import torch
from sailscope.core.models import load_pipeline
from sailscope.core.sampling import GenerationSettings, generate, GenerationResult
pipe = load_pipeline("demo", device="cpu")
def once(steps):
    t = time.perf_counter()
    for item in generate(pipe, GenerationSettings(prompt="a photo of a red circle", seed=0, steps=steps)):
        pass
    return time.perf_counter() - t
once(5)
times = [once(50) for _ in range(int(sys.argv[1]))]
print(json.dumps({"torch_threads": torch.get_num_threads(), "times": times}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2,0", help="comma-separated; 0 = torch's default")
    ap.add_argument("--competitors", default="0,1", help="comma-separated numbers of busy-loop processes")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="per cell (a collapsed cell is reported as >timeout)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for n_comp in (int(v) for v in args.competitors.split(",")):
        comps = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n_comp)]
        try:
            time.sleep(1.0 if n_comp else 0.0)
            for n in (int(v) for v in args.threads.split(",")):
                env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SAILSCOPE_THREADS", "MKL_NUM_THREADS")}
                env["SAILSCOPE_THREADS"] = str(n)
                t0 = time.perf_counter()
                try:
                    out = subprocess.run([sys.executable, "-c", CHILD, str(args.repeats)], env=env, capture_output=True,
                                         text=True, timeout=args.timeout)
                    res = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-500:]}
                except subprocess.TimeoutExpired:
                    res = {"error": f"timeout after {args.timeout} s"}
                res.update(competitors=n_comp, threads=n or "torch default", wall=time.perf_counter() - t0,
                           load=os.getloadavg()[0])
                rows.append(res)
                print(json.dumps(res), flush=True)
        finally:
            for c in comps:
                c.kill()
                c.wait()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join([sys.executable] + sys.argv), "cpus": os.cpu_count(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
