"""Thread settings (core/threads.py): precedence, and that ``sailscope`` commands and the test run apply them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sailscope.core.threads import MAX_DEFAULT_THREADS, default_threads, resolve_threads

PROBE = textwrap.dedent('''
    """A ``sailscope`` command that reports the threads torch uses, from the main thread and a worker thread."""
    import json, os, sys, threading

    def add_arguments(p):
        pass

    def run(args):
        import torch
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start(); t.join()
        print(json.dumps({"main": torch.get_num_threads(), "worker": seen[0], "omp": os.environ.get("OMP_NUM_THREADS"),
                          "env": os.environ.get("SAILSCOPE_THREADS")}))
        return 0
''')


def test_precedence_flag_then_variable_then_user_omp_then_default():
    assert resolve_threads("3", {"SAILSCOPE_THREADS": "2", "OMP_NUM_THREADS": "4"}) == 3
    assert resolve_threads(None, {"SAILSCOPE_THREADS": "2", "OMP_NUM_THREADS": "4"}) == 2
    assert resolve_threads(None, {"OMP_NUM_THREADS": "4"}) is None  # the user's OpenMP choice stands
    assert resolve_threads(None, {}) == default_threads() == min(MAX_DEFAULT_THREADS, len(os.sched_getaffinity(0)))
    assert resolve_threads("0", {"SAILSCOPE_THREADS": "2"}) is None  # 0 = torch's own default
    assert resolve_threads(None, {"SAILSCOPE_THREADS": " "}) == default_threads()
    with pytest.raises(ValueError, match=r"--threads must be a whole number"):
        resolve_threads("two", {})
    with pytest.raises(ValueError, match=r"\$SAILSCOPE_THREADS must be >= 0"):
        resolve_threads(None, {"SAILSCOPE_THREADS": "-1"})


def _probe(tmp_path, *argv: str, env_extra: dict | None = None) -> tuple[int, dict | None, str]:
    (tmp_path / "sailscope_threads_probe.py").write_text(PROBE)
    code = ("import sys; import sailscope.cli as c; "
            "c.COMMANDS['probe'] = ('sailscope_threads_probe', 'report threads'); "
            f"raise SystemExit(c.main({list(argv)!r}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SAILSCOPE_THREADS")}
    env.update(env_extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    return proc.returncode, out, proc.stderr


def test_cli_commands_apply_the_setting_in_every_thread(tmp_path):
    code, out, err = _probe(tmp_path, "probe")  # nothing set: the default, for worker threads (the app's) too
    assert code == 0, err
    assert out == {"main": default_threads(), "worker": default_threads(), "omp": str(default_threads()), "env": None}
    code, out, err = _probe(tmp_path, "probe", env_extra={"SAILSCOPE_THREADS": "2"})
    assert code == 0 and out["main"] == out["worker"] == 2, err
    code, out, err = _probe(tmp_path, "probe", "--threads", "1", env_extra={"SAILSCOPE_THREADS": "2"})
    assert code == 0 and out["main"] == out["worker"] == 1, err
    assert out["env"] == "1"  # the flag is exported, so child processes and the demo trainer follow it too
    code, out, err = _probe(tmp_path, "probe", "--threads", "many")
    assert code == 2 and out is None and err.strip() == "sailscope: error: --threads must be a whole number (0 = torch's default), got 'many'"


def test_suite_runs_with_the_configured_threads():
    """conftest.py applied the setting before torch was imported (as the CLI does)."""
    import torch

    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
