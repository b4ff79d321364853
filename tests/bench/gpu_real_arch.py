"""GPU benchmark: real architectures at full resolution in fp16 (random weights; the GPU machine needs no hub).

    python tests/bench/gpu_real_arch.py [--json OUT] [--steps 20] [--archs sd15,sd21v,sdxl] [--dry-run]

Runs ``tests/bench/real_arch.py`` on ``cuda`` for SD 1.5 at 512², SD 2.1-v at 768² and SDXL at 1024², fp16, every
phase (stock sampling, tracked sampling, exact sharpness, one SAIL step with and without gradient checkpointing,
top-10 Arnoldi), and prints one JSON line per phase with time, peak GPU memory, extra peak over the loaded model
and time relative to stock sampling. ``--dry-run`` runs the same phases on tiny CPU versions (checks the script).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_arch  # noqa: E402

FULL = {"sd15": 512, "sd21v": 768, "sdxl": 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--archs", default="sd15,sd21v,sdxl")
    p.add_argument("--phases", default=",".join(real_arch.PHASES[1:]))
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    status = 0
    for arch in args.archs.split(","):
        common = ["--arch", arch, "--steps", str(args.steps), "--phases", args.phases]
        if args.json:
            common += ["--json", args.json]
        if args.dry_run:
            status |= real_arch.main(common + ["--dry-run", "--device", "cpu", "--dtype", "fp32", "--threads", "1"])
        else:
            status |= real_arch.main(common + ["--device", "cuda", "--dtype", "fp16", "--size", str(FULL[arch]),
                                               "--threads", "4"])
    return status


if __name__ == "__main__":
    raise SystemExit(main())
