"""Benchmark: where one Generate request's time goes, as a timeline (request → job → updates → client).

    OMP_NUM_THREADS=1 python tests/bench/app_timeline.py [--runs 4] [--steps 50] [--prompt TEXT]

Launches the app on the demo model, sends the Generate form's defaults with ``app_bench.py``'s browser-like client
(in its own process) and prints, per run, seconds since the client sent the request: when gradio's queue received
it (``push``), the handler started, the generation started and ended, each update the handler yielded, when
gradio's ``postprocess_data`` began and ended for each update (``pp``/``pp_end``), when the handler ended and when
the client had everything (``client_end``). The timers wrap gradio's and the app's functions from outside; the
app is not changed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompt", default="a small blue circle in the center")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sailscope-timeline-"))
    os.environ.setdefault("SAILSCOPE_HOME", str(tmp / "home"))
    import gradio.blocks
    import gradio.queueing

    import sailscope.ui.jobs as jobs
    from sailscope.ui.app import AppContext, build_ui, launch
    from sailscope.ui.forms import GENERATE_FIELDS, GenerateForm
    from sailscope.ui.jobs import AppConfig
    from sailscope.ui.views import generate as generate_view

    marks: list[tuple[str, float]] = []

    def traced_stream(fn, start: str, each: str | None, end: str):
        def wrapper(*a, **k):
            marks.append((start, time.time()))
            for item in fn(*a, **k):
                if each:
                    marks.append((each, time.time()))
                yield item
            marks.append((end, time.time()))
        return wrapper

    def traced_async(owner, name: str, tag: str) -> None:
        fn = getattr(owner, name)

        async def wrapper(*a, **k):
            t0 = time.time()
            try:
                return await fn(*a, **k)
            finally:
                marks.append((tag, t0))
                marks.append((tag + "_end", time.time()))
        setattr(owner, name, wrapper)

    generate_view.generate_handler = traced_stream(generate_view.generate_handler, "handler_start", "yield", "handler_end")
    jobs.generate = traced_stream(jobs.generate, "gen_start", None, "gen_end")
    traced_async(gradio.queueing.Queue, "push", "push")
    traced_async(gradio.blocks.Blocks, "postprocess_data", "pp")

    client_code = app_bench.CLIENT.replace("    total = time.perf_counter() - t0\n",
                                           "    total = time.perf_counter() - t0\n    tend = time.time()\n", 1)
    client_code = client_code.replace("print(json.dumps({", 'print(json.dumps({"t0": tend - total, "tend": tend, ')
    config = AppConfig(outputs=str(tmp / "outputs"), models_dirs=(str(tmp / "models"),), allow_paths=True)
    ctx = AppContext(config)
    ctx.models.load("demo", "cpu", "fp32")
    demo = build_ui(context=ctx)
    port = app_bench.free_port()
    launch(demo, config, port=port, prevent_thread_lock=True, quiet=True)
    client = subprocess.Popen([sys.executable, "-c", client_code, f"http://127.0.0.1:{port}/",
                               str(app_bench.generate_fn_index(demo))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    form = GenerateForm(prompt=args.prompt, seed=0, steps=args.steps, width=0, height=0)
    request = json.dumps([getattr(form, k) for k in GENERATE_FIELDS])
    for i in range(args.runs + 1):  # the first run warms up
        marks.clear()
        client.stdin.write(request + "\n")
        client.stdin.flush()
        got = json.loads(client.stdout.readline())
        time.sleep(0.3)
        if i == 0:
            continue
        t0, row = got["t0"], {}
        for tag, t in marks:
            if tag in ("yield", "pp", "pp_end"):
                row.setdefault(tag, []).append(round(t - t0, 3))
            else:
                row.setdefault(tag, round(t - t0, 3))
        row["client_end"] = round(got["tend"] - t0, 3)
        print(json.dumps(row), flush=True)
    client.stdin.close()
    demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
