"""Model jobs behind the app, free of gradio: app context, model manager, cancel registry, job streams and
their view.

The view handlers (``ui/views``) turn a :class:`JobView` into component updates; all numbers in it come from
``core`` (records, spectra, SAIL results). Nothing here computes a metric.
"""
from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import torch

from sailscope.core import calibration
from sailscope.core.detect import NoiseCheck, noise_check, verdict
from sailscope.core.errors import Cancelled, SailScopeError, UserInputError
from sailscope.core.io import infotext
from sailscope.core.mitigation import PairResult, SailResult, SailSettings, SailStep, generate_pair, infotext_fields
from sailscope.core.models import LoraSpec, list_local_loras, list_local_models, load_pipeline
from sailscope.core.sampling import GenerationResult, GenerationSettings, StepRecord, generate, initial_noise
from sailscope.core.spectra import SolverProgress, spectrum_at

log = logging.getLogger("sailscope.ui")

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
SPECTRUM_METHODS = ("arnoldi", "lanczos", "slq")
WHICH = ("cond", "uncond", "delta")


# ----------------------------------------------------------------------------------------------
# Configuration and model management
# ----------------------------------------------------------------------------------------------
@dataclass
class AppConfig:
    """What ``sailscope serve`` decides once for every session."""

    model: str | None = "demo"
    models_dirs: Sequence[str] = ()
    lora_dirs: Sequence[str] = ()  # LoRA .safetensors offered in the Model tab (by name; paths never shown)
    allow_paths: bool = False  # free-form model paths typed in the browser
    outputs: str = "outputs"
    device: str | None = None
    dtype: str | None = None
    max_upload_bytes: int = 512 * 1024  # audit prompt lists
    max_audit_prompts: int = 1000
    max_compare_items: int = 12
    live_interval: float = 1.0  # seconds between live plot updates, as A1111's live previews (the first step is always shown)


class ModelManager:
    """The one loaded pipeline, shared by all sessions; loading is serialized and frees the old model."""

    def __init__(self, config: AppConfig, pipe: Any = None) -> None:
        self.config = config
        self.pipe = pipe
        self.error: str | None = None
        self._lock = threading.Lock()

    @property
    def info(self) -> Any:
        return getattr(self.pipe, "sailscope_info", None) if self.pipe is not None else None

    def choices(self) -> list[str]:
        found = list_local_models(list(self.config.models_dirs))
        current = self.info.path if self.info is not None and self.info.source != "demo" else None
        if current and current not in found:
            found.append(current)
        return found

    def check_allowed(self, model: str) -> str:
        model = (model or "").strip()
        if not model:
            raise UserInputError("choose a model first")
        if model in self.choices() or self.config.allow_paths:
            return model
        raise UserInputError(
            f"{model!r} is not one of the models found in the configured folders; free-form paths need the "
            "server to be started with --allow-paths"
        )

    def lora_choices(self) -> dict[str, str]:
        """``{name: path}`` of the LoRAs in the configured folders."""
        return list_local_loras(list(self.config.lora_dirs))

    def lora_specs(self, names: Sequence[str], scales: Sequence[float]) -> list[LoraSpec]:
        """The chosen LoRAs (by name, from the configured folders only) at their scales."""
        found = self.lora_choices()
        unknown = [n for n in names if n not in found]
        if unknown:
            raise UserInputError(f"LoRA {', '.join(map(repr, unknown))} is not in the configured LoRA folders")
        if len(scales) not in (0, 1, len(names)):
            raise UserInputError(f"{len(names)} LoRA(s) but {len(scales)} strengths: give one per LoRA, or one for all")
        scales = list(scales) * len(names) if len(scales) == 1 else (list(scales) or [1.0] * len(names))
        return [LoraSpec(found[n], float(s)) for n, s in zip(names, scales)]

    def load(self, model: str, device: str | None = None, dtype: str | None = None,
             loras: Sequence[LoraSpec] = ()) -> Any:
        model = self.check_allowed(model)
        device = None if device in (None, "", "auto") else device
        dtype = None if dtype in (None, "", "auto") else dtype
        with self._lock:
            self.pipe = None
            free_memory()
            try:
                self.pipe = load_pipeline(model, device=device, dtype=dtype, loras=loras)
                self.error = None
            except SailScopeError as exc:
                self.error = str(exc)
                raise
        return self.pipe

    def require(self) -> Any:
        if self.pipe is None:
            raise UserInputError(
                "no model is loaded" + (f" ({self.error})" if self.error else "") + ": choose one in the Model tab"
            )
        return self.pipe


def free_memory() -> None:
    """Drop unreferenced tensors (and the CUDA cache) after a cancelled or failed job."""
    gc.collect()
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - memory hygiene must never fail a request
        pass


class CancelRegistry:
    """One cancel flag per browser session: the Cancel button of a session stops only its own job.

    It also knows what each registered job is doing (``what``, updated by :meth:`describe`), so a session
    waiting in the queue can be told what it waits for (:meth:`running`)."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._jobs: dict[str, tuple[str, float]] = {}  # session -> (what it is doing, start time)
        self._lock = threading.Lock()

    def start(self, session: str, what: str = "a job") -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events[session] = event
            self._jobs[session] = (what, time.perf_counter())
        return event

    def describe(self, session: str, what: str) -> None:
        """Update the running job's description (shown to sessions waiting behind it)."""
        with self._lock:
            if session in self._jobs:
                self._jobs[session] = (what, self._jobs[session][1])

    def running(self, exclude: str | None = None) -> list[tuple[str, float]]:
        """``(what, seconds so far)`` of the jobs of other sessions than ``exclude``."""
        now = time.perf_counter()
        with self._lock:
            return [(what, now - t0) for s, (what, t0) in self._jobs.items() if s != exclude]

    def cancel(self, session: str) -> bool:
        with self._lock:
            event = self._events.get(session)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]
                self._jobs.pop(session, None)


@dataclass
class AppContext:
    """Shared by every session: configuration, the loaded model, cancel flags."""

    config: AppConfig = field(default_factory=AppConfig)
    models: ModelManager = None  # type: ignore[assignment]  # None: a manager for ``config``
    cancels: CancelRegistry = field(default_factory=CancelRegistry)

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = ModelManager(self.config)


# ----------------------------------------------------------------------------------------------
# Detection threshold
# ----------------------------------------------------------------------------------------------
def detection_threshold(pipe: Any) -> tuple[float | None, str]:
    """The model's step-1 sharpness threshold and where it came from (``core.calibration``; no local paths);
    ``(None, reason)`` when the model is not calibrated or its calibration cannot be read."""
    found = detection_calibration(pipe)
    if isinstance(found, str):
        return None, found
    return float(found.threshold), found.source()


def detection_calibration(pipe: Any) -> Any:
    """``core.calibration.detection_calibration`` (threshold, provenance, calibrated settings), or the reason as
    a string when there is none."""
    try:
        found = calibration.detection_calibration(pipe)
    except (SailScopeError, OSError, KeyError, ValueError) as exc:
        return f"calibration unreadable: {str(exc).splitlines()[0]}"
    if found is None:
        return "model not calibrated: run `sailscope calibrate`"
    return found


def detection_for_run(pipe: Any, settings: GenerationSettings
                      ) -> tuple[tuple[float | None, str], dict | None, list[str], tuple[str, ...]]:
    """Everything a Generate run needs of the model's calibration from one lookup: the threshold with its source
    (as :func:`detection_threshold`), the calibrated settings, how ``settings`` differ from them, and the ordinary
    prompts for the noise check (``core.detect.noise_check``)."""
    found = detection_calibration(pipe)
    if isinstance(found, str):
        return (None, found), None, [], ()
    mismatch = calibration.settings_mismatch(found.settings, settings, pipe)
    return (float(found.threshold), found.source()), found.settings, mismatch, tuple(found.reference_prompts)


# ----------------------------------------------------------------------------------------------
# Spectra during sampling (a generate() probe calling core.spectra)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpectrumRequest:
    """Which spectra a job computes: at ``steps`` (1-based), ``k`` eigenvalues by ``method``, of ``which`` Hessians."""

    steps: frozenset[int]
    k: int = 8
    method: str = "arnoldi"
    which: tuple[str, ...] = WHICH


WHICH_LABELS = {"cond": "H_cond", "uncond": "H_uncond", "delta": "H_Δ"}


@dataclass(frozen=True)
class SpectraProgress:
    """A job item while spectra are computed: spectrum ``index`` (0-based) of ``total`` (``run``, ``step``,
    ``which``), with the solver's own :class:`~sailscope.core.spectra.SolverProgress` (None before its first
    product) and the seconds each finished spectrum took."""

    run: str
    step: int
    which: str
    index: int
    total: int
    solver: SolverProgress | None
    finished_seconds: tuple[float, ...]

    def fraction(self) -> float:
        """Share of the current spectrum done: its converged values over the wanted ones (a rough guide)."""
        p = self.solver
        if p is None:
            return 0.0
        if p.bound:
            return min(1.0, p.products / p.bound)
        return min(0.99, (p.converged or 0) / max(p.wanted, 1))

    def eta(self) -> float | None:
        """Seconds left: the mean time of the finished spectra times those left, minus the current one's time;
        None before one has finished."""
        if not self.finished_seconds:
            return None
        mean = sum(self.finished_seconds) / len(self.finished_seconds)
        current = self.solver.seconds if self.solver is not None else 0.0
        return max(0.0, mean * (self.total - self.index) - current)


def compute_spectra(request: SpectrumRequest, guided: Any, x: Any, cancel: Any = None,
                    progress: Callable[[str, SolverProgress], None] | None = None) -> dict[str, dict]:
    """``core.spectra.spectrum_at`` of ``H_cond``, ``H_uncond``, ``H_Δ`` at one latent (errors kept per ``which``).

    ``cancel`` is checked before every operator product (a cancel lands within one Krylov step);
    ``progress(which, SolverProgress)`` after each."""
    hvp = "exact" if request.method in ("lanczos", "slq") else "fd"
    out: dict[str, dict] = {}
    for which in request.which:
        report = (lambda p, w=which: progress(w, p)) if progress is not None else None
        try:
            spec = spectrum_at(guided, x, which=which, k=request.k, method=request.method, hvp=hvp, chunk=1,
                               cancel=cancel, progress=report)
            out[which] = spec.to_dict()
        except Cancelled:
            raise
        except (SailScopeError, RuntimeError, NotImplementedError, ValueError) as exc:
            out[which] = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return out


def spectrum_probe(request: SpectrumRequest, cancel: Any = None):
    """A ``generate`` probe computing the spectra in the step (delays that step; used for one-step jobs)."""

    def probe(ctx: Any) -> dict | None:
        if ctx.step not in request.steps:
            return None
        return {"spectra": compute_spectra(request, ctx.guided, ctx.x[:1], cancel)}

    return probe


class DeferredSpectra:
    """A ``generate`` probe that only captures the latent and score at the requested steps (image 0).

    The spectra are computed after sampling (:meth:`compute`), so they never delay the live plot or the
    images; the captured latent is exactly the one the step saw.
    """

    def __init__(self, request: SpectrumRequest) -> None:
        self.request = request
        self.pending: list[tuple[int, Any, Any]] = []  # (step, x, guided) not yet tagged with a run
        self.captured: list[tuple[str, int, Any, Any]] = []  # (run, step, x, guided)

    def __call__(self, ctx: Any) -> None:
        if ctx.step in self.request.steps:
            self.pending.append((ctx.step, ctx.x[:1].detach().clone(), ctx.guided))
        return None

    def tag(self, record: StepRecord) -> None:
        """Called for each streamed record: the probe ran for it just before it was yielded."""
        if self.pending and self.pending[-1][0] == record.step:
            step, x, guided = self.pending.pop()
            self.captured.append((record.run, step, x, guided))

    def compute(self, cancel: threading.Event | None = None) -> Iterator[Any]:
        """Yield :class:`SpectraProgress` items while computing and ``("spectra", run, step, {which:
        Spectrum.to_dict()})`` for every captured step. A cancel stops within one operator product."""
        total = len(self.captured) * len(self.request.which)
        finished: list[float] = []
        index = 0
        while self.captured:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled while computing spectra")
            run, step, x, guided = self.captured.pop(0)
            updates: queue.SimpleQueue = queue.SimpleQueue()
            out: dict[str, dict] = {}
            for which in self.request.which:
                yield SpectraProgress(run, step, which, index, total, None, tuple(finished))
                started = time.perf_counter()
                # progress arrives from inside the solver: forward it through a generator-friendly buffer
                sub = SpectrumRequest(steps=self.request.steps, k=self.request.k, method=self.request.method,
                                      which=(which,))
                result: dict = {}

                def solve() -> None:
                    result.update(compute_spectra(sub, guided, x, cancel,
                                                  lambda w, p: updates.put(p)))

                yield from _stream_calls(solve, updates, lambda p: SpectraProgress(
                    run, step, which, index, total, p, tuple(finished)))
                out.update(result)
                finished.append(time.perf_counter() - started)
                index += 1
            yield ("spectra", run, step, out)


def _stream_calls(fn: Callable[[], None], updates: queue.SimpleQueue, wrap: Callable[[Any], Any]) -> Iterator[Any]:
    """Run ``fn`` (which puts progress objects into ``updates``) in this thread, yielding wrapped progress as it
    comes: ``fn`` runs in a helper thread so the generator can yield between its products. Exceptions of
    ``fn`` are re-raised here."""
    box: dict = {}

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the consumer
            box["exc"] = exc
        finally:
            updates.put(_END)

    worker = threading.Thread(target=run, name="sailscope-job-spectra", daemon=True)
    worker.start()
    try:
        while True:
            item = updates.get()
            latest = item
            try:  # only the newest progress matters: skip what piled up
                while latest is not _END:
                    nxt = updates.get_nowait()
                    latest = nxt
            except queue.Empty:
                pass
            if latest is _END:
                break
            yield wrap(latest)
    finally:
        worker.join()
    if "exc" in box:
        raise box["exc"]


# ----------------------------------------------------------------------------------------------
# A generation job and its view
# ----------------------------------------------------------------------------------------------
def sail_kept_seed(pipe: Any, settings: GenerationSettings, result: SailResult) -> bool:
    """SAIL kept the seed's own noise (the start was accepted at step 0, no re-draw): its image is the
    original's, so a second sampling would be work for nothing."""
    kept = (result.steps[:1] == [0] and result.chosen[:1] == [0]
            and (not result.chosen_round or result.chosen_round[0] == 0))
    return bool(kept) and torch.equal(result.x_T[:1].cpu(), initial_noise(pipe, settings)[:1])


SAIL_NOT_NEEDED = ("sail_not_needed",)  # job item: SAIL kept the seed's noise; one run is sampled


NOISE_CHECKS_KEPT = 64


def noise_checker(pipe: Any, settings: GenerationSettings, references: Sequence[str], threshold: float | None,
                  mismatch: Sequence[str] = (), cancel: threading.Event | None = None
                  ) -> Callable[[GenerationResult], NoiseCheck | None]:
    """For :func:`run_job`: given the original run's result, the :class:`~sailscope.core.detect.NoiseCheck` of its
    noise when its verdict is high (the calibration's ordinary prompts, one step each), else None. The check depends
    on the noise and settings, not on the prompt, so it is kept with the loaded pipeline (the last
    :data:`NOISE_CHECKS_KEPT`): another prompt at the same seed and settings costs nothing."""

    def check(result: GenerationResult) -> NoiseCheck | None:
        first = result.records[0] if result.records else None
        s1 = first.sharpness[0] if first is not None and first.sharpness else None
        if not references or verdict(s1, threshold, mismatch=mismatch) != "high":
            return None
        kept = pipe.__dict__.setdefault("_sailscope_noise_checks", {})
        key = (replace(settings, prompt="", num_images=1, sharpness_at="first"), tuple(references), threshold)
        if key not in kept:
            while len(kept) >= NOISE_CHECKS_KEPT:
                kept.pop(next(iter(kept)))
            kept[key] = noise_check(pipe, settings, references, threshold, cancel)
        return kept[key]

    return check


def run_job(pipe: Any, settings: GenerationSettings, *, sail: SailSettings | None = None, compare: bool = True,
            spectrum: SpectrumRequest | None = None, cancel: threading.Event | None = None,
            check_noise: Callable[[GenerationResult], Any] | None = None) -> Iterator[Any]:
    """Stream core items: SAIL progress (when ``sail``), step records, results, a pair result, then
    :class:`SpectraProgress` items and ``("spectra", run, step, dict)`` tuples for the requested steps (computed
    after sampling). When SAIL keeps the seed's noise, :data:`SAIL_NOT_NEEDED` follows its result and only one
    run is sampled (the original, or with ``compare`` off the SAIL run, which is the same image). ``check_noise``
    (:func:`noise_checker`) runs on the original's result before it is yielded, its item (if any) first, so the
    saved files carry the final verdict."""
    deferred = DeferredSpectra(spectrum) if spectrum is not None and spectrum.steps else None
    probes = [deferred] if deferred is not None else []
    if sail is None:
        items = generate(pipe, settings, probes=probes, cancel=cancel, run="original")
    else:
        items = generate_pair(pipe, settings, sail, probes=probes, cancel=cancel, run_original=compare)
    not_needed = False
    with closing(items):
        for item in items:
            if deferred is not None and isinstance(item, StepRecord):
                deferred.tag(item)
            if check_noise is not None and isinstance(item, GenerationResult) and (item.run == "original" or not_needed):
                found = check_noise(item)
                if found is not None:
                    yield found
            yield item
            if isinstance(item, SailResult) and sail_kept_seed(pipe, settings, item):
                not_needed = True
                yield SAIL_NOT_NEEDED
            if not_needed and isinstance(item, GenerationResult):
                break  # the one run is done: skip sampling the same noise again
    if deferred is not None:
        yield from deferred.compute(cancel)


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min``, ``1 h 5 min``: rounded for a progress line."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def in_background(items: Iterator[Any], cancel: threading.Event, name: str = "sailscope-job") -> Iterator[list[Any]]:
    """Consume a core item stream in a worker thread, started at once; the returned iterator yields, in order,
    what arrived since the last ``next``.

    Rendering an update and gradio's transport of it then overlap the next sampling steps instead of pausing
    them (a generator handler is not advanced while its last value is being sent). An exception of the stream
    (``Cancelled`` included) is re-raised here after the items before it; closing the iterator early (client
    gone) sets ``cancel`` and waits for the worker, which stops within one step.
    """
    q: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        try:
            for item in items:
                q.put(item)
        except BaseException as exc:  # handed to the consumer, which re-raises it in the handler's thread
            q.put(_Failure(exc))
        finally:
            q.put(_END)

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    return _Background(q, worker, cancel)


class _Background:
    """The consumer side of :func:`in_background`: an iterator whose ``close`` (also before the first ``next``)
    cancels and joins the worker."""

    def __init__(self, q: queue.SimpleQueue, worker: threading.Thread, cancel: threading.Event) -> None:
        self._q, self._worker, self._cancel = q, worker, cancel
        self._ended = False  # the stream's end or exception was received
        self._pending: list[Any] = []  # taken from the queue by ``wait``, not yet yielded
        self._batches = self._drain()

    def __iter__(self) -> "_Background":
        return self

    def __next__(self) -> list[Any]:
        return next(self._batches)

    def wait(self, timeout: float) -> bool:
        """Whether the stream has something for the next ``next`` within ``timeout`` seconds (nothing is lost)."""
        if not self._pending:
            try:
                self._pending.append(self._q.get(timeout=timeout))
            except queue.Empty:
                return False
        return True

    def close(self) -> None:
        self._batches.close()
        if not self._ended:  # closed early: stop the stream (its worker may still be sampling)
            self._cancel.set()
        self._worker.join()

    def _drain(self) -> Iterator[list[Any]]:
        while True:
            batch, self._pending = self._pending or [self._q.get()], []
            while True:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            out = []
            for item in batch:
                if item is _END or isinstance(item, _Failure):
                    self._ended = True
                if item is _END:
                    if out:
                        yield out
                    return
                if isinstance(item, _Failure):
                    if out:
                        yield out
                    raise item.exc
                out.append(item)
            yield out


@dataclass
class JobView:
    """What a session sees of its job; ``apply`` each streamed core item."""

    settings: GenerationSettings
    sail: SailSettings | None = None
    compare: bool = True
    records: dict[str, list[StepRecord]] = field(default_factory=dict)
    results: dict[str, GenerationResult] = field(default_factory=dict)
    spectra: dict[str, dict[int, dict]] = field(default_factory=dict)  # run -> step -> which -> Spectrum.to_dict()
    sail_steps: list[SailStep] = field(default_factory=list)
    sail_result: SailResult | None = None
    pair: PairResult | None = None
    phase: str = "starting"
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    first_point_seconds: float | None = None
    shown: dict = field(default_factory=dict)  # what the UI last drew (to skip unchanged plots)
    spectra_progress: SpectraProgress | None = None
    sail_not_needed: bool = False  # SAIL kept the seed's noise: one run, one image
    calibrated: dict | None = None  # the settings the detection threshold was measured at (None: uncalibrated)
    mismatch: list[str] = field(default_factory=list)  # how this run's settings differ from them
    references: tuple[str, ...] = ()  # the calibration's ordinary prompts, for the noise check
    noise: NoiseCheck | None = None  # those prompts' step-1 sharpness at this seed's noise (when the verdict was high)

    @property
    def runs(self) -> list[str]:
        if self.sail_not_needed:  # one run: SAIL kept the seed's noise
            return ["original"] if self.compare else ["sail"]
        runs = ["original"] if (self.sail is None or self.compare) else []
        return runs + (["sail"] if self.sail is not None else [])

    def images_done(self) -> bool:
        """Every run of the job has its images."""
        return all(r in self.results and self.results[r].images for r in self.runs)

    def apply(self, item: Any) -> str:
        """Record one core item; returns its kind (``record``, ``result``, ``sail_step``, ``sail_result``, ``pair``)."""
        if isinstance(item, StepRecord):
            self.records.setdefault(item.run, []).append(item)
            if "spectra" in item.extras:
                self.spectra.setdefault(item.run, {})[item.step] = item.extras["spectra"]
            if self.first_point_seconds is None:
                self.first_point_seconds = time.perf_counter() - self.started
            self.phase = item.run
            return "record"
        if isinstance(item, GenerationResult):
            self.results[item.run] = item
            if self.sail_not_needed and item.run == "original":
                # SAIL kept the seed's noise: its run would repeat this one exactly, so it is this one
                self.results["sail"] = replace(item, run="sail")
                self.records["sail"] = [replace(r, run="sail") for r in self.records.get("original", [])]
            self.warnings += [w for w in item.warnings if w not in self.warnings]
            return "result"
        if isinstance(item, SailStep):
            self.sail_steps.append(item)
            self.phase = "sail-search"
            return "sail_step"
        if isinstance(item, SailResult):
            self.sail_result = item
            return "sail_result"
        if isinstance(item, PairResult):
            self.pair = item
            return "pair"
        if item is SAIL_NOT_NEEDED:
            self.sail_not_needed = True
            return "sail_not_needed"
        if isinstance(item, NoiseCheck):
            self.noise = item
            return "noise"
        if isinstance(item, SpectraProgress):
            self.spectra_progress = item
            self.phase = "spectra"
            return "spectra_progress"
        if isinstance(item, tuple) and item and item[0] == "spectra":
            _, run, step, spectra = item
            self.spectra.setdefault(run, {})[step] = spectra
            self.phase = "spectra"
            return "spectra"
        return "other"

    # -- read-outs (formatting of core numbers) ---------------------------------------------
    def progress(self) -> tuple[int, int, str]:
        """(units done, units total, label): SAIL evaluations plus sampling steps of every run."""
        steps = self.settings.steps
        # SAIL's share: one round's evaluations (a re-draw round extends the bar's total while it runs)
        sail_total = 0
        if self.sail is not None:
            sail_total = (self.sail.max_steps + 1) * ((self.sail_steps[-1].round + 1) if self.sail_steps else 1)
        sail_done = sail_total if (self.sail_result is not None) else len(self.sail_steps)
        done = sail_done + sum(len(self.records.get(r, [])) for r in self.runs)
        total = sail_total + steps * len(self.runs)
        if self.phase == "sail-search":
            last = self.sail_steps[-1] if self.sail_steps else None
            label = f"SAIL search: step {last.step if last else 0} of ≤ {self.sail.max_steps}"
            if last is not None and last.round:
                label += f" (round {last.round + 1} of ≤ {self.sail.rounds}: fresh noise)"
        elif self.phase in ("original", "sail"):
            n = len(self.records.get(self.phase, []))
            label = f"{'SAIL' if self.phase == 'sail' else 'original'} run: step {n} of {steps}"
        elif self.phase == "spectra" and self.spectra_progress is not None:
            return self.spectra_status()
        else:
            label = self.phase
        return done, total, label

    def spectra_status(self) -> tuple[int, int, str]:
        """(per-mille done, 1000, label) of the spectra phase: which spectrum, the solver's products and converged
        values, and the time left once one spectrum has finished (their mean duration times those left)."""
        p = self.spectra_progress
        if p is None:
            return 0, 1000, "eigen-spectra: starting"
        done = int(1000 * (p.index + p.fraction()) / max(p.total, 1))
        label = (f"eigen-spectra {p.index + 1} of {p.total} ({'SAIL' if p.run == 'sail' else 'original'} run, "
                 f"step {p.step}, {WHICH_LABELS.get(p.which, p.which)})")
        if p.solver is not None:
            label += f": {p.solver.products} matrix-vector products"
            if p.solver.converged is not None:
                label += f", {p.solver.converged} of {p.solver.wanted} eigenvalues converged"
        eta = p.eta()
        label += f" · about {_duration(eta)} left" if eta is not None else " · time left known after the first spectrum"
        return done, 1000, label

    def step1(self, run: str) -> tuple[float | None, float | None]:
        """(step-1 sharpness, step-1 Wen) of image 0 of a run, as core recorded them."""
        recs = self.records.get(run) or []
        if not recs:
            return None, None
        r = recs[0]
        return (r.sharpness[0] if r.sharpness else None), (r.wen[0] if r.wen else None)

    def verdict(self, run: str, threshold: float | None) -> str:
        """``core.detect.verdict`` of a run: the noise check belongs to the seed's own noise (the original run)."""
        s1, _ = self.step1(run)
        seeds_noise = run == "original" or self.sail_not_needed  # the SAIL run starts elsewhere
        return verdict(s1, threshold, mismatch=self.mismatch, noise=self.noise if seeds_noise else None)

    def sail_trace(self) -> list[dict]:
        """SAIL loss rows ``{"step", "candidate", "loss", "round"}`` from core's per-step trace."""
        rows = []
        for s in self.sail_steps:
            for cand, loss in enumerate(s.loss):
                if loss is not None:
                    rows.append({"step": s.step, "candidate": cand, "loss": loss, "round": s.round})
        return rows

    def sail_threshold(self) -> float | None:
        if self.sail_result is not None:
            return self.sail_result.threshold
        return self.sail_steps[-1].threshold if self.sail_steps else None

    def sail_trigger(self) -> float | None:
        """The resolved trigger (known once SAIL has finished), None before or when it equals the threshold."""
        return self.sail_result.trigger if self.sail_result is not None else None

    def spectrum_steps(self, run: str) -> list[int]:
        return sorted(self.spectra.get(run, {}))

    def spectrum_for(self, run: str, step: int | None) -> tuple[int | None, dict | None]:
        """The spectra of ``run`` at the computed step nearest to ``step``."""
        steps = self.spectrum_steps(run)
        if not steps:
            return None, None
        chosen = steps[0] if step is None else min(steps, key=lambda s: (abs(s - step), s))
        return chosen, self.spectra[run][chosen]

    def report(self, model_info: Any = None, threshold: tuple[float | None, str] | None = None) -> dict:
        """The JSON report: settings, model, per-run core reports, SAIL report, risk, files."""
        thr, src = threshold or (None, "")
        out: dict[str, Any] = {
            "app": "sailscope",
            "model": model_info.__dict__ if model_info is not None and hasattr(model_info, "__dict__") else model_info,
            "settings": self.settings.to_dict(),
            "detection": {"threshold": thr, "threshold_source": src, "calibrated_settings": self.calibrated,
                          "settings_mismatch": list(self.mismatch), "runs": {}},
            "runs": {run: res.report() for run, res in self.results.items()},
            "sail": self.sail_result.report() if self.sail_result is not None else None,
            "sail_settings": self.sail.to_dict() if self.sail is not None else None,
            "sail_not_needed": self.sail_not_needed,
            "spectra": {run: {str(k): v for k, v in steps.items()} for run, steps in self.spectra.items()},
            "warnings": self.warnings,
            "files": dict(self.files),
            "first_point_seconds": self.first_point_seconds,
        }
        for run in self.results:
            s1, w1 = self.step1(run)
            out["detection"]["runs"][run] = {"step1_sharpness": s1, "step1_wen": w1, "risk": self.verdict(run, thr)}
        out["detection"]["noise_check"] = self.noise.to_dict() if self.noise is not None else None
        return out

    def infotext_extra(self, run: str, model_info: Any, threshold: tuple[float | None, str]) -> dict:
        """The run's infotext entries (core/infotext.py's keys) besides the generation settings: no local paths;
        a SAIL image records the command that re-derives it (SAIL is deterministic given seed and settings)."""
        s1, w1 = self.step1(run)
        thr, src = threshold
        risk = self.verdict(run, thr) if s1 is not None else None
        extra: dict[str, Any] = {"Model": getattr(model_info, "name", None), **infotext.fields(
            run=run, sharpness=s1, wen=w1, risk=risk,
            detection_threshold=f"{thr:.4g} ({src})" if thr is not None else None,
        )}
        if self.sail is not None:
            if self.sail_result is not None and run == "sail":
                extra.update(infotext_fields(self.sail_result))
                extra.update(infotext.fields(reproduce=self.reproduce_command()))
                if self.sail_not_needed:
                    extra.update(infotext.fields(status="SAIL not needed: this seed's start is already flat "
                                                        "(its noise kept, one image)"))
            else:
                sail = self.sail
                extra.update(infotext.fields(
                    sail="on" if run == "sail" else "off", objective=sail.objective, threshold=self.sail_threshold(),
                    lr=sail.lr, max_steps=sail.max_steps, candidates=sail.candidates, rounds=sail.rounds,
                    sphere=sail.sphere,
                ))
        return extra

    def reproduce_command(self) -> str | None:
        """``sailscope generate`` options that re-derive the SAIL image: the seed, the sampling settings and SAIL's
        resolved settings (threshold and trigger as numbers, so a later calibration cannot change the result)."""
        r, s = self.sail_result, self.settings
        if r is None:
            return None
        size = f" --size {s.width}x{s.height}" if s.width and s.height else ""
        trigger = "none" if r.trigger is None else repr(float(r.trigger))  # shortest exact form
        opts = r.settings
        return (f"sailscope generate --seed {s.seed} --steps {s.steps} --guidance {s.guidance:g} "
                f"--scheduler {s.scheduler}{size} --sail --sail-objective {r.objective} "
                f"--sail-threshold {float(r.threshold)!r} --sail-trigger {trigger} --sail-alpha {float(r.alpha)!r} "
                f"--sail-max-steps {opts.max_steps} --sail-candidates {opts.candidates} --sail-rounds {opts.rounds} "
                f"--sail-lr {opts.lr:g}" + ("" if opts.sphere else " --sail-no-sphere")
                + " (plus --model and --prompt)")
