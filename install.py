"""Install what SAIL Scope needs into the running interpreter, and nothing it already has.

* Inside AUTOMATIC1111 / Forge (which run this file at start-up with their ``launch`` module importable):
  uses ``launch.is_installed`` / ``launch.run_pip`` and never touches torch, gradio, transformers or
  huggingface_hub (the host pins them: A1111 ships transformers 4.30.2); diffusers, when missing, is
  installed with ``--no-deps`` so it cannot upgrade the host's pins.
* Standalone (``python install.py``): installs missing runtime packages, a torch that fits the machine
  only if none is installed (``torch==2.13.0``: on these CPU machines a local wheel), gradio for the app,
  and the package itself in editable mode so ``sailscope`` / ``python -m sailscope`` work.
* ``--dev`` adds the test tools: pytest and playwright (driving Debian's Chromium, installed with apt-get
  when missing and possible). Nothing is installed with ``--no-deps`` here, so ``pip check`` stays clean (the
  demo-model trainer reads CLIP's vocabulary from the shipped demo tokenizer, not from open-clip-torch).

Prints one line per action; exits 0 when everything needed is present.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
TORCH_SPEC = "torch==2.13.0"

# (distribution name, pip requirement)
RUNTIME = [
    ("diffusers", "diffusers>=0.30"),
    ("transformers", "transformers>=4.40"),
    ("safetensors", "safetensors>=0.4"),
    ("numpy", "numpy>=1.24"),
    ("pillow", "pillow>=9.5"),
    ("plotly", "plotly>=5.18"),
    ("scipy", "scipy>=1.10"),
    ("accelerate", "accelerate>=0.30"),
    ("peft", "peft>=0.11"),
]
APP = [("gradio", "gradio>=4.40")]
DEV = [("pytest", "pytest>=8"), ("playwright", "playwright>=1.44")]


# inside a WebUI: what the script needs that the host may lack (installed without dependencies)
WEBUI = [("numpy", "numpy"), ("pillow", "pillow"), ("scipy", "scipy"), ("plotly", "plotly"), ("safetensors", "safetensors")]
WEBUI_NO_DEPS = [("diffusers", "diffusers>=0.30")]


def installed(dist: str) -> bool:
    try:
        import launch  # type: ignore  # A1111/Forge: their own check, which knows their environment

        return bool(launch.is_installed(dist))
    except ImportError:
        pass
    try:
        md.version(dist)
        return True
    except md.PackageNotFoundError:
        return False


def pip(args: list[str], desc: str, dry_run: bool) -> None:
    print(f"[sailscope] installing {desc}", flush=True)
    if dry_run:
        return
    try:
        import launch  # type: ignore  # A1111/Forge

        launch.run_pip(" ".join(args), desc)
        return
    except ImportError:
        pass
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args])


def in_webui() -> bool:
    """True when A1111/Forge runs this file (their ``launch`` module is importable)."""
    try:
        import launch  # type: ignore  # noqa: F401

        return True
    except ImportError:
        return False


def ensure(reqs: list[tuple[str, str]], dry_run: bool, extra: list[str] | None = None) -> list[str]:
    missing = [spec for dist, spec in reqs if not installed(dist)]
    if missing:
        pip([*(extra or []), *missing], ", ".join(missing), dry_run)
    return missing


def ensure_chromium(dry_run: bool) -> None:
    """Browser tests drive Debian's Chromium (playwright cannot download browsers offline)."""
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print("[sailscope] chromium not found and apt-get unavailable: browser tests need /usr/bin/chromium", flush=True)
        return
    print("[sailscope] installing chromium (apt-get) for the browser tests", flush=True)
    if not dry_run:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.call(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        subprocess.check_call(["apt-get", "install", "-y", "-qq", "chromium"], env=env, stdout=subprocess.DEVNULL)


def package_is_editable_here() -> bool:
    """Does ``import sailscope`` (from a neutral folder) resolve to this checkout?"""
    probe = "import os, sailscope; print(os.path.dirname(os.path.abspath(sailscope.__file__)))"
    try:
        out = subprocess.run([sys.executable, "-c", probe], cwd=os.path.expanduser("~") if os.path.isdir(os.path.expanduser("~")) else "/",
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and os.path.realpath(out.stdout.strip()) == os.path.realpath(ROOT)


def main(argv: list[str] | None = None) -> int:
    try:
        return install(argv)
    except subprocess.CalledProcessError as exc:  # pip (or apt-get) printed its reason above; say what failed, once
        cmd = [str(c) for c in exc.cmd]
        what = " ".join(c for c in cmd[cmd.index("install") + 1:] if not c.startswith("-")) if "install" in cmd else " ".join(cmd)
        tool = "pip" if "pip" in cmd else os.path.basename(cmd[0])
        print(f"[sailscope] error: {tool} could not install {what} (exit status {exc.returncode}); see its output above",
              flush=True)
        return 1


def install(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", action="store_true", help="also install the test tools")
    parser.add_argument("--no-package", action="store_true", help="do not pip-install sailscope itself")
    parser.add_argument("--dry-run", action="store_true", help="print what would be installed")
    args = parser.parse_args(argv)

    webui = in_webui()
    did: list[str] = []
    if not installed("torch"):
        if webui:
            print("[sailscope] torch is missing inside the WebUI; the WebUI must provide it", flush=True)
            return 1
        pip([TORCH_SPEC], TORCH_SPEC, args.dry_run)
        did.append(TORCH_SPEC)
    if webui:
        did += ensure(WEBUI, args.dry_run)
        did += ensure(WEBUI_NO_DEPS, args.dry_run, extra=["--no-deps"])
    else:
        did += ensure(RUNTIME, args.dry_run)
        did += ensure(APP, args.dry_run)
    if args.dev:
        did += ensure(DEV, args.dry_run)
        ensure_chromium(args.dry_run)
    if not webui and not args.no_package and not package_is_editable_here():
        pip(["--no-deps", "-e", ROOT], "sailscope (editable)", args.dry_run)
        did.append("sailscope")
    print(f"[sailscope] {'installed: ' + ', '.join(did) if did else 'everything needed is already installed'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
