"""Benchmark: a generation through the app vs the same generation through the core API (same process).

    OMP_NUM_THREADS=1 python tests/bench/app_bench.py [--model demo|PATH] [--steps 50] [--repeats 10] [--browser]

* core: ``core.generate.run_generation`` with the app's default settings (sharpness at step 1, no spectra).
* handler: the app's Generate handler consumed in-process (the app's own work, no HTTP/gradio transport).
* app: the same settings submitted to the launched app over its HTTP queue by a client that does what a browser
  does (one kept-alive connection: POST ``queue/join``, read the session's event stream, fetch each image or
  file the updates show once), minus rendering: wall time from the request to the last fetch, and to the first
  update that carries a live plot point. With ``--browser``, the time from the Generate click to the first
  plotted point in headless Chromium (Playwright) is measured too.
Core and app runs come in adjacent pairs (order alternating); the ratio is the median of the per-pair ratios.
The client runs in a separate process, as a browser would. The final status and the report give the handler's
own clock and the generation's clock inside the app, so the result also says how the app's time splits into
generation, app work, and gradio + client transport.
Without the demo model installed it falls back to the tiny test pipeline (numbers then say so).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate_fn_index(demo) -> int:
    """The id of the Generate event, which the client's ``queue/join`` names."""
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    return next(f._id for f in fns if f.api_name == "generate")


CLIENT = r"""
import json, re, sys, time, uuid
import httpx
# what a browser does: one kept-alive connection, POST queue/join, then the session's event stream (SSE)
base, fn_index = sys.argv[1].rstrip("/") + "/gradio_api", int(sys.argv[2])
http = httpx.Client(timeout=None)
session = uuid.uuid4().hex
for line in sys.stdin:
    inputs = json.loads(line)
    t0 = time.perf_counter()
    joined = http.post(base + "/queue/join", json={"data": inputs, "fn_index": fn_index, "session_hash": session,
                                                    "event_id": None, "trigger_id": None})
    event = joined.json()["event_id"]
    first = final = None
    urls = set()  # the images and files the updates show, fetched once each as a browser does
    with http.stream("GET", base + "/queue/data", params={"session_hash": session}) as stream:
        for raw in stream.iter_lines():
            if not raw.startswith("data:"):
                continue
            msg = json.loads(raw[5:])
            if msg.get("event_id") != event:
                continue
            if first is None and msg.get("msg") == "process_generating" and "run: step " in raw:
                first = time.perf_counter() - t0
            if msg.get("msg") == "process_completed":
                final = msg
                break
            urls.update(re.findall(r'"(https?://[^"]+/gradio_api/file=[^"]+)"', raw))
    for url in sorted(urls):
        http.get(url).raise_for_status()
    total = time.perf_counter() - t0
    done = re.search(r"done in ([0-9.]+) s", json.dumps(final))  # the handler's own clock
    print(json.dumps({"total": total, "first": total if first is None else first, "ok": bool(final.get("success")),
                      "handler": float(done.group(1)) if done else None}), flush=True)
"""


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--live-interval", type=float, default=None, help="seconds between live updates (app default if unset)")
    parser.add_argument("--browser", action="store_true", help="also time click -> first plotted point in Chromium")
    args = parser.parse_args()

    from sailscope.core.sampling import GenerationSettings, run_generation
    from sailscope.ui.app import AppContext, build_ui, launch
    from sailscope.ui.forms import GENERATE_FIELDS, GenerateForm
    from sailscope.ui.jobs import AppConfig
    from sailscope.ui.views.generate import generate_handler

    tmp = Path(tempfile.mkdtemp(prefix="sailscope-bench-"))
    os.environ.setdefault("SAILSCOPE_HOME", str(tmp / "home"))
    model = args.model
    if model == "demo" and not (REPO / "assets" / "models" / "demo" / "model_index.json").is_file():
        from sailscope.core.testing import tiny_pipeline

        tiny_pipeline().save_pretrained(str(tmp / "models" / "tiny"))
        model = str(tmp / "models" / "tiny")
        print("demo model not installed: benchmarking the tiny test pipeline", file=sys.stderr)
    live = {} if args.live_interval is None else {"live_interval": args.live_interval}
    config = AppConfig(outputs=str(tmp / "outputs"), models_dirs=(str(tmp / "models"),), allow_paths=True, **live)
    ctx = AppContext(config)
    pipe = ctx.models.load(model, "cpu", "fp32")
    prompt = args.prompt or "a large blue circle above three red triangles, poster print 4512"
    settings = GenerationSettings(prompt=prompt, seed=0, steps=args.steps, guidance=7.5, scheduler="ddim",
                                  sharpness_at="first")
    demo = build_ui(context=ctx)
    port = free_port()
    launch(demo, config, port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"

    # The client runs in its own process (as a browser does): polling from this process would take the GIL
    # from the server's generation thread and bill the client's work to the app.
    client = subprocess.Popen([sys.executable, "-c", CLIENT, url, str(generate_fn_index(demo))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, bufsize=1)
    # the Generate form at its defaults (what a user gets: step-1 sharpness, no SAIL, no spectra), this prompt/steps
    form = GenerateForm(prompt=prompt, seed=0, steps=args.steps, width=0, height=0)
    request = json.dumps([getattr(form, k) for k in GENERATE_FIELDS])

    inside: list[dict] = []  # per app run: the handler's clock and the generation's clock inside the app

    def app_once() -> tuple[float, float]:
        client.stdin.write(request + "\n")
        client.stdin.flush()
        got = json.loads(client.stdout.readline())
        assert got["ok"], "the app's Generate job failed"
        report = max(Path(config.outputs).rglob("*.json"), key=lambda p: p.stat().st_mtime)  # this run's report
        inside.append({"handler": got["handler"],
                       "generation": json.loads(report.read_text())["runs"]["original"]["seconds"]})
        return got["total"], got["first"]

    def core_once() -> float:
        t0 = time.perf_counter()
        run_generation(pipe, settings)
        return time.perf_counter() - t0

    run_generation(pipe, settings)  # warm-up (allocations, kernels)
    app_once()
    # adjacent core/app pairs, order alternating: this CPU's speed drifts, only neighbours compare
    core_t, app_t, first_t, ratios = [], [], [], []
    for i in range(args.repeats):
        if i % 2 == 0:
            c = core_once()
            a, f = app_once()
        else:
            a, f = app_once()
            c = core_once()
        core_t.append(c); app_t.append(a); first_t.append(f); ratios.append(a / c)
    client.stdin.close()
    client.wait(timeout=30)
    # the app's own work without gradio's transport: the Generate handler consumed in-process
    # (live figures, risk badge, PNG + report written), paired with core runs the same way
    handler_ratios = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        for _ in generate_handler(ctx, GenerateForm.from_values(json.loads(request))):
            pass
        h = time.perf_counter() - t0
        handler_ratios.append(h / core_once())
    result = {
        "model": getattr(pipe.sailscope_info, "name", model), "steps": args.steps, "repeats": args.repeats,
        "live_interval": config.live_interval,
        "core_seconds_median": statistics.median(core_t), "app_seconds_median": statistics.median(app_t),
        "ratio_app_over_core": statistics.median(ratios), "ratios": ratios,
        "ratio_handler_over_core": statistics.median(handler_ratios), "handler_ratios": handler_ratios,
        "first_update_with_a_point_seconds_median": statistics.median(first_t),
        # where the app's time goes (medians over the timed app runs): the generation as timed inside the app,
        # the handler's clock (generation + app work, status rounded to 0.1 s), the rest is gradio + client
        "in_app_generation_seconds_median": _median([x["generation"] for x in inside[1:]]),
        "in_app_handler_seconds_median": _median([x["handler"] for x in inside[1:]]),
        "core_seconds": core_t, "app_seconds": app_t, "first_point_seconds": first_t,
        "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
    }
    if args.browser:
        result["browser_click_to_first_point_seconds"] = browser_first_point(url, prompt, args.steps)
    print(json.dumps(result, indent=1))
    demo.close()
    return 0


def browser_first_point(url: str, prompt: str, steps: int) -> float:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = b.new_page()
        page.goto(url, wait_until="load")
        page.wait_for_selector("#ss-generate", timeout=60_000)
        page.locator("#ss-prompt textarea").fill(prompt)
        box = page.locator("#ss-steps input[type=number]")
        box.fill(str(steps))
        box.press("Enter")
        t0 = time.perf_counter()
        page.locator("#ss-generate").click()
        page.wait_for_function(
            "() => { const d = document.querySelector('#ss-metrics-plot .js-plotly-plot');"
            " return d && d.data && d.data[0] && d.data[0].x && d.data[0].x.length > 0 }", timeout=120_000, polling=20)
        first = time.perf_counter() - t0
        page.wait_for_function("() => document.querySelector('#ss-status').innerText.includes('done')", timeout=600_000)
        b.close()
    return first


if __name__ == "__main__":
    raise SystemExit(main())
