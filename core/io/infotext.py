"""The infotext keys SAIL Scope writes into PNGs and reads back: one registry, one meaning per key.

The CLI, the app and the A1111/Forge script all write these keys into A1111's PNG ``parameters`` text, and
A1111's *PNG Info → Send to txt2img* (the script's ``infotext_fields``) and the app read them back through
:func:`parse_settings`. Settings keys restore a setting; result and metric keys describe one image and are
never pasted into a setting (``SAIL steps`` is the Adam steps SAIL took, ``SAIL max steps`` the cap).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sailscope.core.choices import SCHEDULER_LABELS


@dataclass(frozen=True)
class Key:
    text: str  # as written in the infotext
    meaning: str
    parse: Callable[[str], Any] | None = None  # settings only: text -> value restored on paste


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "on", "1", "yes"):
        return True
    if value in ("false", "off", "0", "no") or value.startswith("off "):
        return False
    raise ValueError(f"not a yes/no value: {text!r}")


def _int(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"not an integer: {text!r}")
    return int(value)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _trigger(text: str) -> float | None:
    return None if str(text).strip().lower() in ("none", "-") else _finite(text)


SETTINGS = {
    "sail": Key("SAIL", "SAIL optimized this image's initial noise (on) or not (off)", _bool),
    "objective": Key("SAIL objective", "reference (the authors' eps-space proxy) or paper (‖HΔsΔ‖² by fd)", str),
    "threshold": Key("SAIL threshold", "SAIL accepts a noise whose loss is <= this", _finite),
    "trigger": Key("SAIL trigger", "a start whose loss is <= this is kept unchanged ('none': no trigger)", _trigger),
    "alpha": Key("SAIL alpha", "weight of the Gaussian prior term in SAIL's loss", _finite),
    "lr": Key("SAIL lr", "Adam learning rate", _finite),
    "max_steps": Key("SAIL max steps", "cap on Adam steps per round", _int),
    "candidates": Key("SAIL candidates", "initial noises optimized per image (the seed's own first)", _int),
    "rounds": Key("SAIL rounds", "rounds of fresh candidates when none reaches the threshold", _int),
    "sphere": Key("SAIL sphere", "Adam steps stay on the sphere of the start's norm", _bool),
}
RESULTS = {
    "steps": Key("SAIL steps", "Adam steps SAIL took for this image"),
    "converged": Key("SAIL converged", "the chosen noise's loss reached the threshold"),
    "start_loss": Key("SAIL start loss", "SAIL's loss at the seed's own noise"),
    "loss": Key("SAIL loss", "SAIL's loss at the chosen noise"),
    "round": Key("SAIL round", "the round the chosen noise comes from (1 = the seed's candidates)"),
    "trigger_overruled": Key("SAIL trigger overruled", "the start was under the trigger but the prompt was not"),
    "sharpness": Key("SAIL Scope step-1 sharpness", "‖HΔ sΔ‖² at this image's first sampling step"),
    "wen": Key("SAIL Scope step-1 Wen", "‖eps_c − eps_u‖ at this image's first sampling step"),
    "original_sharpness": Key("SAIL Scope original step-1 sharpness", "step-1 sharpness at the seed's noise, before SAIL"),
    "original_wen": Key("SAIL Scope original step-1 Wen", "step-1 Wen at the seed's noise, before SAIL"),
    "risk": Key("Memorization risk", "the verdict (core.detect.verdict): high when step-1 sharpness >= the detection "
                                     "threshold, low, or no verdict: uncalibrated (settings differ from the "
                                     "calibration's), sharp-noise (ordinary prompts alarm at this noise too), unknown"),
    "detection_threshold": Key("Detection threshold", "the step-1 sharpness alarm level and where it came from"),
    "threshold_source": Key("SAIL threshold source", "where SAIL's threshold came from (calibration or a setting)"),
    "trigger_source": Key("SAIL trigger source", "where SAIL's trigger came from"),
    "rta_tokens": Key("RTA tokens", "random tokens the RTA baseline added to the prompt"),
    "rta_prompt": Key("RTA prompt", "the prompt the RTA baseline sampled with"),
    "run": Key("SAIL Scope run", "which run of a pair this image is: original or sail"),
    "reproduce": Key("SAIL Scope reproduce", "the command that re-derives this image: SAIL is deterministic given "
                     "the seed and the SAIL settings recorded here (no noise file needed)"),
    "status": Key("SAIL Scope status", "messages: why something was skipped or not available"),
    "stop": Key("SAIL stop", "the search's stop rule (all: every candidate runs its steps, as a pick needs)"),
    "pick": Key("SAIL pick", "which candidate of the search this image is (0 = the seed's own noise)"),
    "pick_start_seed": Key("SAIL pick start seed", "the torch seed of the picked candidate's start noise"),
}
KEYS = {**SETTINGS, **RESULTS}


def text(name: str) -> str:
    """The infotext key of a registry entry."""
    return KEYS[name].text


def format_value(value: Any, digits: int = 6) -> str:
    """Floats with ``digits`` significant digits (``nan`` for non-finite), bools as ``True``/``False``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else "nan"
    return str(value)


def fields(**values: Any) -> dict[str, str]:
    """``{infotext key: text}`` for the given registry names; ``None`` values are left out."""
    return {KEYS[name].text: format_value(v) for name, v in values.items() if v is not None}


def parse_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed infotext (key -> text) -> the SAIL settings it records, by registry name. Keys that are missing
    or unparseable are left out, never raised (a PNG from another tool must not break a paste)."""
    out: dict[str, Any] = {}
    for name, key in SETTINGS.items():
        if key.text not in params:
            continue
        try:
            out[name] = key.parse(str(params[key.text]).strip())
        except (TypeError, ValueError):
            continue
    return out


_PAIR = re.compile(r'\s*([\w ][\w \-/+]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_line(line: str) -> dict[str, str]:
    """A1111's ``Key: value, Key: "quoted, value"`` parameters line -> ``{key: text}``."""
    out = {}
    for m in _PAIR.finditer(line):
        k, v = m.group(1).strip(), m.group(2).strip()
        if v.startswith('"') and v.endswith('"'):
            try:
                v = json.loads(v)
            except ValueError:
                v = v[1:-1]
        out[k] = v
    return out


def parse_png_text(infotext: str) -> dict[str, str]:
    """The whole ``parameters`` text of a PNG: its last line holds the ``Key: value`` pairs."""
    lines = [ln for ln in str(infotext).splitlines() if ln.strip()]
    return parse_line(lines[-1]) if lines else {}


__all__ = ["Key", "SETTINGS", "RESULTS", "KEYS", "text", "format_value", "fields", "parse_settings", "parse_line",
           "parse_png_text", "format_infotext", "strip_paths"]


_PATH = re.compile(r'(?<![\w.])(?:~|[A-Za-z]:)?(?:[\\/][^\\/\s\]\)\[(,;"]+){2,}[\\/]?')


def strip_paths(text: str) -> str:
    """``/home/u/models/demo/sail_calibration.json`` -> ``sail_calibration.json``: no local paths in a file that
    leaves the machine (absolute, home-relative and Windows paths of two or more parts)."""
    return _PATH.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], str(text))


def lora_hashes(loras: Any) -> str | None:
    """A1111's ``Lora hashes`` value (``name: first 12 hex digits of the file's sha256, ...``) of the LoRAs a model
    was loaded with (``ModelInfo.loras``); None without LoRAs."""
    return ", ".join(f"{x['name']}: {str(x['sha256'])[:12]}" for x in loras) or None


def format_infotext(settings: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
    """A1111's PNG ``parameters`` text: prompt line, negative prompt line, then ``Key: value`` pairs (local paths
    in the values are reduced to their last part: :func:`strip_paths`)."""
    lines = [str(settings.get("prompt", ""))]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    pairs = {
        "Steps": settings.get("steps"),
        "Sampler": SCHEDULER_LABELS.get(settings.get("scheduler", ""), settings.get("scheduler")),
        "CFG scale": settings.get("guidance"),
        "Seed": settings.get("seed"),
        "Size": f"{settings['width']}x{settings['height']}" if settings.get("width") else None,
        "Model": settings.get("model"),
        "Lora hashes": lora_hashes(settings.get("loras") or ()),
    }
    pairs.update(extra or {})
    items = []
    for key, value in pairs.items():
        if value is None:
            continue
        text = strip_paths(str(value))
        if any(c in text for c in ",:\n\""):
            text = json.dumps(text)
        items.append(f"{key}: {text}")
    lines.append(", ".join(items))
    return "\n".join(lines)
