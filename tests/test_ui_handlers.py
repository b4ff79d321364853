"""The app's handlers called directly (no server): streaming, saving, bad input, cancel, sessions, views.

Runs on the seeded tiny pipeline (``core.testing``) with 2–4 steps so the whole module stays well under a
minute of compute on a 2-core CPU (imports dominate).
"""
from __future__ import annotations

import html
import json
import re
import threading
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from sailscope.core.io.infotext import parse_png_text  # noqa: E402
from sailscope.ui import app as ui_app  # noqa: E402
from sailscope.ui.forms import GENERATE_FIELDS, GenerateForm, parse_steps, read_prompt_list  # noqa: E402
from sailscope.ui.jobs import AppConfig, AppContext, JobView  # noqa: E402
from sailscope.ui.outputs import read_infotext  # noqa: E402
from sailscope.ui.views.audit import audit_handler  # noqa: E402
from sailscope.ui.views.compare import compare_handler  # noqa: E402
from sailscope.ui.views.generate import generate_handler, spectrum_view_handler  # noqa: E402
from sailscope.ui.views.model import load_model_handler  # noqa: E402
from sailscope.ui.widgets import cancel_handler  # noqa: E402
from ui_support import last, request  # noqa: E402


def gen_args(**over) -> GenerateForm:
    """The Generate form with every field given (the test's defaults, then ``over``)."""
    args = dict(prompt="a red square", negative="", seed=0, steps=3, guidance=7.5, width=0, height=0, scheduler="ddim",
                sharpness_at="every step", sail_on=False, sail_objective="paper", sail_threshold="auto",
                sail_max_steps=2, sail_candidates=1, compare=True, spectrum_steps="", spectrum_method="arnoldi",
                spectrum_k=3, sail_trigger="auto", sail_lr=0.3, sail_rounds=2, spectra_on=False, batch_count=1)
    args.update(over)
    assert set(args) == set(GENERATE_FIELDS)
    return GenerateForm(**args)


def build_sail(enabled, objective, threshold, max_steps, candidates, trigger="auto", lr=None, rounds=None):
    """The SAIL settings the advanced panel's values give (the form's other fields do not matter)."""
    return GenerateForm(sail_on=enabled, sail_objective=objective, sail_threshold=threshold, sail_max_steps=max_steps,
                        sail_candidates=candidates, sail_trigger=trigger, sail_lr=lr, sail_rounds=rounds).sail_settings()


def status_of(update) -> str:
    return html.unescape(update["status"])


def test_generate_streams_live_then_saves_png_infotext_and_report(ctx):
    updates = list(generate_handler(ctx, gen_args(spectrum_steps="1", spectra_on=True), request=request("a")))
    # one update per step (live_interval 0; the first step comes before "starting…" would), one for the images
    # (spectra follow), one final
    assert len(updates) >= 3 + 2
    live = [u for u in updates[:-1] if "metrics_plot" in u]  # an output left out of an update is unchanged
    n_points = [len(u["metrics_plot"].data[0].x) for u in live]
    assert n_points[:3] == [1, 2, 3]  # the plot gains a point per step while sampling
    final = updates[-1]
    assert "ss-ok" in status_of(final), status_of(final)
    png, report = Path(final["image_original"]), Path(final["report_file"])
    assert png.suffix == ".png" and png.is_file() and report.is_file()
    text = read_infotext(png)
    assert text.startswith("a red square\n") and "Steps: 3" in text and "Sampler: DDIM" in text and "Seed: 0" in text
    assert float(parse_png_text(text)["SAIL Scope step-1 sharpness"]) == pytest.approx(
        json.loads(Path(final["report_file"]).read_text())["detection"]["runs"]["original"]["step1_sharpness"], rel=1e-5)
    data = json.loads(report.read_text())
    assert len(data["runs"]["original"]["steps"]) == 3
    assert data["detection"]["runs"]["original"]["step1_sharpness"] == pytest.approx(
        data["runs"]["original"]["steps"][0]["sharpness"][0])
    assert set(data["spectra"]["original"]["1"]) == {"cond", "uncond", "delta"}
    # the spectrum slider view reads the finished job's state (no model work)
    fig = spectrum_view_handler(final["state"], "original", 1)
    assert len(fig.data) == 3
    assert not list(png.parent.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("over, expected", [
    (dict(steps=0), "steps must be an integer in [1, 1000]"),
    (dict(steps=1001), "steps must be an integer in [1, 1000]"),
    (dict(width=13), "width must be a positive multiple"),
    (dict(guidance=-1), "guidance must be a finite number >= 0"),
    (dict(scheduler="plms"), "unknown scheduler"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(spectrum_steps="9", spectra_on=True), "outside 1..3"),
    (dict(prompt="x" * 5000), "the limit is 4000"),
])
def test_bad_input_shows_a_readable_message_and_the_next_request_works(ctx, over, expected):
    updates = list(generate_handler(ctx, gen_args(**over), request=request("a")))
    assert len(updates) == 1 and "ss-error" in status_of(updates[0]) and expected in status_of(updates[0])
    assert ctx.cancels._events == {}  # the session's cancel flag was released


def test_long_and_empty_prompts_warn_but_run(ctx):
    final = last(generate_handler(ctx, gen_args(prompt="", steps=1, sharpness_at="none"), request=request("a")))
    assert "ss-ok" in status_of(final) and "empty prompt" in status_of(final)
    final = last(generate_handler(ctx, gen_args(prompt="word " * 40, steps=1, sharpness_at="none"), request=request("a")))
    assert "ss-ok" in status_of(final) and "truncated" in status_of(final)


def test_no_model_loaded_is_a_message(tmp_path):
    c = AppContext(AppConfig(outputs=str(tmp_path)))
    (u,) = list(generate_handler(c, gen_args(), request=request("a")))
    assert "no model is loaded" in status_of(u)


def test_cancel_stops_within_a_step_and_only_that_session(ctx, monkeypatch):
    from sailscope.core.sampling import StepRecord
    from sailscope.ui.views import generate as gen_view

    run_job = gen_view.run_job

    def paced(*args, **kwargs):  # steps of 0.2 s, as a real model's: the click lands while step 2 is sampled
        for item in run_job(*args, **kwargs):
            yield item
            if isinstance(item, StepRecord):
                time.sleep(0.2)

    monkeypatch.setattr(gen_view, "run_job", paced)
    gen_a = generate_handler(ctx, gen_args(steps=4), request=request("A"))
    gen_b = generate_handler(ctx, gen_args(steps=2), request=request("B"))
    next(gen_a)  # step 1
    next(gen_b)
    assert "cancelling" in cancel_handler(ctx, request("A"))
    rest_a = list(gen_a)
    assert "cancelled" in status_of(rest_a[-1]) and "nothing was saved" in status_of(rest_a[-1])
    # the job runs in a worker thread, so at most the step in flight at the click finishes (then it stops)
    shown = [int(m) for u in rest_a for m in re.findall(r'aria-valuenow="(\d+)"', status_of(u))]
    assert len(rest_a) <= 2 and max(shown, default=1) <= 2
    final_b = last(gen_b)
    assert "ss-ok" in status_of(final_b)  # session B never saw A's cancel
    assert "nothing to cancel" in cancel_handler(ctx, request("A"))
    # and A can generate again
    assert "ss-ok" in status_of(last(generate_handler(ctx, gen_args(steps=1), request=request("A"))))


def test_concurrent_sessions_get_their_own_results(ctx):
    results = {}

    def run(name, seed):
        results[name] = last(generate_handler(ctx, gen_args(seed=seed, steps=2, prompt=name), request=request(name)))

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("one", 1), ("two", 2))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for name, seed in (("one", 1), ("two", 2)):
        report = json.loads(Path(results[name]["report_file"]).read_text())
        assert report["settings"]["prompt"] == name and report["settings"]["seed"] == seed


def test_sail_pair_shows_both_images_loss_trace_and_infotext(ctx):
    final = last(generate_handler(ctx, gen_args(sail_on=True, sail_threshold="1e12", sail_max_steps=1, steps=2),
                                  request=request("s")))
    assert "ss-ok" in status_of(final), status_of(final)
    assert Path(final["image_original"]).is_file() and Path(final["image_sail"]).is_file()
    report = json.loads(Path(final["report_file"]).read_text())
    assert report["sail"]["threshold"] == 1e12 and report["sail"]["converged"] == [True]
    assert set(report["runs"]) == {"original", "sail"}
    assert "SAIL: on" in read_infotext(final["image_sail"])
    assert len(final["sail_plot"].data) >= 1


def test_sail_advanced_panel_builds_trigger_and_lr(ctx):
    from sailscope.core.errors import UserInputError
    from sailscope.core.mitigation import SailSettings

    s = build_sail(True, "paper", "auto", 6, 1, "none", 0.2)
    assert s.trigger is None and s.lr == 0.2 and s.threshold == "auto"
    assert build_sail(True, "paper", "0.01", 6, 1, "0.05", "").trigger == 0.05
    assert build_sail(True, "paper", "auto", 6, 1, " AUTO ", None).lr == SailSettings().lr
    with pytest.raises(UserInputError, match="SAIL trigger"):
        build_sail(True, "paper", "auto", 6, 1, "sometimes", 0.3)
    assert build_sail(True, "paper", "auto", 6, 1, "auto", 0.3, 3).rounds == 3
    assert build_sail(True, "paper", "auto", 6, 1, "auto", 0.3, None).rounds == SailSettings().rounds
    with pytest.raises(UserInputError, match="rounds"):
        build_sail(True, "paper", "auto", 6, 1, "auto", 0.3, 0)
    # a bad value reaches the user as a message, before any model work
    final = last(generate_handler(ctx, gen_args(sail_on=True, sail_lr=-1.0), request=request("lr")))
    assert "ss-error" in status_of(final) and "lr must be a finite number > 0" in status_of(final)


def test_sail_loss_figure_draws_threshold_and_a_distinct_trigger():
    from sailscope.ui import plots

    trace = [{"step": 0, "candidate": 0, "loss": 0.2}, {"step": 1, "candidate": 0, "loss": 0.01}]
    fig = plots.sail_loss_figure(trace, 0.017, 0.052)
    lines = sorted((sh.y0, ann.text) for sh, ann in zip(fig.layout.shapes, fig.layout.annotations))
    assert lines == [(0.017, "threshold 0.017"), (0.052, "trigger 0.052")]
    assert list(fig.data[0].y) == [0.2, 0.01]
    # one level (trigger None, or equal to the threshold): one line
    assert len(plots.sail_loss_figure(trace, 0.017, None).layout.shapes) == 1
    assert len(plots.sail_loss_figure(trace, 0.017, 0.017).layout.shapes) == 1


def test_job_view_sail_progress_and_trace_follow_rounds():
    from sailscope.core.sampling import GenerationSettings
    from sailscope.core.mitigation import SailSettings, SailStep
    from sailscope.ui import plots

    v = JobView(settings=GenerationSettings(prompt="p", steps=4), sail=SailSettings(max_steps=2, rounds=2))
    step = lambda k, r, loss: SailStep(step=k, max_steps=2, loss=loss, sharpness=loss, prior=loss, accepted=[],
                                       threshold=0.1, elapsed=0.0, unet_calls=k, round=r)
    for k in range(3):
        v.apply(step(k, 0, [1.0 - 0.1 * k]))
    assert v.progress()[:2] == (3, 3 + 8) and "round" not in v.progress()[2]
    v.apply(step(0, 1, [None, 0.5]))  # a re-draw round: the bar's SAIL share grows by one round
    done, total, label = v.progress()
    assert (done, total) == (4, 6 + 8) and "step 0 of ≤ 2 (round 2 of ≤ 2: fresh noise)" in label
    rows = v.sail_trace()
    assert rows[-1] == {"step": 0, "candidate": 1, "loss": 0.5, "round": 1}
    names = [t.name for t in plots.sail_loss_figure(rows, 0.1).data]
    assert names == ["candidate 0", "candidate 1 (round 2)"]


def test_job_view_progress_and_nearest_spectrum():
    from sailscope.core.sampling import GenerationSettings, StepRecord

    v = JobView(settings=GenerationSettings(prompt="p", steps=4))
    for s in (1, 2):
        v.apply(StepRecord(step=s, total=4, t=0.0, sigma=1.0, wen=[0.1], extras={"spectra": {"delta": {"x": s}}}))
    assert v.progress()[:2] == (2, 4)
    assert v.spectrum_for("original", 4) == (2, {"delta": {"x": 2}})
    assert parse_steps("1, 3", 4) == {1, 3} and parse_steps("", 4) == frozenset()


def test_compare_prompts_plot_and_table(ctx):
    out = list(compare_handler(ctx, "a cat\na dog", "0", 2, 7.5, "ddim", "arnoldi", 3, request=request("c")))
    status, fig, table = (out[-1][k] for k in ("status", "plot", "table"))
    assert "compared 2" in status
    assert len(table) == 2 and all(r[2] is not None for r in table)
    assert any(t.type == "bar" for t in fig.data)
    (bad,) = list(compare_handler(ctx, "", "0", 2, 7.5, "ddim", "arnoldi", 3, request=request("c")))
    assert "at least one prompt" in bad["status"]


def test_audit_streams_resumes_exports_and_draws_roc(ctx, tmp_path):
    args = ("a cat\na dog\na bird", None, "a dog", 1, 2, "sharpness", "t1")
    first = list(audit_handler(ctx, *args, request=request("u")))
    status, table, hist, roc, files = (first[-1][k] for k in ("status", "table", "histogram", "roc", "export"))
    assert "3 prompts done" in status and len(table) == 3
    assert "AUC" in roc.layout.title.text
    assert sorted(Path(f).suffix for f in files) == [".csv", ".json"]
    again = list(audit_handler(ctx, *args, request=request("u")))
    assert "3 resumed" in html.unescape(again[0]["status"])
    big = tmp_path / "big.txt"
    big.write_text("p\n" * 400_000)
    (err,) = list(audit_handler(ctx, "", str(big), "", 1, 2, "sharpness", "t2", request=request("u")))
    assert "ss-error" in err["status"] and "the limit is" in html.unescape(err["status"])


def test_read_prompt_list_formats(tmp_path):
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("prompt,memorized\nA,1\nB,0\nC,\n")
    assert read_prompt_list("", str(csv_file), 10_000, 10) == [("A", True), ("B", False), ("C", None)]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "A", "memorized": true}\n"B"\n')
    assert read_prompt_list("Z\nA", str(jl), 10_000, 10) == [("Z", None), ("A", None), ("B", None)]
    with pytest.raises(Exception, match="limit is 1"):
        read_prompt_list("a\nb", None, 10_000, 1)


def test_model_view_refuses_free_form_paths_unless_allowed(ctx, tmp_path):
    status = load_model_handler(ctx, "/etc", "", "cpu", "fp32")["status"]
    assert "--allow-paths" in html.unescape(status) and ctx.models.pipe is not None  # the loaded model stays


def test_build_ui_wires_one_model_slot():
    demo = ui_app.build_ui(AppConfig(model=None))
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    model_jobs = [f for f in fns if getattr(f, "concurrency_id", None) == "model"]
    assert {f.api_name for f in model_jobs} == {"generate", "compare", "audit", "load_model", "sail_candidates",
                                                "check_copies"}  # every event that runs the model shares one slot
    assert all(f.concurrency_limit == 1 for f in model_jobs)


def test_in_background_keeps_order_reraises_and_stops_the_worker_when_closed():
    """The app consumes core streams in a worker thread: same items in the same order, the stream's
    exception after the items before it, and an early close cancels and joins the worker."""
    from sailscope.core.errors import Cancelled
    from sailscope.ui.jobs import in_background

    got = [x for batch in in_background(iter(range(50)), threading.Event()) for x in batch]
    assert got == list(range(50))
    # closing a stream that ended never cancels (a batch's next image shares the session's cancel flag)
    for _ in range(20):
        done = threading.Event()
        stream = in_background(iter(range(3)), done)
        assert [x for batch in stream for x in batch] == [0, 1, 2]
        stream.close()
        assert not done.is_set()

    def failing():
        yield 1
        yield 2
        raise Cancelled("stop")

    seen = []
    with pytest.raises(Cancelled):
        for batch in in_background(failing(), threading.Event()):
            seen += batch
    assert seen == [1, 2]

    cancel, stopped = threading.Event(), threading.Event()

    def endless():
        try:
            i = 0
            while not cancel.is_set():  # a core stream checks its cancel flag once per step
                yield i
                i += 1
                time.sleep(0.001)
        finally:
            stopped.set()

    stream = in_background(endless(), cancel)
    assert next(stream)[0] == 0
    stream.close()
    assert cancel.is_set() and stopped.is_set()

    # the worker starts with the call, before the first ``next`` (the app sends its first update meanwhile),
    # and a close before any ``next`` (the tab closed during that first update) still cancels and joins it
    cancel, stopped, started = threading.Event(), threading.Event(), threading.Event()

    def watched():
        started.set()
        yield from endless()

    stream = in_background(watched(), cancel)
    assert started.wait(5)
    stream.close()
    assert cancel.is_set() and stopped.is_set()


def test_a_plain_run_sends_its_image_once_and_its_first_update_after_sampling_started(ctx, monkeypatch):
    """Without SAIL or spectra nothing follows the image, so the image and report go out in the final update
    only (each update costs the server a round of gradio's processing); the first update is rendered while
    the job already samples."""
    from sailscope.ui.views import generate as gen_view

    started = threading.Event()
    run_job = gen_view.run_job

    def watched(*args, **kwargs):
        started.set()
        yield from run_job(*args, **kwargs)

    monkeypatch.setattr(gen_view, "run_job", watched)
    first_rendered_after_start = []
    render = gen_view.render_generate

    def render_generate(*args, **kwargs):
        if not first_rendered_after_start:
            first_rendered_after_start.append(started.wait(5))
        return render(*args, **kwargs)

    monkeypatch.setattr(gen_view, "render_generate", render_generate)
    updates = list(generate_handler(ctx, gen_args(), request=request("a")))
    assert first_rendered_after_start == [True]
    with_image = [u for u in updates if "image_original" in u]
    assert len(with_image) == 1 and with_image[0] is updates[-1] and "ss-ok" in status_of(updates[-1])
    # with spectra asked for, the images still go out as soon as they exist, before the spectra
    updates = list(generate_handler(ctx, gen_args(spectrum_steps="1", spectra_on=True), request=request("a")))
    with_image = [u for u in updates if "image_original" in u]
    assert len(with_image) == 2 and "computing eigen-spectra" in status_of(with_image[0])


def test_wiring_names_the_api_after_the_form_and_maps_outputs_to_components():
    """``bind``: the ``/generate`` endpoint's parameters are the form's fields in order, and the handler's
    ``{name: value}`` updates reach gradio as ``{component: value}``."""
    demo = ui_app.build_ui(AppConfig(model=None))
    params = [p["parameter_name"] for p in demo.get_api_info()["named_endpoints"]["/generate"]["parameters"]]
    assert params == list(GENERATE_FIELDS)
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    (generate,) = [f for f in fns if f.api_name == "generate"]
    values = [getattr(GenerateForm(), name) for name in GENERATE_FIELDS]
    (update,) = list(generate.fn(*values, request("w")))
    components = demo.sailscope_components
    assert list(update) == [components["status"], components["queue_note"]]  # a click's first update clears the note
    assert "no model is loaded" in html.unescape(update[components["status"]]) and update[components["queue_note"]] == ""


def test_starting_note_only_when_the_first_step_is_slow_and_the_first_update_clears_the_queue_note(ctx, monkeypatch):
    """A first step within ``STARTING_NOTE_AFTER_S`` is the click's first update (one update fewer for the server);
    a slower one is announced by "starting…". Either way the first update clears the "waiting for the model"
    note, and the batch's later images send no "starting…"."""
    from sailscope.ui.views import generate as gen_view

    updates = list(generate_handler(ctx, gen_args(), request=request("a")))
    assert "starting" not in status_of(updates[0]) and "step 1 of 3" in status_of(updates[0])
    assert updates[0]["queue_note"] == "" and all("queue_note" not in u for u in updates[1:])

    run_job = gen_view.run_job

    def slow_start(*args, **kwargs):
        time.sleep(0.5)
        yield from run_job(*args, **kwargs)

    monkeypatch.setattr(gen_view, "run_job", slow_start)
    monkeypatch.setattr(gen_view, "STARTING_NOTE_AFTER_S", 0.1)
    updates = list(generate_handler(ctx, gen_args(batch_count=2), request=request("a")))
    starting = [u for u in updates if "starting" in status_of(u)]
    assert starting == [updates[0]] and updates[0]["queue_note"] == ""
    assert "step 1 of 3" in status_of(updates[1])


def test_the_queue_polls_at_the_app_s_interval_not_gradio_s_millisecond():
    """Gradio 6 looks at an idle queue every 1 ms on Linux, taking the interpreter from a running generation a
    thousand times a second; the app's queue (gradio's own object) polls at the older 20 ms / 100 ms."""
    from gradio.queueing import Queue

    from sailscope.ui.compat import QUEUE_IDLE_POLL_S, QUEUE_PROGRESS_POLL_S

    demo = ui_app.build_ui(AppConfig(model=None))
    assert isinstance(demo._queue, Queue)
    assert demo._queue.sleep_when_free == QUEUE_IDLE_POLL_S == 0.02
    assert demo._queue.progress_update_sleep_when_free == QUEUE_PROGRESS_POLL_S == 0.1
