"""Model loading: ``demo``, a local diffusers folder, a single ``.safetensors`` file, or a hub id.

One entry point, :func:`load_pipeline`, picks the device (CUDA, then MPS, else CPU) and dtype (fp16 on
CUDA, fp32 elsewhere). Metrics and HVPs always run in fp32 whatever the weights' dtype (see
``core/metrics.py``). Pickled checkpoints (``.ckpt``/``.pt``/``.bin``) are refused unless the caller
passes ``allow_pickle=True``. Offline, a hub id fails fast with a clear message instead of hanging.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from sailscope.core.errors import ModelLoadError, UsageError, UserInputError
from sailscope.core.families import FAMILIES, family_of

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL_DIR = PACKAGE_ROOT / "assets" / "models" / "demo"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUPPORTED_PIPELINES = tuple(FAMILIES)


@dataclass(frozen=True)
class ModelInfo:
    """Where a model came from and how it runs (shown in the app's model view and in reports)."""

    name: str
    source: str  # demo | folder | single_file | hub
    path: str
    device: str
    dtype: str
    prediction_type: str
    family: str = "sd"  # core/families.py: sd (SD 1.x/2.x) | sdxl
    loras: tuple[dict, ...] = ()  # {"name", "scale", "sha256"} per LoRA applied, in order

    @property
    def key(self) -> str:
        """Stable identity used to store per-model calibration."""
        return f"{self.source}:{self.path}"


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to apply at load time: a ``.safetensors`` file (diffusers/PEFT or A1111/kohya format) and its scale."""

    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """``PATH`` or ``PATH:SCALE`` (a trailing ``:number`` is the scale; other colons belong to the path)."""
        path, sep, tail = str(text).rpartition(":")
        if sep:
            try:
                return cls(path, float(tail))
            except ValueError:
                pass
        return cls(str(text), 1.0)

    @property
    def name(self) -> str:
        return Path(self.path).stem


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def apply_loras(pipe: Any, loras: Sequence[LoraSpec], *, allow_pickle: bool = False) -> tuple[dict, ...]:
    """Load each LoRA as a named adapter and activate them all at their scales (diffusers' ``load_lora_weights``,
    which also reads A1111/kohya files); returns what :class:`ModelInfo` records of them."""
    records, names = [], []
    for i, lora in enumerate(loras):
        path = Path(os.path.expanduser(lora.path))
        if not path.is_file():
            raise ModelLoadError(f"LoRA file not found: {lora.path}")
        if path.suffix.lower() != ".safetensors" and not allow_pickle:
            raise ModelLoadError(f"LoRA {path.name} is a pickle file, which can run code when loaded; use .safetensors "
                                 "or pass --allow-pickle if you trust it")
        if not isinstance(lora.scale, (int, float)) or not math.isfinite(lora.scale):
            raise UserInputError(f"LoRA scale must be a finite number, got {lora.scale!r}")
        name = f"lora{i}_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except Exception as exc:  # wrong architecture, corrupt file, no peft: diffusers raises many types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "peft" in first.lower() and ("required" in first.lower() or "install" in first.lower()):
                raise ModelLoadError("LoRAs need the peft library: pip install peft") from exc
            raise ModelLoadError(f"could not apply the LoRA {path.name} to this model: {first}") from exc
        names.append(name)
        records.append({"name": path.stem, "scale": float(lora.scale), "sha256": file_sha256(path)})
    if names:
        pipe.set_adapters(names, adapter_weights=[float(lora.scale) for lora in loras])
    return tuple(records)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """Devices this torch can use here, e.g. ``["cuda", "cuda:0", "cuda:1", "cpu"]``."""
    out = []
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += ["cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else [])
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out + ["cpu"]


def check_device(device: str | torch.device | None, dtype: str | torch.dtype | None = None) -> torch.device:
    """The ``torch.device`` for ``device`` (None: the best available), or :class:`UsageError` with one line that
    names what is available: an unknown name (``gpu``), a device this torch was built without or cannot see
    (``cuda`` on a CPU-only build), a CUDA index past the last GPU; and dtypes the device cannot run (fp16 on CPU)."""
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        dev = default_device()
    else:
        avail = ", ".join(available_devices())
        text = str(device).strip().lower()
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {device!r} is not a device name; available here: {avail}") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                why = (f"this torch ({torch.__version__}) was built without CUDA" if torch.version.cuda is None
                       else "no CUDA GPU is visible")
                raise UsageError(f"--device {text}: {why}; available here: {avail}")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise UsageError(f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s); available here: {avail}")
        elif dev.type == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise UsageError(f"--device mps: MPS (Apple GPU) is not available; available here: {avail}")
        elif dev.type != "cpu":
            raise UsageError(f"--device {text}: SAIL Scope runs on cpu, cuda or mps; available here: {avail}")
    if dtype is not None:
        dt = _parse_dtype(dtype, dev)
        if dev.type == "cpu" and dt == torch.float16:
            raise UsageError("--dtype fp16 is not supported on the CPU; use fp32 (or bf16)")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def _parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise UsageError(f"--dtype must be one of auto, {', '.join(table)}; got {dtype!r}")
    return table[dtype]


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick TCP check so an offline machine fails in seconds instead of retrying downloads."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _check_diffusers_folder(path: Path) -> str:
    """The folder's pipeline class name (``model_index.json``), when SAIL Scope supports it."""
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{path} is not a diffusers model folder (no model_index.json)")
    try:
        cls = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{index} is not valid JSON: {exc}") from None
    if cls not in SUPPORTED_PIPELINES:
        raise ModelLoadError(f"{path} holds a {cls or 'pipeline without a class name'}; SAIL Scope supports "
                             f"{', '.join(SUPPORTED_PIPELINES)} (SD 1.x/2.x, SDXL-family)")
    return cls


def _pipeline_class(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def _finish(pipe: Any, info_kwargs: dict, device: torch.device, dtype: torch.dtype, loras: Sequence[LoraSpec] = (),
            allow_pickle: bool = False) -> Any:
    lora_records = apply_loras(pipe, loras, allow_pickle=allow_pickle)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.sailscope_info = ModelInfo(
        device=str(device), dtype=str(dtype).replace("torch.", ""), family=family_of(pipe).name,
        prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"), loras=lora_records, **info_kwargs,
    )
    return pipe


def load_pipeline(
    model: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    config: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    loras: Sequence[LoraSpec] = (),
) -> Any:
    """Load a Stable Diffusion 1.x/2.x or SDXL-family pipeline (plus ``loras``, applied in order); attach
    :class:`ModelInfo` as ``pipe.sailscope_info``.

    ``model``: ``"demo"``; a diffusers folder; a ``.safetensors`` file (``config`` = a local diffusers
    folder of the same architecture, needed offline); or a hub id such as ``"org/name"``.
    """
    dev = check_device(device, dtype)
    dt = _parse_dtype(dtype, dev)
    spec = str(model).strip()
    if not spec:
        raise UserInputError("model must be 'demo', a folder, a .safetensors file or a hub id; got an empty string")

    # 1. demo
    if spec == "demo":
        if not (DEMO_MODEL_DIR / "model_index.json").is_file():
            raise ModelLoadError(f"the embedded demo model is missing at {DEMO_MODEL_DIR}; run `sailscope train-demo`")
        path, source = DEMO_MODEL_DIR, "demo"
    else:
        path, source = Path(os.path.expanduser(spec)), None

    # 2. local folder
    if source == "demo" or path.is_dir():
        cls = _pipeline_class(_check_diffusers_folder(path))
        demo_kwargs = {"safety_checker": None, "requires_safety_checker": False} if source == "demo" else {}
        try:
            pipe = cls.from_pretrained(str(path), torch_dtype=dt, local_files_only=True,
                                       use_safetensors=None if allow_pickle else True, **demo_kwargs)
        except Exception as exc:  # diffusers raises many types for corrupt/missing files
            raise ModelLoadError(f"could not load the diffusers folder {path}: {str(exc).splitlines()[0]}") from exc
        return _finish(pipe, {"name": "demo" if source == "demo" else path.name, "source": source or "folder", "path": str(path)}, dev, dt, loras, allow_pickle)

    # 3. single file
    if path.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES or path.is_file():
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        if path.suffix.lower() != ".safetensors" and not allow_pickle:
            raise ModelLoadError(
                f"{path.name} is a pickle checkpoint, which can run code when loaded; convert it to .safetensors "
                "or pass --allow-pickle if you trust it"
            )
        if config is None:
            raise ModelLoadError(
                f"loading {path.name} offline needs --config: a local diffusers folder of the same architecture"
            )
        if not Path(config).is_dir():
            raise ModelLoadError(f"config folder not found: {config}")
        cls = _pipeline_class(_check_diffusers_folder(Path(config)))
        try:
            pipe = cls.from_single_file(str(path), config=str(config), torch_dtype=dt, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"could not load {path.name}: {str(exc).splitlines()[0]}") from exc
        return _finish(pipe, {"name": path.stem, "source": "single_file", "path": str(path)}, dev, dt, loras, allow_pickle)

    # 4. hub id
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"model not found: {spec!r} is not 'demo', an existing folder or file, or a hub id 'org/name'")
    from diffusers import DiffusionPipeline  # the hub's model_index names the class

    try:
        pipe = DiffusionPipeline.from_pretrained(spec, torch_dtype=dt, local_files_only=True)
    except Exception:
        if not hub_reachable():
            raise ModelLoadError(
                f"{spec!r} is not in the local cache and the model hub cannot be reached (offline?); "
                "pass a local diffusers folder or a .safetensors file"
            ) from None
        try:
            pipe = DiffusionPipeline.from_pretrained(spec, torch_dtype=dt)
        except Exception as exc:
            raise ModelLoadError(f"could not download {spec!r}: {str(exc).splitlines()[0]}") from exc
    if type(pipe).__name__ not in SUPPORTED_PIPELINES:
        raise ModelLoadError(f"{spec!r} is a {type(pipe).__name__}; SAIL Scope supports {', '.join(SUPPORTED_PIPELINES)}")
    return _finish(pipe, {"name": spec, "source": "hub", "path": spec}, dev, dt, loras, allow_pickle)


def list_local_loras(folders: Sequence[str | os.PathLike]) -> dict[str, str]:
    """``{name: path}`` of the ``.safetensors`` LoRA files directly inside the configured folders (names are file
    names without the suffix; the first folder wins a clash)."""
    found: dict[str, str] = {}
    for folder in folders:
        root = Path(folder).expanduser()
        if root.is_dir():
            for entry in sorted(root.iterdir()):
                if entry.suffix.lower() == ".safetensors" and entry.is_file():
                    found.setdefault(entry.stem, str(entry))
    return found


def list_local_models(folders: list[str | os.PathLike]) -> list[str]:
    """``demo`` plus diffusers folders and ``.safetensors`` files directly inside the configured folders."""
    found = ["demo"] if (DEMO_MODEL_DIR / "model_index.json").is_file() else []
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.is_dir():
            continue
        for entry in sorted(root.iterdir()):
            if (entry / "model_index.json").is_file() or entry.suffix.lower() == ".safetensors":
                found.append(str(entry))
    return found
