"""Benchmark: CPU the launched app's server uses while idle, at gradio's queue polling and at the app's.

    python tests/bench/app_idle_cpu.py [--seconds 10]

Launches the app (no model loaded) and measures this process's CPU time over ``--seconds`` of idleness, first with
the queue's polling intervals gradio sets (6.x on Linux: 1 ms idle, 10 ms progress), then with the app's
(``ui.compat.QUEUE_IDLE_POLL_S``/``QUEUE_PROGRESS_POLL_S``), alternating twice. Prints JSON: CPU seconds per
second for each, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    import gradio as gr

    from sailscope.ui import compat
    from sailscope.ui.app import build_ui, launch
    from sailscope.ui.jobs import AppConfig

    tmp = Path(tempfile.mkdtemp(prefix="sailscope-idle-"))
    os.environ.setdefault("SAILSCOPE_HOME", str(tmp / "home"))
    config = AppConfig(model=None, outputs=str(tmp / "outputs"))
    demo = build_ui(config)
    launch(demo, config, port=app_bench.free_port(), prevent_thread_lock=True, quiet=True)
    gradio_default = gr.Blocks().queue()._queue  # a queue as gradio sets it up
    settings = {"gradio": (gradio_default.sleep_when_free, gradio_default.progress_update_sleep_when_free),
                "app": (compat.QUEUE_IDLE_POLL_S, compat.QUEUE_PROGRESS_POLL_S)}
    used: dict[str, list[float]] = {k: [] for k in settings}
    time.sleep(2)
    for _ in range(2):
        for name, (idle, progress) in settings.items():
            demo._queue.sleep_when_free, demo._queue.progress_update_sleep_when_free = idle, progress
            time.sleep(0.5)
            t0 = time.process_time()
            time.sleep(args.seconds)
            used[name].append((time.process_time() - t0) / args.seconds)
    demo.close()
    out = {"polling_seconds": settings, "cpu_seconds_per_second": {k: statistics.median(v) for k, v in used.items()},
           "runs": used, "cpu_count": os.cpu_count()}
    out["ratio_app_over_gradio"] = out["cpu_seconds_per_second"]["app"] / out["cpu_seconds_per_second"]["gradio"]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
