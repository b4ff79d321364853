"""Per-model thresholds: SAIL's acceptance threshold and the step-1 sharpness detection threshold.

A threshold is model-specific (docs/math.md §4): the SAIL objective and the step-1 sharpness have different
scales for different models, resolutions and schedules. Calibration measures, at each seed's own ``x_T``
(no optimization), the two terms of both SAIL objectives and the step-1 sharpness ``‖HΔ sΔ‖²`` over
non-memorized prompts × seeds, and stores the raw values. Thresholds are quantiles of those values:

* SAIL: ``quantile_q(first_term + α · prior_term)`` for the objective, α and δ in use (any α works from the
  same record; the paper objective needs the δ it was measured with). Two levels: the *trigger*
  ``q = 0.9`` (a start below it is left alone, so about 90 % of non-memorized prompts are untouched) and the
  *threshold* ``q = 0.5`` that a start above the trigger is optimized down to (as flat as the median
  non-memorized start). A single q0.9 level stopped the search too early to change demo-model copies.
* α of the paper objective (unless set): ``median(first term) / median(prior)``, so that at a typical
  non-memorized start the prior and the sharpness weigh the same. The first term's scale differs by orders
  of magnitude between models; a fixed α would let the prior's seed-to-seed fluctuation
  (``α·sqrt(2d)``) decide acceptance (measured on the demo model: α = 1e-3 gives a prior of 1.09 ± 0.045
  against a first term of 1e-4 – 6e-3).
* detection: ``quantile_0.99`` of step-1 sharpness (about 1 % false positives on non-memorized prompts).

Where thresholds come from, in order (``threshold="auto"``): the user's calibration file
(``$SAILSCOPE_HOME/calibration.json``, default ``~/.config/sailscope/``), a ``sail_calibration.json`` shipped
in the model's folder, then the paper's published values (reference objective only, SD 1.4: 8.2 with α = 0.05;
SD 2.0: 5.0 with α = 0.01, the middle of the studied 4–6). Otherwise a clear error asks to calibrate.
Every resolved threshold comes with a one-line description of its source.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from sailscope.core.demo.data import (
    SUFFIX_LABELS, CaptionSpec, caption_number, dataset_from_config, get_design, random_caption_spec, untrained_number,
)
from sailscope.core.detect import NOISE_CHECK_PROMPTS
from sailscope.core.errors import UserInputError
from sailscope.core.io.files import write_text_atomic
from sailscope.core.metrics import DEFAULT_FD_STEP, sharpness
from sailscope.core.io.prompts import prompts_of, read_heldout, read_memorized, read_prompt_file
from sailscope.core.models import DEMO_MODEL_DIR, PACKAGE_ROOT
from sailscope.core.sampling import GenerationSettings, encode, initial_noise, output_size, seed_generators
from sailscope.core.score import DiffusersScoreModel

CALIBRATION_FILE = "calibration.json"
MODEL_FOLDER_FILE = "sail_calibration.json"
DEFAULT_QUANTILE = 0.5  # SAIL threshold "auto": the flatness of a typical non-memorized start
TRIGGER_QUANTILE = 0.9  # SAIL trigger "auto": starts below this are left alone
DETECTION_QUANTILE = 0.99
FORMAT_VERSION = 1
CALIBRATED_GUIDANCE = 7.5  # GenerationSettings' default: what every record so far was meant for
OPTIONAL_FIELDS = ("guidance", "width", "height")

# Published thresholds (paper App. D.2 / the authors' code): reference objective only, in its units.
# name (hub id basename) -> (prediction type, threshold, alpha it was used with)
PUBLISHED: dict[str, tuple[str, float, float]] = {
    "stable-diffusion-v1-4": ("epsilon", 8.2, 0.05),
    "stable-diffusion-2": ("v_prediction", 5.0, 0.01),
}


# ----------------------------------------------------------------------------------------------
# Where calibrations live, and model identity
# ----------------------------------------------------------------------------------------------
def settings_dir() -> Path:
    """``$SAILSCOPE_HOME``, else ``$XDG_CONFIG_HOME/sailscope``, else ``~/.config/sailscope``."""
    if os.environ.get("SAILSCOPE_HOME"):
        return Path(os.environ["SAILSCOPE_HOME"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "sailscope"


def calibration_path() -> Path:
    return settings_dir() / CALIBRATION_FILE


def model_name(pipe: Any) -> str:
    info = getattr(pipe, "sailscope_info", None)
    if info is not None:
        return str(info.name)
    return str(getattr(pipe, "name_or_path", "") or pipe.config.get("_name_or_path", "") or "unnamed")


def model_folder(pipe: Any) -> Path | None:
    info = getattr(pipe, "sailscope_info", None)
    path = Path(str(info.path)) if info is not None else Path(str(getattr(pipe, "name_or_path", "") or ""))
    return path if str(path) not in ("", ".") and path.is_dir() else None


def model_fingerprint(pipe: Any) -> str:
    """Short hash of the UNet config, prediction type, a few weight values and the LoRAs applied (their file hashes
    and scales): it changes when the model does.

    The config's private entries (``_name_or_path``, ``_diffusers_version``, ...) are left out: a model folder
    moved or cloned elsewhere, or loaded by another diffusers release, is still the same model.
    """
    h = hashlib.sha256()
    config = {k: v for k, v in dict(pipe.unet.config).items() if not str(k).startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(str(pipe.scheduler.config.get("prediction_type", "epsilon")).encode())
    params = [p for name, p in pipe.unet.named_parameters() if "lora_" not in name]  # the base model's weights
    with torch.no_grad():
        for p in params[:4] + params[-2:]:
            flat = p.detach().reshape(-1).float().cpu()
            h.update(np.asarray([float(flat.sum()), *flat[:16].tolist()], dtype=np.float32).round(5).tobytes())
    for lora in getattr(getattr(pipe, "sailscope_info", None), "loras", ()):  # a LoRA changes the model
        h.update(f"{lora['sha256']}:{float(lora['scale']):.6g}".encode())
    return h.hexdigest()[:16]


def model_key(pipe: Any) -> str:
    """``name#fingerprint``: the calibration of a retrained model never silently applies."""
    return f"{model_name(pipe)}#{model_fingerprint(pipe)}"


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Raw per-(prompt, seed) values measured at each seed's ``x_T``; thresholds are computed from them."""

    key: str
    name: str
    created: str
    prompts: list[str]
    seeds: list[int]
    scheduler: str
    steps: int
    t: float
    sigma: float
    values: dict  # {"paper": {"delta", "sharpness", "prior"}, "reference": {"sharpness", "prior"}, "detection": {"sharpness"}}
    # the generation settings the thresholds are meant for (records written before these fields existed were
    # measured at GenerationSettings' default guidance and the model's native size: None = native size)
    guidance: float = CALIBRATED_GUIDANCE
    width: int | None = None
    height: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d or k not in OPTIONAL_FIELDS})

    def settings(self, pipe: Any = None) -> dict:
        """The generation settings this record was measured at: scheduler, steps, guidance, width, height (the
        size filled in from ``pipe``'s native size when the record leaves it to the model)."""
        width, height = self.width, self.height
        if pipe is not None and (width is None or height is None):
            native = pipe.unet.config.sample_size * pipe.vae_scale_factor
            width, height = width or native, height or native
        return {"scheduler": self.scheduler, "steps": int(self.steps), "guidance": float(self.guidance),
                "width": width, "height": height}

    @property
    def n(self) -> int:
        return len(self.values.get("detection", {}).get("sharpness", []))

    def sail_threshold(self, objective: str, alpha: float, *, delta: float | None = None,
                       quantile: float = DEFAULT_QUANTILE) -> float:
        v = self.values.get(objective)
        if not v:
            raise UserInputError(f"the calibration of {self.name} has no values for the {objective!r} objective; recalibrate")
        if objective == "paper" and delta is not None and not math.isclose(float(v["delta"]), float(delta), rel_tol=1e-6):
            raise UserInputError(
                f"the calibration of {self.name} measured the paper objective with delta={v['delta']}, "
                f"not {delta}; recalibrate (same dtype, or --delta {delta}) or pass a threshold"
            )
        loss = np.asarray(v["sharpness"], float) + alpha * np.asarray(v["prior"], float)
        return float(np.quantile(loss, quantile))

    def paper_alpha(self) -> float:
        """α for the paper objective: the prior term equals the median first term at a non-memorized start."""
        v = self.values["paper"]
        return float(np.median(v["sharpness"]) / max(float(np.median(v["prior"])), 1e-30))

    def detection_threshold(self, quantile: float = DETECTION_QUANTILE) -> float:
        return float(np.quantile(np.asarray(self.values["detection"]["sharpness"], float), quantile))


def load_calibrations(path: str | os.PathLike | None = None) -> dict[str, Calibration]:
    """All records of a calibration file (empty when it does not exist)."""
    p = Path(path) if path is not None else calibration_path()
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"calibration file {p} is not valid JSON ({exc}); fix or delete it") from None
    return {k: Calibration.from_dict(v) for k, v in data.get("models", {}).items()}


def save_calibration(record: Calibration, path: str | os.PathLike | None = None) -> Path:
    """Add/replace ``record`` in the calibration file (atomic write); returns the file's path."""
    p = Path(path) if path is not None else calibration_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    records = load_calibrations(p)
    records[record.key] = record
    payload = {"version": FORMAT_VERSION, "models": {k: r.to_dict() for k, r in records.items()}}
    return write_text_atomic(p, json.dumps(payload, indent=1))


def find_calibration(pipe: Any) -> tuple[Calibration, Path] | None:
    """The user's record for this model, else one shipped in the model folder."""
    key = model_key(pipe)
    user = calibration_path()
    rec = load_calibrations(user).get(key)
    if rec is not None:
        return rec, user
    folder = model_folder(pipe)
    if folder is not None and (folder / MODEL_FOLDER_FILE).is_file():
        shipped = folder / MODEL_FOLDER_FILE
        records = load_calibrations(shipped)
        if key in records:
            return records[key], shipped
    return None


# ----------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------
def published_threshold(pipe: Any, objective: str, alpha: float) -> tuple[float, str] | None:
    name = Path(str(getattr(pipe, "name_or_path", "") or model_name(pipe)).rstrip("/")).name
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    entry = PUBLISHED.get(name)
    if entry is None or objective != "reference" or entry[0] != pred or not math.isclose(alpha, entry[2]):
        return None
    return entry[1], f"paper default for {name} (reference objective, alpha={entry[2]}); not calibrated here"


def resolve_alpha(pipe: Any, sail: Any) -> tuple[float, str]:
    """``(α, where it came from)``: the user's, the calibrated one (paper objective), or the default."""
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    if sail.alpha is not None:
        return float(sail.alpha), "user setting"
    if sail.objective == "paper":
        found = find_calibration(pipe)
        if found is not None:
            return found[0].paper_alpha(), f"calibrated (median first term / median prior) from {found[1]}"
        return sail.alpha_for(pred), "default (not calibrated)"
    return sail.alpha_for(pred), "authors' default"


def resolve_threshold(pipe: Any, sail: Any, *, alpha: float, delta: float | None = None,
                      quantile: float = DEFAULT_QUANTILE) -> tuple[float, str]:
    """``(threshold, where it came from)`` for :class:`~sailscope.core.mitigation.SailSettings` on this model.

    ``delta``: the paper objective's resolved relative step (default: ``sail.delta_for(unet dtype)``).
    """
    if not isinstance(sail.threshold, str):
        return float(sail.threshold), "user setting"
    level = _calibrated_level(pipe, sail, alpha=alpha, delta=delta, quantile=quantile)
    if level is not None:
        return level
    pub = published_threshold(pipe, sail.objective, alpha)
    if pub is not None:
        return pub
    raise UserInputError(
        f"no SAIL threshold for model {model_name(pipe)!r} ({sail.objective} objective): run "
        f"`sailscope calibrate --model ...` once, or pass a number as the threshold"
    )


def _calibrated_level(pipe: Any, sail: Any, *, alpha: float, delta: float | None,
                      quantile: float) -> tuple[float, str] | None:
    """``(quantile of the SAIL loss, its source)`` from this model's calibration, or None without one."""
    if delta is None:
        delta = sail.delta_for(pipe.unet.dtype)
    found = find_calibration(pipe)
    if found is None:
        return None
    rec, path = found
    value = rec.sail_threshold(sail.objective, alpha, delta=delta, quantile=quantile)
    return value, (f"calibrated: q{quantile:g} of {rec.n} non-memorized prompt×seed values "
                   f"({sail.objective}, alpha={alpha:g}) from {path} [{rec.created[:10]}]")


def resolve_trigger(pipe: Any, sail: Any, *, alpha: float, delta: float | None = None,
                    quantile: float = TRIGGER_QUANTILE) -> tuple[float | None, str]:
    """``(trigger, where it came from)``: starts whose loss is ``≤ max(trigger, threshold)`` stay unchanged.

    ``"auto"``: the calibrated ``quantile`` when this model has a calibration, else the threshold (one level,
    as in the paper); ``None``: the threshold.
    """
    trig = sail.trigger
    if trig is None:
        return None, "same as the threshold"
    if not isinstance(trig, str):
        return float(trig), "user setting"
    level = _calibrated_level(pipe, sail, alpha=alpha, delta=delta, quantile=quantile)
    return level if level is not None else (None, "same as the threshold (no calibration for this model)")


@dataclass(frozen=True)
class DetectionCalibration:
    """The detection threshold of a model with what the user needs to judge it, free of local paths."""

    threshold: float
    quantile: float
    n: int  # calibration values (non-memorized prompt × seed)
    where: str  # "shipped with the model" or "your calibration file"
    created: str  # date of the calibration (YYYY-MM-DD)
    settings: dict  # Calibration.settings(pipe): scheduler, steps, guidance, width, height
    reference_prompts: tuple[str, ...] = ()  # ordinary prompts for a noise check (core.detect.noise_check)

    def source(self) -> str:
        """``q0.99 of 192 non-memorized values (shipped with the model, 2026-11-24)``: no path."""
        return f"q{self.quantile:g} of {self.n} non-memorized values ({self.where}, {self.created})"


def detection_calibration(pipe: Any, quantile: float = DETECTION_QUANTILE) -> DetectionCalibration | None:
    """This model's detection threshold with its provenance and calibrated settings, or None if uncalibrated."""
    found = find_calibration(pipe)
    if found is None:
        return None
    rec, path = found
    where = "your calibration file" if Path(path) == calibration_path() else "shipped with the model"
    return DetectionCalibration(rec.detection_threshold(quantile), quantile, rec.n, where, rec.created[:10],
                                rec.settings(pipe), tuple(rec.prompts[:NOISE_CHECK_PROMPTS]))


def settings_mismatch(calibrated: Mapping[str, Any], settings: Any, pipe: Any = None) -> list[str]:
    """How a run's settings differ from those a calibration was measured at, in words (empty: they match).

    ``calibrated``: :meth:`Calibration.settings`; ``settings``: a ``GenerationSettings`` (its size filled in from
    ``pipe``'s native size when it leaves it to the model). Steps, scheduler and size change the step-1 latent's
    noise level and shape, so the step-1 sharpness scale; guidance changes whether the final image copies."""
    out: list[str] = []
    if settings.scheduler != calibrated.get("scheduler"):
        out.append(f"scheduler {settings.scheduler} (calibrated: {calibrated.get('scheduler')})")
    if int(settings.steps) != int(calibrated.get("steps", 0)):
        out.append(f"{settings.steps} steps (calibrated: {calibrated.get('steps')})")
    if not math.isclose(float(settings.guidance), float(calibrated.get("guidance", CALIBRATED_GUIDANCE)), rel_tol=1e-6):
        out.append(f"guidance {float(settings.guidance):g} (calibrated: {float(calibrated.get('guidance')):g})")
    width, height = settings.width, settings.height
    if pipe is not None:
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        width, height = width or native, height or native
    cw, ch = calibrated.get("width"), calibrated.get("height")
    if None not in (width, height, cw, ch) and (int(width), int(height)) != (int(cw), int(ch)):
        out.append(f"size {width}×{height} (calibrated: {cw}×{ch})")
    return out


def detection_threshold(pipe: Any, quantile: float = DETECTION_QUANTILE) -> tuple[float, str] | None:
    """Step-1 sharpness ``‖HΔ sΔ‖²`` threshold (score space, fd HVP) for this model, or None if uncalibrated."""
    found = find_calibration(pipe)
    if found is None:
        return None
    rec, path = found
    return rec.detection_threshold(quantile), f"calibrated: q{quantile:g} of {rec.n} values from {path}"


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------
class _ReuseLast:
    """Wraps an eps pair; a call with the same input as the previous one returns the cached output."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.last = fn, None

    def __call__(self, x: torch.Tensor):
        if self.last is not None and self.last[0].shape == x.shape and torch.equal(self.last[0], x):
            return self.last[1]
        out = self.fn(x)
        self.last = (x.detach().clone(), out)
        return out


def measure(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Iterable[int],
    *,
    scheduler: str = "ddim",
    steps: int = 50,
    delta: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Both objectives' terms and the step-1 sharpness at each seed's ``x_T``, for every prompt × seed."""
    # mitigation imports this module (its thresholds come from here), so its objectives are imported here
    from sailscope.core.mitigation import (SailSettings, diffusers_eps_pair, first_step, paper_objective,
                                           reference_objective)

    prompts = [p for p in (str(p).strip() for p in prompts) if p]
    seeds = [int(s) for s in seeds]
    if not prompts:
        raise UserInputError("calibration needs at least one non-memorized prompt")
    if not seeds:
        raise UserInputError("calibration needs at least one seed")
    delta = SailSettings().delta_for(pipe.unet.dtype) if delta is None else float(delta)
    base = GenerationSettings(prompt=prompts[0], seed=seeds[0], steps=steps, scheduler=scheduler)
    first = first_step(pipe, base)
    device = pipe._execution_device
    model = DiffusersScoreModel.from_pipeline(pipe)
    vals: dict = {"paper": {"delta": delta, "sharpness": [], "prior": []},
                  "reference": {"sharpness": [], "prior": []}, "detection": {"sharpness": []}}
    one = GenerationSettings(prompt=prompts[0], seed=0, steps=steps, scheduler=scheduler)
    z = torch.cat([initial_noise(pipe, one, generators=seed_generators(s, 1)) for s in seeds]).to(device)
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            cond, uncond, _ = encode(pipe, GenerationSettings(prompt=prompt, seed=0, steps=steps), device)
            eps_pair = _ReuseLast(diffusers_eps_pair(pipe, first, cond, uncond))  # both objectives start at x
            p = paper_objective(eps_pair, z, sigma=first.sigma, alpha=0.0, delta=delta, scale=first.scale)
            r = reference_objective(eps_pair, z, alpha=0.0, scale=first.scale)
        if delta == DEFAULT_FD_STEP:  # same relative forward difference as the step-1 record: identical numbers
            sh = p.sharpness
        else:
            b = z.shape[0]
            gs = model.guided(first.t, cond[:1].broadcast(b), uncond[:1].broadcast(b),
                              abar=first.abar)
            sh = sharpness(gs, first.scale * z, method="fd").value
        vals["paper"]["sharpness"] += p.sharpness.tolist(); vals["paper"]["prior"] += p.prior.tolist()
        vals["reference"]["sharpness"] += r.sharpness.tolist(); vals["reference"]["prior"] += r.prior.tolist()
        vals["detection"]["sharpness"] += sh.tolist()
        if progress is not None:
            progress(i + 1, len(prompts))
    return Calibration(
        key=model_key(pipe), name=model_name(pipe), created=_dt.datetime.now(_dt.timezone.utc).isoformat(),
        prompts=list(prompts), seeds=seeds, scheduler=scheduler, steps=steps, t=float(first.t),
        sigma=first.sigma, values=vals, guidance=base.guidance, width=output_size(pipe, base)[1],
        height=output_size(pipe, base)[0],
    )


__all__ = [
    "Calibration", "measure", "save_calibration", "load_calibrations", "find_calibration", "resolve_threshold",
    "resolve_alpha",
    "detection_threshold", "detection_calibration", "DetectionCalibration", "settings_mismatch", "published_threshold", "model_key", "model_fingerprint", "settings_dir",
    "calibration_path", "DEFAULT_QUANTILE", "TRIGGER_QUANTILE", "resolve_trigger", "DETECTION_QUANTILE", "PUBLISHED",
]


def demo_calibration_prompts(n: int = 48, model_dir: str | Path | None = None, seed: int = 99) -> list[str]:
    """Fresh demo-grammar captions: not in the training set (memorized or general) and not in the held-out evaluation
    set (no in-sample tuning). A general training caption comes with one image only, but the model was fitted to it,
    so it is not a fresh prompt. When the model's data design suffixes general captions (design v3), the same
    share of these captions carries a memorized-style suffix with a number no training caption has, so the
    threshold is calibrated on prompts like those users type."""
    folder = Path(model_dir) if model_dir is not None else DEMO_MODEL_DIR
    exclude: set[str] = set()
    if (folder / "heldout_prompts.txt").is_file():
        exclude |= set(read_heldout(folder))
    if (folder / "memorized.jsonl").is_file():
        exclude |= {row["caption"] for row in read_memorized(folder)}
    rate, numbers = 0.0, set()
    if (folder / "train_info.json").is_file():  # the training set is rebuilt from its recorded config (seconds)
        config = json.loads((folder / "train_info.json").read_text())["config"]
        captions = dataset_from_config(config).captions
        exclude |= set(captions)
        rate = get_design(config.get("data_design", "v1")).general_suffix_rate
        numbers = {caption_number(c) for c in captions}
    rng, suffix_rng = np.random.default_rng([seed, 7]), np.random.default_rng([seed, 8])
    out: list[str] = []
    while len(out) < n:
        spec = random_caption_spec(rng)
        if suffix_rng.random() < rate:
            number = untrained_number(suffix_rng, numbers)
            label = SUFFIX_LABELS[int(suffix_rng.integers(len(SUFFIX_LABELS)))]
            spec = CaptionSpec(spec.phrases, spec.regions, spec.form, f"{label} {number}")
        text = spec.text()
        if text not in exclude and text not in out:
            out.append(text)
    return out


SHIPPED_PROMPTS = PACKAGE_ROOT / "assets" / "prompts" / "calibration_prompts.txt"  # source: assets/prompts/README.md


def default_calibration_prompts(model: str) -> tuple[list[str], str]:
    """Prompts to calibrate ``model`` on when the user gives none, and where they come from: fresh grammar
    captions for the demo model, else the shipped list of generic prompts (assets/prompts/README.md)."""
    if model == "demo":
        return demo_calibration_prompts(), "48 fresh demo-grammar captions"
    prompts = prompts_of(read_prompt_file(SHIPPED_PROMPTS, what="the shipped calibration prompts"))
    return prompts, f"the {len(prompts)} shipped calibration prompts (assets/prompts/README.md)"
