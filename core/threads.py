"""CPU thread count for torch/OpenMP in SAIL Scope's own processes (CLI, app, tests); never in a host's.

torch's default (one thread per core, OpenMP threads that spin while they wait) collapses when anything else
is busy on the machine: on a 2-core CPU with one competing job, a 50-step demo generation went from seconds to
tens of seconds (``docs/performance.md``, "Threads"). SAIL Scope therefore picks its own default and makes it a
setting:

* ``--threads N`` on any ``sailscope`` command, else ``$SAILSCOPE_THREADS``, else the default below;
* ``0`` (flag or variable) leaves torch's own choice alone, and so does a user's ``$OMP_NUM_THREADS`` when
  neither the flag nor ``$SAILSCOPE_THREADS`` is given.

Imports nothing heavy: call :func:`configure_threads` before torch is imported so that OpenMP starts with the
chosen size (it is also applied to an already imported torch).
"""
from __future__ import annotations

import os
import sys

ENV = "SAILSCOPE_THREADS"
# Chosen from the measurement in docs/performance.md ("Threads"): see default_threads().
MAX_DEFAULT_THREADS = 1


def default_threads() -> int:
    """The default when nothing is set: ``MAX_DEFAULT_THREADS`` (bounded by the CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_THREADS))


def parse_threads(text: str | int | None, source: str = "--threads") -> int | None:
    """``"N"`` -> N (>= 1), ``"0"`` -> None (torch's default); errors name ``source``."""
    if text is None:
        return None
    try:
        n = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{source} must be a whole number (0 = torch's default), got {text!r}") from None
    if n < 0:
        raise ValueError(f"{source} must be >= 0 (0 = torch's default), got {n}")
    return n


def resolve_threads(flag: str | int | None = None, environ: dict | None = None) -> int | None:
    """The thread count to use, or None to leave torch's (and the user's ``OMP_NUM_THREADS``) choice alone."""
    env = os.environ if environ is None else environ
    if flag is not None:
        n = parse_threads(flag, "--threads")
    elif env.get(ENV, "").strip():
        n = parse_threads(env[ENV], f"${ENV}")
    elif env.get("OMP_NUM_THREADS", "").strip():
        return None  # the user chose for OpenMP; torch follows it
    else:
        n = default_threads()
    return n or None


def configure_threads(flag: str | int | None = None) -> int | None:
    """Apply :func:`resolve_threads`: export ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (for OpenMP, which reads them
    once, and for child processes) and call ``torch.set_num_threads`` when torch is already imported.
    Returns the count applied, or None when torch's choice was left alone."""
    n = resolve_threads(flag)
    if flag is not None:  # the flag wins in child processes and in code that reads the variable (the demo trainer)
        os.environ[ENV] = str(n or 0)
    if n is None:
        return None
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(n)
    return n
