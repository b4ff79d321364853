"""Benchmark: tracked generation vs stock diffusers generation, same pipeline, same run.

    python tests/bench/bench_generate.py [--model demo] [--steps 50] [--repeats 15] [--write]

Reports medians over interleaved repeats (this machine is noisy) and ratios to the stock baseline:
(a) Wen every step + finite-difference sharpness at step 1 (goal <= 1.05x),
(b) Wen + exact (JVP) sharpness every step,
and the per-evaluation cost ratio exact JVP : finite difference at step 1.
``--write`` replaces this benchmark's section of docs/performance.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from sailscope.core.sampling import GenerationSettings, make_scheduler, run_generation
from sailscope.core.metrics import sharpness
from sailscope.core.models import load_pipeline
from sailscope.core.score import DiffusersScoreModel

ROOT = Path(__file__).resolve().parents[2]
MARK = "bench_generate"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--prompt", default="a red circle above a blue square")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)

    if args.model == "tiny":
        from sailscope.core.testing import tiny_pipeline

        pipe = tiny_pipeline()
    else:
        pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(pipe, "ddim")
    base = dict(prompt=args.prompt, seed=0, steps=args.steps, guidance=7.5)

    def stock():
        pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=7.5,
             generator=torch.Generator("cpu").manual_seed(0), output_type="np")

    runs = {
        "stock": stock,
        "a": lambda: run_generation(pipe, GenerationSettings(**base, sharpness_at="first", hvp="fd")),
        "b": lambda: run_generation(pipe, GenerationSettings(**base, sharpness_at="all", hvp="exact")),
    }
    for fn in runs.values():  # warm-up
        fn()
    # stock and (a) alternate in adjacent pairs (ratio per pair, then the median): this CPU's speed drifts by
    # tens of percent over seconds, so only times taken next to each other compare; (b) is 8x longer and runs
    # after them so it cannot heat or load the pairs
    times = {k: [] for k in runs}
    pair_ratios = []
    for i in range(args.repeats):
        order = ("stock", "a") if i % 2 == 0 else ("a", "stock")
        got = {k: timed(runs[k]) for k in order}
        for k, v in got.items():
            times[k].append(v)
        pair_ratios.append(got["a"] / got["stock"])
    for _ in range(max(1, args.repeats // 3)):
        times["b"].append(timed(runs["b"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio_a = statistics.median(pair_ratios)

    # per-evaluation cost: exact JVP vs finite difference at step 1 (score_delta known)
    sm = DiffusersScoreModel.from_pipeline(pipe)
    cond, uncond = pipe.encode_prompt(args.prompt, pipe.device, 1, True)
    x = torch.randn(1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size,
                    generator=torch.Generator().manual_seed(0))
    gs = sm.guided(int(pipe.scheduler.config.num_train_timesteps) - 1, cond, uncond)
    with torch.no_grad():
        sd = gs.score_delta(x)
    t_exact, t_fd = [], []
    for _ in range(max(5, args.repeats)):
        t_exact.append(timed(lambda: sharpness(gs, x, method="exact", score_delta=sd)))
        t_fd.append(timed(lambda: sharpness(gs, x, method="fd", score_delta=sd)))
    jvp_fd = statistics.median(t_exact) / statistics.median(t_fd)

    cmd = f"python tests/bench/bench_generate.py --model {args.model} --steps {args.steps} --repeats {args.repeats}"
    lines = [
        f"<!-- {MARK}:start -->",
        "### Tracked generation vs stock diffusers",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads visible, torch {torch.__version__}, "
        f"device {pipe.device}; model `{args.model}`; {args.steps} DDIM steps, guidance 7.5; stock and (a) in {args.repeats} "
        f"adjacent pairs (order alternating), (b) {len(times['b'])} runs after them; medians.",
        "",
        "| run | median s | ratio to stock |",
        "|---|---|---|",
        f"| stock `StableDiffusionPipeline.__call__` | {med['stock']:.3f} | 1.000 |",
        f"| (a) Wen every step + FD sharpness at step 1 | {med['a']:.3f} | {ratio_a:.3f} (median of per-pair ratios; "
        f"range {min(pair_ratios):.3f}–{max(pair_ratios):.3f}; goal ≤ 1.05) |",
        f"| (b) Wen + exact sharpness every step | {med['b']:.3f} | {med['b'] / med['stock']:.3f} |",
        "",
        f"Per sharpness evaluation at step 1 (sΔ known): exact JVP {statistics.median(t_exact) * 1e3:.1f} ms, "
        f"finite difference {statistics.median(t_fd) * 1e3:.1f} ms, ratio exact : FD = {jvp_fd:.2f}.",
        f"<!-- {MARK}:end -->",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        doc = ROOT / "docs" / "performance.md"
        text = doc.read_text() if doc.exists() else "# Performance\n\nEvery number here was produced by the command shown with it.\n"
        pattern = re.compile(rf"<!-- {MARK}:start -->.*?<!-- {MARK}:end -->", re.S)
        text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
        doc.parent.mkdir(exist_ok=True)
        doc.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
