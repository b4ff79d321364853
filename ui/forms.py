"""The views' input values -> validated engine settings. Parsing only: the engine checks the ranges.

:class:`GenerateForm` is the Generate view's one form: a frozen dataclass whose fields are the components'
values. :data:`GENERATE_FIELDS` (its field names, in order) names the components, the event's inputs and the
API's parameters; the field defaults are the components' initial values. Errors are ``UserInputError`` whose
message names the field.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any, Sequence

from sailscope.core.errors import UserInputError
from sailscope.core.io.prompts import PromptEntry, parse_prompts, read_prompt_file
from sailscope.core.mitigation import SailSettings
from sailscope.core.mitigation.defaults import model_sail_defaults
from sailscope.core.sampling import GenerationSettings
from sailscope.ui.jobs import SpectrumRequest

SHARPNESS_CHOICES = {"step 1 (detection)": "first", "every step": "all", "none": "none"}
MAX_PROMPT_CHARS = 4000
MAX_BATCH_COUNT = 16  # images per Generate click; each has its own check, SAIL search, files and report
_SAIL = SailSettings()  # the advanced panel starts at the engine's defaults


def whole_number(value: Any, name: str, allow_none: bool = False) -> int | None:
    """A component value that must be an integer (``2.0`` is fine, ``1.5`` and ``"x"`` are not)."""
    if value is None or value == "":
        if allow_none:
            return None
        raise UserInputError(f"{name} is empty")
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # exact: a float would round seeds above 2^53
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a whole number, got {value!r}") from None
    if f != f or f in (float("inf"), float("-inf")) or not f.is_integer():
        raise UserInputError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a number, got {value!r}") from None


def parse_steps(text: str | None, total: int, name: str = "spectrum steps") -> frozenset[int]:
    """``"1, 10, 50"`` -> {1, 10, 50}; empty -> none. Errors name the field."""
    text = (text or "").strip()
    if not text or text.lower() == "none":
        return frozenset()
    out = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise UserInputError(f"{name} must be step numbers separated by commas, got {part!r}") from None
        if not 1 <= value <= total:
            raise UserInputError(f"{name}: step {value} is outside 1..{total}")
        out.add(value)
    return frozenset(out)


# ----------------------------------------------------------------------------------------------
# Generate
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateForm:
    """The Generate view's values as the components give them (numbers may be floats, text or None).

    The field order is the event's input order and the ``/generate`` API's parameter order.
    """

    prompt: str = ""
    negative: str = ""
    seed: Any = 0  # -1 = random
    steps: Any = 50
    guidance: Any = 7.5
    width: Any = 0  # 0 = the model's default size
    height: Any = 0
    scheduler: str = "ddim"
    sharpness_at: str = "step 1 (detection)"  # a SHARPNESS_CHOICES label
    sail_on: bool = False
    sail_objective: str = _SAIL.objective
    sail_threshold: Any = "auto"  # a number, or auto
    sail_max_steps: Any = _SAIL.max_steps
    sail_candidates: Any = _SAIL.candidates
    compare: bool = True  # run the original next to SAIL
    spectrum_steps: str = "1"  # comma-separated steps, empty = none
    spectrum_method: str = "arnoldi"
    spectrum_k: Any = 8
    sail_trigger: Any = "auto"  # a number, auto or none
    sail_lr: Any = _SAIL.lr
    sail_rounds: Any = _SAIL.rounds
    spectra_on: bool = False  # eigen-spectra are opt-in: they take far longer than the image
    batch_count: Any = 1  # images one after another at seeds seed, seed+1, … (A1111's batch count)

    @classmethod
    def for_model(cls, pipe: Any) -> GenerateForm:
        """The form's initial values for a loaded model: the SAIL panel at the model's shipped SAIL defaults
        (``core.mitigation.defaults``; the global ones when it ships none)."""
        defaults, _ = model_sail_defaults(pipe) if pipe is not None else ({}, None)
        panel = {"objective": "sail_objective", "max_steps": "sail_max_steps", "candidates": "sail_candidates",
                 "lr": "sail_lr", "rounds": "sail_rounds"}
        return cls(**{panel[k]: v for k, v in defaults.items() if k in panel})

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> GenerateForm:
        """The form from component values in :data:`GENERATE_FIELDS` order."""
        if len(values) != len(GENERATE_FIELDS):
            raise TypeError(f"GenerateForm takes {len(GENERATE_FIELDS)} values, got {len(values)}")
        return cls(**dict(zip(GENERATE_FIELDS, values)))

    def settings(self) -> GenerationSettings:
        """Validated :class:`GenerationSettings` (a seed of -1 draws a random one)."""
        prompt = self.prompt or ""
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UserInputError(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        seed = whole_number(self.seed, "seed")
        if seed == -1:
            seed = random.randrange(2**32)
        width = whole_number(self.width, "width", True) or None
        height = whole_number(self.height, "height", True) or None
        return GenerationSettings(
            prompt=prompt, negative_prompt=self.negative or "", seed=seed, steps=whole_number(self.steps, "steps"),
            guidance=number(self.guidance, "guidance"), scheduler=self.scheduler, width=width, height=height,
            sharpness_at=SHARPNESS_CHOICES.get(self.sharpness_at, self.sharpness_at or "first"),
        )

    def batch_seeds(self, seed: int) -> list[int]:
        """The batch's seeds from the resolved first ``seed``: ``seed, seed+1, …`` (A1111's convention), one per
        image of the batch count (1–:data:`MAX_BATCH_COUNT`)."""
        count = whole_number(self.batch_count, "batch count")
        if not 1 <= count <= MAX_BATCH_COUNT:
            raise UserInputError(f"batch count must be an integer in [1, {MAX_BATCH_COUNT}], got {count}")
        return [seed + i for i in range(count)]

    def sail_settings(self) -> SailSettings | None:
        """SAIL's settings from the advanced panel (None when SAIL is off); ``trigger``: a number, ``auto`` or
        ``none`` (= the threshold)."""
        if not self.sail_on:
            return None
        text = str(self.sail_threshold if self.sail_threshold is not None else "auto").strip().lower() or "auto"
        threshold: float | str = "auto" if text == "auto" else number(text, "SAIL threshold")
        ttext = str(self.sail_trigger if self.sail_trigger is not None else "auto").strip().lower() or "auto"
        trigger: float | str | None = ttext if ttext == "auto" else None if ttext == "none" else number(ttext, "SAIL trigger")
        extra = {} if self.sail_lr in (None, "") else {"lr": number(self.sail_lr, "SAIL learning rate")}
        if self.sail_rounds not in (None, ""):
            extra["rounds"] = whole_number(self.sail_rounds, "SAIL rounds")
        return SailSettings(objective=self.sail_objective, threshold=threshold, trigger=trigger,
                            max_steps=whole_number(self.sail_max_steps, "SAIL max steps"),
                            candidates=whole_number(self.sail_candidates, "SAIL candidates"), **extra)

    def spectrum(self, total_steps: int) -> SpectrumRequest | None:
        """The spectra asked for (steps within ``1..total_steps``), None when they are off or no step is listed."""
        if not self.spectra_on:
            return None
        steps = parse_steps(self.spectrum_steps, total_steps)
        if not steps:
            return None
        k = whole_number(self.spectrum_k, "spectrum k")
        if not 1 <= k <= 256:
            raise UserInputError(f"spectrum k must be an integer in [1, 256], got {k}")
        return SpectrumRequest(steps=steps, k=k, method=self.spectrum_method)


GENERATE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(GenerateForm))


# ----------------------------------------------------------------------------------------------
# Compare prompts and Audit
# ----------------------------------------------------------------------------------------------
def compare_items(prompts_text: str, seeds_text: str, limit: int) -> list[tuple[str, int]]:
    """Prompts (one per line) × seeds (comma-separated, default 0), at most ``limit`` pairs."""
    prompts = [p.strip() for p in (prompts_text or "").splitlines() if p.strip()]
    if not prompts:
        raise UserInputError("enter at least one prompt (one per line)")
    seeds = [whole_number(s, "seed") for s in (seeds_text or "0").replace(";", ",").split(",") if s.strip()] or [0]
    items = [(p, s) for p in prompts for s in seeds]
    if len(items) > limit:
        raise UserInputError(f"{len(items)} prompt × seed combinations; the limit is {limit}")
    return items


def read_prompt_list(text: str | None, upload: Any, max_bytes: int, max_prompts: int) -> list[PromptEntry]:
    """Prompts from the text box and an optional upload (:mod:`sailscope.core.io.prompts` formats), in order,
    without duplicates: ``(prompt, memorized-or-None)`` pairs."""
    entries = parse_prompts(text or "", ".txt", source="the text box")
    path = getattr(upload, "name", upload) if upload is not None else None
    if path:
        entries += read_prompt_file(path, what="the uploaded file", max_bytes=max_bytes)
    seen: set[str] = set()
    out = [e for e in entries if not (e.prompt in seen or seen.add(e.prompt))]
    if not out:
        raise UserInputError("no prompts: paste them (one per line) or upload a .txt/.csv/.jsonl file")
    if len(out) > max_prompts:
        raise UserInputError(f"{len(out)} prompts; the limit is {max_prompts} per audit")
    return out


def marked_prompts(text: str | None) -> set[str]:
    """The "known memorized" box: one prompt per line."""
    return {p.strip() for p in (text or "").splitlines() if p.strip()}
