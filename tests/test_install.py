"""install.py: installs only what is missing, twice in a row, standalone and inside a simulated A1111.

The A1111 stand-in provides ``launch.is_installed(package)`` and ``launch.run_pip(command, desc)`` with the
published signatures (modules/launch_utils.py, re-exported by launch.py); it records calls instead of running pip.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def test_empty_venv_plans_torch_pin_and_every_dependency(tmp_path):
    """In a venv with nothing installed, the plan is torch==2.13.0 (never an unpinned CUDA build) + all deps."""
    venv = tmp_path / "empty"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = _run([str(venv / "bin" / "python"), str(ROOT / "install.py"), "--dry-run", "--dev"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for want in ("torch==2.13.0", "diffusers", "transformers", "gradio", "plotly", "scipy", "pytest", "playwright",
                 "sailscope (editable)"):
        assert want in out, (want, out)
    assert "open-clip" not in out  # installed without its dependencies it left `pip check` failing (issue 22)


def _venv_seeing_this_environment(venv: Path) -> Path:
    """A venv that sees the *running* environment's packages, whatever that is (a venv, pyenv, the system).

    ``--system-site-packages`` would not do: a venv made from a venv's interpreter inherits the *base* interpreter
    (pyvenv.cfg's ``home``), not the running venv. Instead a .pth file adds each of this interpreter's site
    directories with ``site.addsitedir``, which also runs their .pth files (the editable ``sailscope`` finder)."""
    import site

    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "zz_running_env.pth").write_text("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n")
    return venv / "bin" / "python"


def test_venv_with_everything_present_installs_nothing_twice(tmp_path):
    """A venv that sees this environment's packages (and sailscope): both runs install nothing and exit 0."""
    python = _venv_seeing_this_environment(tmp_path / "venv")
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    env.pop("PYTHONPATH", None)
    for _ in range(2):
        proc = _run([str(python), str(ROOT / "install.py")], env=env, cwd=tmp_path)
        assert proc.returncode == 0 and "everything needed is already installed" in proc.stdout, proc.stdout + proc.stderr
        assert "installing" not in proc.stdout


def test_failed_pip_is_one_line_and_nonzero(tmp_path):
    """pip failing (here: a venv without pip, offline) ends install.py with one clear line, not a traceback."""
    venv = tmp_path / "bare"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_NO_INDEX"] = "1"
    proc = _run([str(venv / "bin" / "python"), str(ROOT / "install.py")], env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("[sailscope] error: pip could not install torch==2.13.0 (exit status 1)"), last


def _fake_launch(folder: Path, have: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "launch.py").write_text(textwrap.dedent(f"""
        import json, os
        HAVE = set({have!r})
        LOG = os.environ["FAKE_LAUNCH_LOG"]

        def is_installed(package):
            return package in HAVE

        def run_pip(command, desc=None, live=False):
            with open(LOG, "a") as f:
                f.write(json.dumps({{"command": command, "desc": desc}}) + "\\n")
    """))


def test_inside_a1111_uses_launch_and_never_touches_host_pins(tmp_path):
    host = tmp_path / "webui"
    _fake_launch(host, have=["torch", "gradio", "transformers", "numpy", "pillow", "scipy", "safetensors"])
    log = tmp_path / "pip.log"
    env = {**os.environ, "PYTHONPATH": str(host), "FAKE_LAUNCH_LOG": str(log)}
    proc = _run([sys.executable, str(ROOT / "install.py")], env=env, cwd=host)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    commands = " ".join(c["command"] for c in calls)
    assert "plotly" in commands and "--no-deps diffusers" in commands
    for pinned in ("torch", "gradio", "transformers", "huggingface", "sailscope", "-e "):
        assert pinned not in commands, f"{pinned} must not be installed inside the WebUI: {commands}"
    # everything present: second run installs nothing
    _fake_launch(host, have=["torch", "gradio", "transformers", "numpy", "pillow", "scipy", "safetensors", "plotly", "diffusers"])
    log.unlink()
    proc = _run([sys.executable, str(ROOT / "install.py")], env=env, cwd=host)
    assert proc.returncode == 0 and not log.exists() and "already installed" in proc.stdout


def test_webui_without_torch_fails_clearly(tmp_path):
    host = tmp_path / "webui"
    _fake_launch(host, have=[])
    env = {**os.environ, "PYTHONPATH": str(host), "FAKE_LAUNCH_LOG": str(tmp_path / "log")}
    proc = _run([sys.executable, str(ROOT / "install.py")], env=env, cwd=host)
    assert proc.returncode == 1 and "WebUI must provide it" in proc.stdout
