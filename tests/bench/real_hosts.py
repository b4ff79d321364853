#!/usr/bin/env python
"""SAIL Scope inside the real hosts: ComfyUI and Stable Diffusion WebUI Forge, driven over HTTP on CPU.

    python tests/bench/real_hosts.py --comfyui /work/hosts/ComfyUI --forge /work/hosts/forge \
        [--json OUT] [--work DIR] [--only comfyui|forge] [--arch sd15,sdxl] [--hf-guess GITDIR]

No host code lives in this repository. The script takes host checkouts, makes one venv per host under
``--work`` (default ``/work/hosts/venvs``; reused while its install spec is unchanged, so reruns are fast),
builds small random-weight single-file checkpoints in the hosts' original (LDM/CompVis) key layout (cached in
``<work>/ckpts``), copies this repository's current working tree (tracked + untracked, not ignored files;
nothing is committed or symlinked) into ComfyUI's ``custom_nodes/sailscope`` and Forge's
``<work>/forge-data/extensions/sailscope`` (Forge runs with ``--data-dir``, so its config, outputs and
extensions stay out of the checkout), starts one server at a time on 127.0.0.1 (free port, own process group,
ended at the end) and drives it:

* ComfyUI: ``/prompt`` graphs (CheckpointLoaderSimple, CLIPTextEncode x2, EmptyLatentImage, RandomNoise or
  ``SailScopeNoise`` -> SamplerCustomAdvanced (KSamplerSelect euler, BasicScheduler normal, CFGGuider) ->
  VAEDecode -> SaveImage, plus ``SailScopeSharpness``, ``SailScopeCompare``, and the core ``PreviewAny`` node,
  whose ``ui.text`` carries the STRING reports into ``/history/{id}``), images through ``/view``. Two prompts
  per arch (SAIL off / SAIL on), so a failing SAIL-on node cannot hide the SAIL-off results.
* Forge: ``/sdapi/v1/txt2img`` with ``alwayson_scripts: {"SAIL Scope": {"args": [...]}}`` (model chosen with
  ``override_settings.sd_model_checkpoint``), the response's ``info.infotexts`` and ``/sdapi/v1/png-info``
  (Forge's own ``parse_generation_parameters``).

Generation: 3 Euler steps, CFG 5, seed 1234; SD 1.x 64x64, SDXL 128x128. SAIL on: reference objective,
threshold 0 (never accepted, so every Adam step runs), 2 steps, lr 0.05, 1 candidate.

Output: one JSON line per (host, arch, check) on stdout, ``{"host", "arch", "check", "ok", "detail",
"seconds"}`` (``seconds`` includes the generation the check reads); progress and phase timings on stderr;
exit status 1 when any check fails. ``--json OUT`` writes every record, host/project commits, package versions
and phase timings.

Checks (per arch unless marked):

* ``registered`` (per host): ComfyUI ``/object_info`` has SailScopeNoise/Sharpness/Compare (and PreviewAny);
  Forge ``/sdapi/v1/scripts`` lists "sail scope" for txt2img, ``/script-info`` shows it always-on with its args.
* ``model_loaded`` (Forge): the stock baseline generated with the test checkpoint. The baseline is a request
  whose SAIL Scope args the script rejects (objective "none-stock-baseline"): it then does nothing for the job
  (no hook, no probe; asserted: no SAIL keys in its infotext).
* ``sail_off_equals_stock``: ComfyUI: our node (sail=false) -> the same pixels as RandomNoise; Forge: explicit
  SAIL-off args and no ``alwayson_scripts`` entry (the script's UI defaults) -> the same pixels as the baseline.
* ``probe`` / ``compare`` (ComfyUI): the sharpness probe's FLOAT, report and plot; the compare node's image
  (two panels) and joined report.
* ``sail_on``: SAIL ran Adam steps and the image differs from SAIL off; ComfyUI also: the report's SAIL loss
  went down; Forge: ``SAIL steps`` > 0 and a finite ``SAIL loss``, ``SAIL Scope original step-1 Wen/sharpness``
  present, no failure in ``SAIL Scope status``. Infotext keys come from the project's registry
  (``core/io/infotext.py``, loaded by path from this working tree).
* ``diagnostics``: ComfyUI: the SAIL node's plot IMAGE saved (and compare of off/on); Forge: the diagnostics
  image appended to ``images``.
* ``infotext_roundtrip`` (Forge): PNG Info of the returned PNG, read back with ``core.io.infotext.parse_settings``
  (what A1111's paste uses) -> the SAIL settings equal those sent.
* ``show_original`` (Forge): with "render the original" a comparison image is added and the SAIL image is
  bit-identical to the run without it.
* ``api_dict_args`` (Forge, first arch): docs/extension.md says a single object ``{"sail": ...}`` works as
  ``args``; Forge fills the other 9 slots with UI defaults, so the script gets the dict in slot 0.
* ``memory``: peak resident memory (CPU RSS) of the server process tree (``VmHWM`` of /proc/<pid>/status,
  summed over the process and its descendants; both hosts serve from one process, listed in ``processes``) for
  a plain generation and for SAIL on (same size and steps; SAIL as above, 2 Adam steps). VmHWM is a lifetime
  high-water mark, so the model is first loaded by a stock generation (the peak up to then, since the server
  started or the previous arch's last reset, is ``peak_incl_model_load_mib``), then the mark is reset (``echo 5 > /proc/<pid>/clear_refs``) before
  each measured generation and read right after it: ``peak_plain_mib`` (ComfyUI: the SailScopeNoise sail=false
  branch; Forge: the stock request again), ``peak_sail_mib``, ``sail_extra_mib`` = sail - plain, and the same
  for SAIL with ``low_memory`` (``peak_sail_low_memory_mib``). With the reset the numbers do not depend on the
  arch order (``rss_before_*`` shows what was resident, e.g. the previous arch's model). ok = the SAIL run
  finished with a result; the numbers are informational. If the kernel refuses the reset, ``hwm_reset`` is
  false and ``caveat`` says the peaks are lifetime figures.
* ``low_memory_same_result``: SAIL on with ``low_memory`` true (ComfyUI: the optional BOOLEAN input of
  SailScopeNoise; Forge: the 10th script arg) gives the same image as with it false (``verdict``:
  pixel-identical, or max abs diff <= 1/255 on uint8 RGB) and the same Adam steps and SAIL start loss / loss to
  4 significant digits (ComfyUI: the node's report; Forge: the infotext).
* ``cross_host`` (both hosts ran): same model, same seed noise -> step-1 Wen at the seed's noise and SAIL's
  final loss agree within 2 % (ComfyUI starts at c = 1, Forge at c = sigma_t ~ 0.998).
* ``lora`` (SD 1.x only; last check of the arch): SAIL sees the model the user samples with, host patches applied.
  The test LoRA (random, rank 4, alpha 4, up weights N(0, 0.1^2), down N(0, 1/in); fp16; kohya/sd-scripts keys
  ``lora_unet_<diffusers module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` for all 56
  UNet attention projections attn1/attn2 to_q/to_k/to_v/to_out.0) is built in the ComfyUI venv next to the
  checkpoints (``<work>/ckpts/sailscope_rh_sd15_lora.safetensors``, cached; the builder maps the names with
  ComfyUI's ``comfy.lora.model_lora_keys_unet``, which Forge's ``backend/patcher/lora.py`` also uses via
  ``packages_3rdparty/comfyui_lora_collection``, and fails unless ``load_lora`` patches every projection).
  ComfyUI: symlinked into ``models/loras``; one prompt with ``LoraLoaderModelOnly`` (strength 1.0) feeding
  BasicScheduler, CFGGuider, SailScopeNoise and SailScopeSharpness. ``parts``: ``applied`` (no "lora key not
  loaded" line for our keys in the server log during the prompt, and RandomNoise + LoRA differs from the stock
  image without it), ``sail_off_equals_stock`` (SAIL off + LoRA = RandomNoise + LoRA, pixel-identical),
  ``sail_on_sees_lora`` (the report's SAIL start loss differs from the no-LoRA SAIL run's at 4 significant
  digits, and the loss went down), ``probe_wen_matches_sail`` (the probe with the LoRA model at the seed's noise
  and the SAIL node's "Wen (step 1)" before value agree within 1e-3 relative). Forge: symlinked into
  ``<data-dir>/models/Lora`` (sd_forge_lora's ``--lora-dir`` default is ``<models dir>/Lora``, and
  ``modules/paths_internal.py`` puts the models dir under ``--data-dir``); the stock baseline and SAIL on again
  with ``<lora:sailscope_rh_sd15_lora:1>`` appended to the prompt. ``parts``: ``applied`` (Forge logs "[LORA]
  Loaded ... -UNet with N keys ... (skipped 0 keys)" and no mismatch, the stock image differs from the no-LoRA
  baseline; ``Lora hashes`` in the infotext is reported), ``sail_on_sees_lora`` (``SAIL start loss`` differs from
  the no-LoRA run's at 4 significant digits and ``SAIL loss`` < ``SAIL start loss``).

Host checkouts (no internet; the ``fetch`` tool mirrors GitHub repositories as bare git dirs under
/work/.mirror with some large blobs absent, so a plain ``git clone`` fails to check out ComfyUI's
``comfy/text_encoders/llama_tokenizer/tokenizer.json``): ``--comfyui``/``--forge`` (defaults: the mirrors) may
be a bare git dir: HEAD is then exported to ``<work>/../ComfyUI`` / ``<work>/../forge`` (a ``git clone
--no-checkout`` filled blob by blob, absent blobs skipped, so ``git rev-parse HEAD`` still gives the commit).
Forge's ``launch.py`` would ``git clone`` huggingface_guess (pinned commit 84826248 in
``modules/launch_utils.py:prepare_environment``; not a pip requirement), BLIP and the assets repo. The script
runs Forge with ``--skip-prepare-environment`` and exports huggingface_guess at the pinned commit from
``--hf-guess`` (default: the mirror) into ``repositories/huggingface_guess`` (``modules/paths.py`` puts it on
``sys.path``). BLIP and the assets are not needed by the API (Forge prints a warning).

CPU / offline set-up traps (all handled here):

* pip: ``torch==2.13.0`` is a local CPU wheel (``/opt/wheels``); every install runs with a constraints file
  pinning it (and setuptools), otherwise Forge's bare ``torch`` requirement could pull a multi-GB CUDA build.
* PyPI's torchvision 0.28 (``+cu130``) is built against CUDA torch: its ``_C`` does not load on the CPU wheel and
  ``import torchvision`` dies in ``_meta_registrations`` on ``register_fake("torchvision::nms")`` and, since
  0.28, ``torchvision::qnms`` ("operator ... does not exist"). ``_sailscope_tvshim.pth`` in each venv installs
  a meta-path hook that defines both schemas right before torchvision is imported (no kernels: torchvision's
  ops stay unavailable, as without ``_C``; nothing here needs them). Rewritten on every run.
* torchaudio: not installed (fails to load on CPU torch; ComfyUI's audio nodes then fail to import, harmless).
  ``requests`` is missing from ComfyUI's requirements. Forge pins ``setuptools==69.5.1``, which torch 2.13
  refuses (needs >= 77.0.3; < 81 keeps ``pkg_resources`` for pytorch_lightning): the pin is replaced. Forge's
  builtin soft-inpainting script needs ``joblib`` (not in its requirements).
* Forge binds 0.0.0.0 unless ``--server-name 127.0.0.1``; ``--skip-prepare-environment`` avoids git clones and
  pip runs at start, ``--skip-install`` skips extension installers (ours would run pip), ``--nowebui
  --skip-load-model-at-start`` start only the API. ``--data-dir`` also moves ``extensions/``: the extension
  must go to ``<data-dir>/extensions``. For SDXL Forge downloads ``models/VAE-approx/vaeapprox-sdxl.pt`` for
  live previews (only the SD 1.x one ships): requests set ``live_previews_enable: false``.
* ComfyUI's CLIP configs and Forge's text encoder / VAE configs are fixed (full size), so only the UNets are
  small: SD 1.x = model_channels 320, channel_mult [1, 2], one res block per level (107 M; ComfyUI detects
  SD15, huggingface_guess too); SDXL-type = Segmind-Vega's transformer_depth [0, 0, 1, 1, 2, 2] (the smallest
  SDXL family both hosts detect: model_channels 320, adm_in_channels 2816, context 2048,
  linear transformer in/out) with channel_mult [1, 2, 2] (326 M). CLIP-L, OpenCLIP bigG (converted with
  ComfyUI's own ``process_clip_state_dict_for_saving``) and the VAE are full size with random weights, stored
  fp16 (SD 1.x file 0.63 GB, SDXL 2.45 GB). The builder runs in the ComfyUI venv with ComfyUI's LDM classes
  (their ops skip weight init, so torch's ``reset_parameters`` is called) and checks ComfyUI's detection and
  that every text-encoder key is read. transformers >= 5 drops the ``text_model.`` level from
  ``CLIPTextModel`` keys (ComfyUI's SD15 loader tolerates that, its SDXL loader silently drops CLIP-L, which
  then stays uninitialized: NaN images); the builder adds it back. Tokenizers ship with both hosts
  (``comfy/sd1_tokenizer``, ``backend/huggingface/.../tokenizer*``).

Measured on the 2-core CPU box (2026-11-29; ComfyUI a125cd84, Forge dfdcbab6, project 2a5baff + this file,
before the ``memory`` / ``low_memory_same_result`` checks, which add about one SAIL run per host and arch):
first set-up: ComfyUI venv 102 s, Forge venv 191 s, checkpoints 9 s (SD 1.x) + 42-66 s (SDXL). A rerun
(``--work`` reused): 171 s in all: ComfyUI start 12 s, SD 1.x 9 s, SDXL 35 s; Forge start 22 s, SD 1.x 23 s,
SDXL 68 s. 26/27 checks passed; ``api_dict_args`` failed (the dict form turns SAIL on with the defaults).
With ``memory`` and ``low_memory_same_result`` (project 39d2ca2, same hosts; the 2 cores shared with other test
runs, load average ~5, so inflated): 638 s in all, 35/35 passed. SAIL's extra peak RSS over a plain generation:
ComfyUI +83 MiB (SD 1.x) / +147 MiB (SDXL), Forge +86 / +8 MiB (Forge SDXL's plain peak varies by ~200 MiB
between runs: +251 MiB in the previous run); with ``low_memory`` +396..399 / +1057..1236 MiB (on the CPU the
"offload" copies every saved activation within the same RAM).
With ``lora`` (2026-11-29, same hosts, ``--arch sd15``, the 2 cores shared, load average 2..6): 21/21 passed in
338 s; the LoRA build (once, cached) 11 s; ``lora`` adds 87 s to ComfyUI (one prompt: LoRA patching, RandomNoise,
SAIL off, SAIL on with its probes (63 s of the SAIL-on prompt alone on this load), the sharpness probe) and 7 s to
Forge (2 requests). Start loss with / without the LoRA: ComfyUI 2.281 / 2.056, Forge 2.2822 / 2.0574; step-1 Wen
1.524 / 1.292 (Forge 1.5248 / 1.2925).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCH_SPEC = "torch==2.13.0"
PROJECT_DEPS = ["diffusers>=0.30", "transformers>=4.40", "safetensors>=0.4", "plotly>=5.18", "scipy>=1.10",
                "numpy>=1.24", "pillow>=9.5"]
FORGE_HF_GUESS_COMMIT = "84826248b49bb7ca754c73293299c4d4e23a548d"
DEFAULT_MIRRORS = {
    "comfyui": "/work/.mirror/Comfy-Org+ComfyUI/repo",
    "forge": "/work/.mirror/lllyasviel+stable-diffusion-webui-forge/repo",
    "hf_guess": "/work/.mirror/lllyasviel+huggingface_guess/repo",
}
CKPT = {"sd15": "sailscope_rh_sd15.safetensors", "sdxl": "sailscope_rh_sdxl.safetensors"}
# generation settings per arch: small and fast on 2 CPU cores
GEN = {"sd15": {"width": 64, "height": 64, "steps": 3, "cfg": 5.0},
       "sdxl": {"width": 128, "height": 128, "steps": 3, "cfg": 5.0}}
SAIL_ON = {"threshold": 0.0, "max_steps": 2, "lr": 0.05, "objective": "reference", "candidates": 1}
SEED = 1234
PROMPT = "a photo of a red cube on a table"
NEGATIVE = "blurry"

RECORDS: list = []
TIMINGS: dict = {}
METRICS: dict = {}  # (host, arch) -> step-1 Wen at the seed's noise, SAIL loss after (cross-host check)
BASELINE: dict = {}  # (host, arch) -> results without LoRA (stock image, SAIL start loss, Wen) for the lora check
LORA_PATHS: dict = {}  # arch -> built test LoRA (set in main)
LOG = sys.stderr


def say(msg: str) -> None:
    print(f"[real_hosts {time.strftime('%H:%M:%S')}] {msg}", file=LOG, flush=True)


def emit(host: str, arch: str, check: str, ok: bool, detail, seconds: float) -> dict:
    rec = {"host": host, "arch": arch, "check": check, "ok": bool(ok), "detail": detail, "seconds": round(seconds, 2)}
    RECORDS.append(rec)
    print(json.dumps(rec, default=str), flush=True)
    return rec


class Phase:
    """``with Phase("name"):`` records wall time in TIMINGS and logs it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        self.t0 = time.perf_counter()
        say(f"phase {self.name} ...")
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        TIMINGS[self.name] = round(TIMINGS.get(self.name, 0.0) + dt, 1)
        say(f"phase {self.name}: {dt:.1f} s{' (failed)' if exc[0] else ''}")
        return False


def run(cmd: list, log_path: str, cwd: str | None = None, env: dict | None = None, timeout: float | None = None) -> None:
    """Run a command, appending its output to ``log_path``; raise with the log's tail on failure."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(map(str, cmd))}\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed (rc {rc}): {' '.join(map(str, cmd))}\n--- {log_path} (tail) ---\n{tail}")


# ----------------------------------------------------------------------------------------------
# Host checkouts
# ----------------------------------------------------------------------------------------------
def is_bare_git(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects"))


def export_tree(gitdir: str, out: str, rev: str = "HEAD") -> list:
    """Write ``rev``'s files into ``out`` (a ``git clone --no-checkout`` of ``gitdir`` so ``rev-parse`` works),
    skipping blobs the mirror lacks. Returns the missing paths."""
    if os.path.exists(out):
        shutil.rmtree(out)
    subprocess.run(["git", "clone", "-q", "--no-checkout", gitdir, out], check=True)
    if rev != "HEAD":
        subprocess.run(["git", "-C", out, "update-ref", "--no-deref", "HEAD", rev], check=True)
    ls = subprocess.run(["git", "--git-dir", gitdir, "ls-tree", "-r", "-z", rev], capture_output=True, check=True).stdout
    missing = []
    cat = subprocess.Popen(["git", "--git-dir", gitdir, "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for entry in filter(None, ls.split(b"\0")):
        meta, path = entry.split(b"\t", 1)
        mode, typ, sha = meta.split()
        if typ != b"blob":
            continue
        cat.stdin.write(sha + b"\n")
        cat.stdin.flush()
        header = cat.stdout.readline().split()
        if header[1] == b"missing":
            missing.append(path.decode())
            continue
        data = cat.stdout.read(int(header[2]))
        cat.stdout.read(1)
        dest = os.path.join(out, path.decode())
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if mode == b"120000":
            os.symlink(data.decode(), dest)
        else:
            with open(dest, "wb") as f:
                f.write(data)
            if mode == b"100755":
                os.chmod(dest, 0o755)
    cat.stdin.close()
    cat.wait()
    subprocess.run(["git", "-C", out, "reset", "-q"], capture_output=True)
    return missing


def checkout(path: str, name: str, work: str) -> str:
    """A host checkout folder: ``path`` itself, or an export of a bare git dir next to the venvs."""
    if not is_bare_git(path):
        return os.path.abspath(path)
    out = os.path.join(os.path.dirname(os.path.abspath(work)), name)
    commit = subprocess.run(["git", "--git-dir", path, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if host_commit(out) != commit:
        missing = export_tree(path, out)
        say(f"exported {path} @ {commit[:10]} -> {out}" + (f" ({len(missing)} absent blobs: {missing})" if missing else ""))
    return out


def host_commit(path: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def install_project(dest: str) -> None:
    """Copy /work/main's current working tree (tracked + untracked, not ignored) to ``dest``."""
    files = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.split(b"\0")
    if os.path.islink(dest) or os.path.isfile(dest):
        os.unlink(dest)
    elif os.path.isdir(dest):
        shutil.rmtree(dest)
    n = 0
    for rel in filter(None, files):
        rel = rel.decode()
        src = os.path.join(REPO, rel)
        if not os.path.isfile(src):  # deleted in the working tree
            continue
        if rel.startswith(("assets/", "docs/")) and os.path.getsize(src) > 2_000_000:
            continue  # big demo data is not needed by the hosts
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy2(src, out)
        n += 1
    say(f"installed {n} files of {REPO} into {dest}")


# ----------------------------------------------------------------------------------------------
# Venvs
# ----------------------------------------------------------------------------------------------
# Imported from a .pth at interpreter start: a meta-path hook that defines torchvision::nms (and a CPU
# kernel) right before torchvision is imported. PyPI's torchvision wheel is a CUDA build whose _C does
# not load on the CPU torch wheel, and its _meta_registrations then fail on the missing operator.
TV_SHIM = r'''
import sys


class _SailscopeTorchvisionShim:
    """Defines torchvision's NMS schemas (no kernels: torchvision's ops stay unavailable, as without _C)."""

    done = False

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision" or _SailscopeTorchvisionShim.done:
            return None
        _SailscopeTorchvisionShim.done = True
        try:
            import torch

            for op in ("nms", "qnms"):
                try:
                    getattr(torch.ops.torchvision, op)
                except (AttributeError, RuntimeError):
                    torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception as exc:  # never break interpreter start
            print(f"[sailscope torchvision shim] {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


sys.meta_path.insert(0, _SailscopeTorchvisionShim())
'''


def constraints_file(work: str) -> str:
    path = os.path.join(work, "constraints.txt")
    with open(path, "w") as f:
        f.write(f"{TORCH_SPEC}\nsetuptools>=77.0.3,<81\n")
    return path


def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def ensure_venv(work: str, name: str, spec: dict, install) -> str:
    """Create/reuse ``<work>/<name>``; ``install(python, log)`` runs when the spec (hashed) changed."""
    venv = os.path.join(work, name)
    marker = os.path.join(venv, ".sailscope_spec")
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    log = os.path.join(work, f"{name}-install.log")
    if not os.path.exists(venv_python(venv)):
        run([sys.executable, "-m", "venv", venv], log)
    py = venv_python(venv)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "_sailscope_tvshim.py"), "w") as f:
        f.write(TV_SHIM)
    with open(os.path.join(site, "_sailscope_tvshim.pth"), "w") as f:
        f.write("import _sailscope_tvshim\n")
    if os.path.isfile(marker) and open(marker).read().strip() == key:
        say(f"venv {venv}: reused")
        return py
    say(f"venv {venv}: installing (log {log})")
    install(py, log)
    with open(marker, "w") as f:
        f.write(key)
    return py


def pip(py: str, args: list, log: str, constraints: str) -> None:
    run([py, "-m", "pip", "install", "--disable-pip-version-check", "-c", constraints, *args], log)


def requirements_without(path: str, drop: tuple, replace: dict | None = None) -> list:
    out = []
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split("=")[0].split(">")[0].split("<")[0].split("~")[0].split("[")[0].strip().lower()
        if name in drop:
            continue
        out.append((replace or {}).get(name, line))
    return out


VERSIONS: dict = {}


def package_versions(py: str) -> dict:
    code = ("import importlib.metadata as m, json\nout = {}\n"
            "for d in ('torch', 'torchvision', 'transformers', 'diffusers', 'numpy', 'safetensors', 'gradio', 'pillow'):\n"
            "    try: out[d] = m.version(d)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    r = subprocess.run([py, "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-500:]}


def host_venv(work: str, name: str, reqs: list, extra: list) -> str:
    """``<work>/<name>`` venv: pip and setuptools, torch pinned to the local CPU wheel, then the host's
    requirements with ours in one resolve (the host's pins win over our lower bounds)."""
    spec = {"torch": TORCH_SPEC, "reqs": reqs, "extra": extra, "v": 1}

    def install(py: str, log: str) -> None:
        c = constraints_file(work)
        pip(py, ["-U", "pip", "setuptools>=77.0.3,<81", "wheel"], log, c)
        pip(py, [TORCH_SPEC], log, c)
        pip(py, [*reqs, *extra], log, c)

    return ensure_venv(work, name, spec, install)


def setup_comfyui(work: str, comfy: str) -> str:
    reqs = requirements_without(os.path.join(comfy, "requirements.txt"), drop=("torch", "torchaudio"))
    return host_venv(work, "comfyui", reqs, ["requests", *PROJECT_DEPS])


def setup_forge(work: str, forge: str) -> str:
    reqs = requirements_without(os.path.join(forge, "requirements_versions.txt"), drop=("torch",),
                                replace={"setuptools": "setuptools>=77.0.3,<81"})
    # joblib: Forge's builtin soft-inpainting script
    return host_venv(work, "forge", reqs, ["torchvision", "requests", "joblib", *PROJECT_DEPS])


# ----------------------------------------------------------------------------------------------
# Random-weight checkpoints (built in the ComfyUI venv with ComfyUI's own LDM classes)
# ----------------------------------------------------------------------------------------------
BUILDER = r'''
"""Build a random-weight single-file checkpoint in LDM layout with ComfyUI's classes; argv: arch out."""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
import torch
import transformers
from safetensors.torch import save_file

import comfy.cli_args
comfy.cli_args.args.cpu = True  # before comfy.model_management is imported (it probes CUDA at import)
import comfy.model_detection
import comfy.ops
import comfy.supported_models
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy.ldm.models.autoencoder import AutoencoderKL

arch, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0 if arch == "sd15" else 1)
BASES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.GroupNorm, torch.nn.LayerNorm)


def random_init(module):
    """ComfyUI's ops skip weight init (torch.empty): run torch's own reset_parameters."""
    for m in module.modules():
        for base in BASES:
            if isinstance(m, base):
                base.reset_parameters(m)
                break
    return module


common = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
          "in_channels": 4, "out_channels": 4, "model_channels": 320, "use_temporal_resblock": False,
          "use_temporal_attention": False}
if arch == "sd15":
    unet_config = dict(common, num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
                       transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
                       use_linear_in_transformer=False, context_dim=768, adm_in_channels=None,
                       num_heads=8, num_head_channels=-1)
else:  # Segmind-Vega family (SDXL conditioning), channel_mult [1, 2, 2]
    unet_config = dict(common, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 2], transformer_depth=[0, 0, 1, 1, 2, 2],
                       transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=1,
                       use_linear_in_transformer=True, context_dim=2048, adm_in_channels=2816, num_classes="sequential",
                       num_heads=-1, num_head_channels=64)
t0 = time.time()
unet = random_init(UNetModel(**unet_config, operations=comfy.ops.disable_weight_init))
sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
n_unet = sum(p.numel() for p in unet.parameters())
del unet

ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
vae = random_init(AutoencoderKL(ddconfig=ddconfig, embed_dim=4))
sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
del vae

here = os.path.join(os.getcwd(), "comfy")
def clip(config_file, with_projection=False):
    cfg = transformers.CLIPTextConfig(**{k: v for k, v in json.load(open(os.path.join(here, config_file))).items()
                                         if k not in ("architectures", "_name_or_path", "transformers_version", "torch_dtype")})
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    # transformers >= 5 drops the "text_model." level from CLIPTextModel's keys; checkpoints carry it
    return {k if k.startswith("text_model.") or k in ("text_projection.weight", "logit_scale") else "text_model." + k: v
            for k, v in cls(cfg).state_dict().items()}

if arch == "sd15":
    te = {"clip_l.transformer." + k: v for k, v in clip("sd1_clip_config.json").items()}
    model_config = comfy.supported_models.SD15(dict(unet_config))
else:
    te = {"clip_l.transformer." + k: v for k, v in clip("sd1_clip_config.json").items()}
    te.update({"clip_g.transformer." + k: v for k, v in clip("clip_config_bigg.json", with_projection=True).items()})
    model_config = comfy.supported_models.SDXL(dict(unet_config))
te = model_config.process_clip_state_dict_for_saving(te)
sd.update(te)
sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}

# the text encoders must load completely (missing keys would stay uninitialized: NaN images)
loaded = model_config.process_clip_state_dict(dict(sd))
counts = {p: sum(k.startswith(p) for k in loaded) for p in ("clip_l.transformer.text_model.", "clip_g.transformer.text_model.")}
want_counts = {"clip_l.transformer.text_model.": 196, "clip_g.transformer.text_model.": 516 if arch == "sdxl" else 0}
if any(counts[p] < n for p, n in want_counts.items()):
    raise SystemExit(f"text encoder keys as ComfyUI reads them: {counts}, wanted at least {want_counts}")
detected = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
name = type(detected).__name__ if detected is not None else None
want = "SD15" if arch == "sd15" else "Segmind_Vega"
if name != want:
    raise SystemExit(f"ComfyUI detects {name}, wanted {want}")
tmp = out + ".tmp"
save_file(sd, tmp, metadata={"sailscope": f"random-weight {arch} test checkpoint"})
os.replace(tmp, out)
print(json.dumps({"arch": arch, "detected": name, "unet_params": n_unet,
                  "params": sum(v.numel() for v in sd.values()), "bytes": os.path.getsize(out),
                  "seconds": round(time.time() - t0, 1)}))
'''



def built_once(work: str, comfy: str, comfy_py: str | None, path: str, key: str, builder: str, args: list,
               label: str) -> None:
    """Run ``builder`` (a script for the ComfyUI venv) to make ``path`` unless ``path.builder`` holds ``key``."""
    marker = path + ".builder"
    if os.path.isfile(path) and os.path.isfile(marker) and open(marker).read() == key:
        return
    if comfy_py is None:
        raise RuntimeError(f"building the test {label} needs the ComfyUI venv (--comfyui)")
    script = os.path.join(work, f"build_{hashlib.sha256(builder.encode()).hexdigest()[:8]}.py")
    with open(script, "w") as f:
        f.write(builder)
    log = os.path.join(work, f"build-{label.replace(' ', '-')}.log")
    run([comfy_py, script, *args], log, cwd=comfy)
    with open(log) as f:
        say(f"built {label}: {f.read().strip().splitlines()[-1]}")
    with open(marker, "w") as f:
        f.write(key)


def build_checkpoints(work: str, comfy: str, comfy_py: str | None, archs: list) -> dict:
    """``{arch: path}`` under ``<work>/ckpts`` (cached: rebuilt only when the builder changed)."""
    ckdir = os.path.join(work, "ckpts")
    os.makedirs(ckdir, exist_ok=True)
    key = hashlib.sha256(BUILDER.encode()).hexdigest()[:16]
    paths = {}
    for arch in archs:
        path = os.path.join(ckdir, CKPT[arch])
        built_once(work, comfy, comfy_py, path, key, BUILDER, [arch, path], f"{arch} checkpoint")
        paths[arch] = path
    return paths


# ----------------------------------------------------------------------------------------------
# Random LoRA for the SD 1.x test checkpoint (``lora`` check; built in the ComfyUI venv, checked with ComfyUI's
# own key map)
# ----------------------------------------------------------------------------------------------
LORA = {"sd15": "sailscope_rh_sd15_lora.safetensors"}
LORA_RANK, LORA_UP_STD = 4, 0.1
LORA_BUILDER = r'''
"""Build a random kohya-style LoRA for a checkpoint's UNet attention projections; argv: ckpt out rank up_std.

Keys ``lora_unet_<diffusers module path with _>.lora_down.weight / .lora_up.weight / .alpha`` (kohya's sd-scripts
layout, which A1111/Forge and ComfyUI read), for every attn1/attn2 to_q/to_k/to_v/to_out.0 Linear. Checked here
with ComfyUI's ``model_lora_keys_unet`` + ``load_lora``: every key must map and load (no "lora key not loaded").
"""
import json, logging, os, re, sys, time
sys.path.insert(0, os.getcwd())
import torch
from safetensors.torch import save_file

import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.lora
import comfy.sd

ckpt, out, rank, up_std = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
t0 = time.time()
torch.manual_seed(7)
model = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False)[0]
sd = model.model.state_dict()
pat = re.compile(r"^diffusion_model\..*\.attn[12]\.to_(q|k|v|out\.0)\.weight$")
targets = sorted(k for k in sd if pat.match(k))
key_map = comfy.lora.model_lora_keys_unet(model.model, {})
names = {}
for name, target in key_map.items():
    if target in targets and name.startswith("lora_unet_"):
        ldm_style = "lora_unet_" + target[len("diffusion_model."):-len(".weight")].replace(".", "_")
        if name != ldm_style or target not in names:  # prefer the diffusers (kohya) path
            names[target] = name
lora = {}
for target in targets:
    n_out, n_in = sd[target].shape
    name = names[target]
    lora[name + ".lora_down.weight"] = torch.randn(rank, n_in) / n_in ** 0.5
    lora[name + ".lora_up.weight"] = torch.randn(n_out, rank) * up_std
    lora[name + ".alpha"] = torch.tensor(float(rank))
lora = {k: v.to(torch.float16).contiguous() for k, v in lora.items()}

not_loaded = []


class Grab(logging.Handler):
    def emit(self, record):
        if "lora key not loaded" in record.getMessage():
            not_loaded.append(record.getMessage())


logging.getLogger().addHandler(Grab())
patches = comfy.lora.load_lora(lora, key_map)
if not_loaded or sorted(patches) != targets:
    raise SystemExit(f"ComfyUI does not load the LoRA completely: {len(patches)}/{len(targets)} patched, "
                     f"not loaded: {not_loaded[:5]}")
tmp = out + ".tmp"
save_file(lora, tmp, metadata={"sailscope": "random-weight LoRA for the sd15 test checkpoint",
                               "ss_network_dim": str(rank), "ss_network_alpha": str(rank)})
os.replace(tmp, out)
ldm_named = sum(n.startswith(("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks"))
                for n in names.values())
print(json.dumps({"modules": len(targets), "tensors": len(lora), "example": names[targets[0]],
                  "ldm_named": ldm_named, "bytes": os.path.getsize(out), "seconds": round(time.time() - t0, 1)}))
'''


def build_loras(work: str, comfy: str, comfy_py: str | None, ckpts: dict) -> dict:
    """``{arch: path}`` of the random LoRAs (SD 1.x only) under ``<work>/ckpts``; cached like the checkpoints
    (rebuilt when the LoRA builder, its settings or the checkpoint builder changed)."""
    paths = {}
    for arch, name in LORA.items():
        if arch not in ckpts:
            continue
        path = os.path.join(os.path.dirname(ckpts[arch]), name)
        key = hashlib.sha256((LORA_BUILDER + BUILDER + f"{LORA_RANK} {LORA_UP_STD}").encode()).hexdigest()[:16]
        built_once(work, comfy, comfy_py, path, key, LORA_BUILDER,
                   [ckpts[arch], path, str(LORA_RANK), str(LORA_UP_STD)], f"{arch} LoRA")
        paths[arch] = path
    return paths

# ----------------------------------------------------------------------------------------------
# Servers and HTTP
# ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, payload=None, timeout: float = 600.0, raw: bool = False):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url}: HTTP {exc.code}: {exc.read()[:2000].decode(errors='replace')}") from None
    return body if raw else json.loads(body)


class Server:
    """A host server in its own process group, output to a log file; ``stop()`` ends the group."""

    def __init__(self, name: str, cmd: list, cwd: str, env: dict, log_path: str, ready_url: str) -> None:
        self.name, self.log_path, self.ready_url = name, log_path, ready_url
        self.log = open(log_path, "w")
        say(f"starting {name}: {' '.join(cmd)} (log {log_path})")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during start-up:\n{self.tail()}")
            try:
                urllib.request.urlopen(self.ready_url, timeout=5).read()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(1.0)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
            except ProcessLookupError:
                pass
        self.log.close()
        say(f"stopped {self.name}")


def host_env(py: str) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DIFFUSERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "GRADIO_ANALYTICS_ENABLED": "False", "DO_NOT_TRACK": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    env["PATH"] = os.path.dirname(py) + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = os.path.dirname(os.path.dirname(py))
    env.pop("PYTHONPATH", None)
    return env


def pixels(png: bytes):
    """(size, RGB bytes) of a PNG."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    return im.size, im.tobytes()


def pixel_diff(a: bytes, b: bytes) -> dict:
    """Max/mean absolute difference between two PNGs' pixels (None when the sizes differ)."""
    (sa, pa), (sb, pb) = pixels(a), pixels(b)
    if sa != sb:
        return {"equal": False, "sizes": [sa, sb]}
    diffs = [abs(x - y) for x, y in zip(pa, pb)]
    return {"equal": pa == pb, "max_abs": max(diffs), "mean_abs": round(sum(diffs) / len(diffs), 3), "size": sa}


# ----------------------------------------------------------------------------------------------
# Peak resident memory of a server (CPU RSS): VmHWM of the process and its descendants
# ----------------------------------------------------------------------------------------------
def proc_tree(root: int) -> list:
    """``root`` and its live descendants (by /proc/<pid>/stat ppid)."""
    children: dict = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def proc_status(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    d = {}
    for line in lines:
        k, _, v = line.partition(":")
        if k in ("Name", "VmHWM", "VmRSS"):
            d[k] = v.strip() if k == "Name" else int(v.split()[0]) / 1024.0  # kB -> MiB
    return d


def mem_read(root: int) -> dict:
    """Peak (VmHWM) and current (VmRSS) resident memory in MiB, summed over ``root`` and its descendants
    (the sum of peaks bounds the joint peak from above; with one process it is the peak)."""
    procs = []
    for pid in proc_tree(root):
        st = proc_status(pid)
        if st and "VmHWM" in st:  # kernel threads / zombies have no Vm lines
            procs.append({"pid": pid, "name": st.get("Name"), "hwm_mib": round(st["VmHWM"], 1), "rss_mib": round(st["VmRSS"], 1)})
    return {"hwm_mib": round(sum(p["hwm_mib"] for p in procs), 1), "rss_mib": round(sum(p["rss_mib"] for p in procs), 1),
            "procs": procs}


def mem_reset(root: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/<pid>/clear_refs``, Linux >= 4.0) for the whole tree, so
    the next read is the peak of what ran in between. False when the kernel refuses (then VmHWM stays a
    lifetime figure)."""
    ok = True
    for pid in proc_tree(root):
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    if ok:  # verify: right after the reset the peak equals the current RSS (it can only have grown since)
        m = mem_read(root)
        ok = all(p["hwm_mib"] - p["rss_mib"] < 16.0 for p in m["procs"])
    return ok


class MemTrack:
    """Reads for the ``memory`` check: ``reset()`` before a generation, ``read(tag)`` right after it."""

    def __init__(self, pid: int) -> None:
        self.pid, self.reads, self.resets = pid, {}, []
        self.before = mem_read(pid)["hwm_mib"]  # peak since the last reset (or start): this arch's model load included

    def reset(self, tag: str) -> None:
        ok = mem_reset(self.pid)
        self.resets.append(ok)
        self.reads[f"rss_before_{tag}"] = mem_read(self.pid)["rss_mib"]

    def read(self, tag: str) -> dict:
        m = mem_read(self.pid)
        self.reads[f"peak_{tag}"] = m["hwm_mib"]
        self.reads["procs"] = [{"pid": p["pid"], "name": p["name"]} for p in m["procs"]]
        return m

    def detail(self, note: str) -> dict:
        r = self.reads
        plain, sail, lm = r.get("peak_plain"), r.get("peak_sail"), r.get("peak_sail_low_memory")
        d = {"peak_plain_mib": plain, "peak_sail_mib": sail,
             "sail_extra_mib": round(sail - plain, 1) if plain is not None and sail is not None else None,
             "peak_sail_low_memory_mib": lm,
             "low_memory_extra_mib": round(lm - plain, 1) if plain is not None and lm is not None else None,
             "rss_before_plain_mib": r.get("rss_before_plain"), "rss_before_sail_mib": r.get("rss_before_sail"),
             "rss_before_sail_low_memory_mib": r.get("rss_before_sail_low_memory"),
             "peak_incl_model_load_mib": self.before, "processes": r.get("procs"),
             "hwm_reset": bool(self.resets) and all(self.resets), "runs": note}
        if not d["hwm_reset"]:
            d["caveat"] = ("/proc/<pid>/clear_refs refused: VmHWM is a lifetime high-water mark, so each peak is the "
                           "maximum since the server started (model loads and earlier archs included)")
        return d


class Check:
    """``with Check(host, arch, name) as c: ... c.ok = ...; c.detail = ...`` -> one record; exceptions fail it."""

    def __init__(self, host: str, arch: str, name: str, seconds: float = 0.0) -> None:
        self.host, self.arch, self.name = host, arch, name
        self.ok, self.detail = False, None
        self.seconds = seconds  # time already spent on this check (the generation it reads)

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, typ, exc, tb):
        if exc is not None:
            self.ok = False
            self.detail = {"error": f"{typ.__name__}: {exc}", **(self.detail if isinstance(self.detail, dict) else {})}
        emit(self.host, self.arch, self.name, self.ok, self.detail, self.seconds + time.perf_counter() - self.t0)
        return typ is not None and issubclass(typ, Exception)


# ----------------------------------------------------------------------------------------------
# ComfyUI
# ----------------------------------------------------------------------------------------------
COMFY_NODES = ("SailScopeNoise", "SailScopeSharpness", "SailScopeCompare")


def comfy_base_graph(arch: str) -> dict:
    g = GEN[arch]
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT[arch]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": g["width"], "height": g["height"], "batch_size": 1}},
        "ksel": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "normal",
                                                             "steps": g["steps"], "denoise": 1.0}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                         "negative": ["neg", 0], "cfg": g["cfg"]}},
    }


def comfy_branch(graph: dict, tag: str, arch: str, noise_ref: list, guider: str = "guider", sched: str = "sched") -> str:
    """noise -> SamplerCustomAdvanced -> VAEDecode -> SaveImage; returns the decode node id."""
    graph[f"sca_{tag}"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": noise_ref, "guider": [guider, 0], "sampler": ["ksel", 0], "sigmas": [sched, 0],
        "latent_image": ["latent", 0]}}
    graph[f"dec_{tag}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"sca_{tag}", 0], "vae": ["ckpt", 2]}}
    graph[f"save_{tag}"] = {"class_type": "SaveImage", "inputs": {"images": [f"dec_{tag}", 0],
                                                                  "filename_prefix": f"rh_{arch}_{tag}"}}
    return f"dec_{tag}"


def comfy_sail_node(arch: str, sail: bool, low_memory: bool = False, model: str = "ckpt", sched: str = "sched") -> dict:
    s = SAIL_ON if sail else {"threshold": 8.2, "max_steps": 10, "lr": 0.05, "objective": "reference", "candidates": 1}
    return {"class_type": "SailScopeNoise", "inputs": {
        "model": [model, 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "noise_seed": SEED, "cfg": GEN[arch]["cfg"], "sail": sail, **s, "sigmas": [sched, 0],
        "low_memory": low_memory}}


def comfy_graphs_memory(arch: str) -> list:
    """Four growing graphs, each the previous plus one branch (cached nodes do not run again): stock
    RandomNoise (loads the model), + SailScopeNoise sail=false (the plain generation measured), + SAIL on, +
    SAIL on with low_memory. Node ids match comfy_graph_off/on, so those reuse the outputs."""
    g = comfy_base_graph(arch)
    g["rnd"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}}
    comfy_branch(g, "stock", arch, ["rnd", 0])
    out = [dict(g)]
    g["sail_off"] = comfy_sail_node(arch, False)
    comfy_branch(g, "off", arch, ["sail_off", 0])
    out.append(dict(g))
    g["sail_on"] = comfy_sail_node(arch, True)
    comfy_branch(g, "on", arch, ["sail_on", 0])
    g["show_on"] = {"class_type": "PreviewAny", "inputs": {"source": ["sail_on", 1]}}
    out.append(dict(g))
    g["sail_on_lm"] = comfy_sail_node(arch, True, low_memory=True)
    comfy_branch(g, "on_lm", arch, ["sail_on_lm", 0])
    g["show_on_lm"] = {"class_type": "PreviewAny", "inputs": {"source": ["sail_on_lm", 1]}}
    out.append(dict(g))
    return out


def comfy_graph_off(arch: str) -> dict:
    """Stock RandomNoise vs our node with SAIL off; the probe at the seed's noise; compare(stock, off)."""
    g = comfy_base_graph(arch)
    g["rnd"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}}
    comfy_branch(g, "stock", arch, ["rnd", 0])
    g["sail_off"] = comfy_sail_node(arch, False)
    comfy_branch(g, "off", arch, ["sail_off", 0])
    g["show_off"] = {"class_type": "PreviewAny", "inputs": {"source": ["sail_off", 1]}}
    g["probe"] = {"class_type": "SailScopeSharpness", "inputs": {
        "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "noise_seed": SEED, "method": "fd", "spectrum_k": 0}}
    g["show_probe"] = {"class_type": "PreviewAny", "inputs": {"source": ["probe", 2]}}
    g["show_probe_value"] = {"class_type": "PreviewAny", "inputs": {"source": ["probe", 0]}}
    g["save_probe_plot"] = {"class_type": "SaveImage", "inputs": {"images": ["probe", 1], "filename_prefix": f"rh_{arch}_probeplot"}}
    g["cmp"] = {"class_type": "SailScopeCompare", "inputs": {"original": ["dec_stock", 0], "sail": ["dec_off", 0],
                                                             "sail_report": ["sail_off", 1]}}
    g["save_cmp"] = {"class_type": "SaveImage", "inputs": {"images": ["cmp", 0], "filename_prefix": f"rh_{arch}_cmp"}}
    g["show_cmp"] = {"class_type": "PreviewAny", "inputs": {"source": ["cmp", 1]}}
    return g


def comfy_graph_on(arch: str) -> dict:
    """SAIL on (threshold 0, 2 Adam steps) next to SAIL off (cached from the first prompt); plot saved."""
    g = comfy_base_graph(arch)
    g["sail_off"] = comfy_sail_node(arch, False)
    comfy_branch(g, "off", arch, ["sail_off", 0])
    g["sail_on"] = comfy_sail_node(arch, True)
    comfy_branch(g, "on", arch, ["sail_on", 0])
    g["show_on"] = {"class_type": "PreviewAny", "inputs": {"source": ["sail_on", 1]}}
    g["save_plot_on"] = {"class_type": "SaveImage", "inputs": {"images": ["sail_on", 2], "filename_prefix": f"rh_{arch}_sailplot"}}
    g["probe_on"] = {"class_type": "SailScopeSharpness", "inputs": {
        "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "noise_seed": SEED, "method": "fd", "spectrum_k": 0, "noise": ["sail_on", 0]}}
    g["show_probe_on"] = {"class_type": "PreviewAny", "inputs": {"source": ["probe_on", 2]}}
    g["cmp_on"] = {"class_type": "SailScopeCompare", "inputs": {"original": ["dec_off", 0], "sail": ["dec_on", 0],
                                                                "original_report": ["sail_off", 1], "sail_report": ["sail_on", 1]}}
    g["save_cmp_on"] = {"class_type": "SaveImage", "inputs": {"images": ["cmp_on", 0], "filename_prefix": f"rh_{arch}_cmpon"}}
    return g


def comfy_graph_lora(arch: str) -> dict:
    """The test LoRA (LoraLoaderModelOnly, strength 1) between the checkpoint loader and everything that samples:
    stock RandomNoise, SailScopeNoise sail=false / sail=true, and the sharpness probe at the seed's noise."""
    g = comfy_base_graph(arch)
    g["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["ckpt", 0], "lora_name": LORA[arch],
                                                                 "strength_model": 1.0}}
    g["sched_l"] = dict(g["sched"], inputs=dict(g["sched"]["inputs"], model=["lora", 0]))
    g["guider_l"] = dict(g["guider"], inputs=dict(g["guider"]["inputs"], model=["lora", 0]))
    g["rnd"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}}
    comfy_branch(g, "lora_stock", arch, ["rnd", 0], guider="guider_l", sched="sched_l")
    g["sail_off_l"] = comfy_sail_node(arch, False, model="lora", sched="sched_l")
    comfy_branch(g, "lora_off", arch, ["sail_off_l", 0], guider="guider_l", sched="sched_l")
    g["sail_on_l"] = comfy_sail_node(arch, True, model="lora", sched="sched_l")
    comfy_branch(g, "lora_on", arch, ["sail_on_l", 0], guider="guider_l", sched="sched_l")
    g["show_on_l"] = {"class_type": "PreviewAny", "inputs": {"source": ["sail_on_l", 1]}}
    g["probe_l"] = {"class_type": "SailScopeSharpness", "inputs": {
        "model": ["lora", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "noise_seed": SEED, "method": "fd", "spectrum_k": 0}}
    g["show_probe_l"] = {"class_type": "PreviewAny", "inputs": {"source": ["probe_l", 2]}}
    return g


class Comfy:
    def __init__(self, base: str) -> None:
        self.base = base
        self.client_id = f"sailscope-real-hosts-{os.getpid()}"

    def run_prompt(self, graph: dict, timeout: float = 900.0) -> dict:
        """Queue a graph and wait; returns ``{"status": ..., "outputs": ..., "error": str|None}``."""
        r = http("POST", f"{self.base}/prompt", {"prompt": graph, "client_id": self.client_id})
        if r.get("node_errors"):
            raise RuntimeError(f"ComfyUI rejected the graph: {json.dumps(r['node_errors'])[:2000]}")
        pid = r["prompt_id"]
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = http("GET", f"{self.base}/history/{pid}")
            if pid in h:  # ComfyUI adds the entry when the prompt has finished (success or error)
                entry = h[pid]
                status = entry.get("status", {})
                error = None
                for kind, data in status.get("messages", []):
                    if kind == "execution_error":
                        error = (f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                                 f"{data.get('exception_message')}\n" + "".join(data.get("traceback", []))[-3000:])
                return {"status": status.get("status_str"), "outputs": entry.get("outputs", {}), "error": error}
            time.sleep(0.5)
        raise RuntimeError(f"prompt {pid} did not finish in {timeout:.0f} s")

    def image(self, outputs: dict, node: str, index: int = 0) -> bytes:
        info = outputs[node]["images"][index]
        q = urllib.parse.urlencode({"filename": info["filename"], "subfolder": info.get("subfolder", ""),
                                    "type": info.get("type", "output")})
        return http("GET", f"{self.base}/view?{q}", raw=True)

    @staticmethod
    def text(outputs: dict, node: str) -> str:
        t = outputs[node]["text"]
        return t[0] if isinstance(t, list) else str(t)


def parse_comfy_report(report: str) -> dict:
    """Adam steps / SAIL loss before -> after from SailScopeNoise's report (first image)."""
    out: dict = {}
    for line in report.splitlines():
        if line.startswith("Adam steps:"):
            out["steps"] = int(line.split(":", 1)[1].split(",")[0].strip())
        elif line.startswith("accepted:"):
            out["accepted"] = line.split(":", 1)[1].split(",")[0].strip()
        elif line.startswith("SAIL loss:"):
            a, b = line.split(":", 1)[1].split("->")
            out["loss_before"], out["loss_after"] = float(a.split(",")[0]), float(b.split(",")[0])
    return out


def run_comfyui(comfy: str, py: str, work: str, ckpts: dict, archs: list) -> None:
    host = "comfyui"
    with Phase("comfyui_install_project"):
        for arch, path in ckpts.items():
            link = os.path.join(comfy, "models", "checkpoints", CKPT[arch])
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(path, link)
        for arch, path in LORA_PATHS.items():
            link = os.path.join(comfy, "models", "loras", LORA[arch])
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(path, link)
        install_project(os.path.join(comfy, "custom_nodes", "sailscope"))
    port = free_port()
    out_dir = os.path.join(work, "comfyui-output")
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [py, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--output-directory", out_dir, "--preview-method", "none"]
    server = Server("ComfyUI", cmd, comfy, host_env(py), os.path.join(work, "comfyui-server.log"),
                    f"http://127.0.0.1:{port}/system_stats")
    try:
        with Phase("comfyui_start"):
            server.wait_ready(300)
        c = Comfy(f"http://127.0.0.1:{port}")
        with Check(host, "-", "registered") as ck:
            info = http("GET", f"{c.base}/object_info")
            have = {n: n in info for n in COMFY_NODES}
            import_errors = [line for line in server.tail(20000).splitlines() if "sailscope" in line.lower() and
                             ("error" in line.lower() or "fail" in line.lower())]
            ck.ok = all(have.values()) and "PreviewAny" in info
            ck.detail = {"nodes": have, "PreviewAny": "PreviewAny" in info, "log": import_errors[-5:]}
        for arch in archs:
            with Phase(f"comfyui_{arch}"):
                comfy_arch(c, server, arch)
    finally:
        server.stop()


def sig4(x) -> str | None:
    return None if x is None else f"{float(x):.4g}"


def same_image(a: bytes, b: bytes) -> tuple:
    """(ok, detail): pixel-identical, or max abs diff <= 1 (of 255) on the uint8 RGB pixels."""
    d = pixel_diff(a, b)
    verdict = ("pixel-identical" if d["equal"] else
               "max abs diff <= 1/255" if d.get("max_abs") is not None and d["max_abs"] <= 1 else "different")
    return verdict != "different", dict(d, verdict=verdict)


def comfy_memory_and_low_memory(c: Comfy, server: Server, arch: str) -> dict:
    """The ``memory`` and ``low_memory_same_result`` checks (run first in each arch: the model loads in the first
    prompt, VmHWM is reset before each measured prompt). Returns the SAIL-on prompt's seconds."""
    host = "comfyui"
    graphs = comfy_graphs_memory(arch)
    res: dict = {}
    secs: dict = {}
    mt = None
    for tag, graph in zip(("stock", "plain", "sail", "sail_low_memory"), graphs):
        if mt is not None:
            mt.reset(tag)
        t0 = time.perf_counter()
        try:
            res[tag] = c.run_prompt(graph)
        except Exception as exc:
            res[tag] = {"status": "exception", "outputs": {}, "error": f"{type(exc).__name__}: {exc}"}
        secs[tag] = round(time.perf_counter() - t0, 1)
        if mt is None:
            mt = MemTrack(server.proc.pid)  # after the model load
        else:
            mt.read(tag)
    on, lm = res["sail"], res["sail_low_memory"]
    with Check(host, arch, "memory", secs["plain"] + secs["sail"]) as ck:
        ck.detail = mt.detail("stock RandomNoise prompt first (loads the model; not measured), then VmHWM reset -> "
                              "SailScopeNoise sail=false branch (plain) -> reset -> SAIL on branch -> reset -> SAIL on "
                              "low_memory branch; model, text encoders and scheduler are cached, so each measured "
                              "prompt runs noise + sampling + VAE decode (+ SAIL)")
        ck.detail["prompt_seconds"] = secs
        ck.detail["status"] = {k: v["status"] for k, v in res.items()}
        if "show_on" not in on["outputs"] or "save_on" not in on["outputs"]:
            raise RuntimeError(on["error"] or "SAIL-on outputs missing")
        ck.ok = on["status"] == "success"
    with Check(host, arch, "low_memory_same_result", secs["sail_low_memory"]) as ck:
        if "show_on_lm" not in lm["outputs"] or "save_on_lm" not in lm["outputs"]:
            raise RuntimeError(lm["error"] or "SAIL-on low_memory outputs missing")
        if "save_on" not in on["outputs"]:
            raise RuntimeError(on["error"] or "SAIL-on outputs missing")
        same, d = same_image(c.image(on["outputs"], "save_on"), c.image(lm["outputs"], "save_on_lm"))
        r0, r1 = Comfy.text(on["outputs"], "show_on"), Comfy.text(lm["outputs"], "show_on_lm")
        p0, p1 = parse_comfy_report(r0), parse_comfy_report(r1)
        losses = {k: [sig4(p0.get(k)), sig4(p1.get(k))] for k in ("loss_before", "loss_after")}
        ck.detail = {"image": d, "loss_4sig (off, on)": losses, "steps": [p0.get("steps"), p1.get("steps")],
                     "reports_identical": r0 == r1, "report_low_memory": r1}
        ck.ok = (same and p0.get("steps") == p1.get("steps") and all(a is not None and a == b for a, b in losses.values()))
    return {"sail_seconds": secs["sail"]}


def comfy_arch(c: Comfy, server: Server, arch: str) -> None:
    host = "comfyui"
    mem = comfy_memory_and_low_memory(c, server, arch)
    # the SAIL-on graph first: its SAIL nodes are still cached from the memory prompts
    comfy_on_checks(c, arch, mem["sail_seconds"])
    t0 = time.perf_counter()
    res = c.run_prompt(comfy_graph_off(arch))
    seconds_off = time.perf_counter() - t0
    outs = res["outputs"]
    err = res["error"]
    with Check(host, arch, "sail_off_equals_stock", seconds_off) as ck:
        ck.detail = {"prompt_seconds": round(seconds_off, 1), "status": res["status"]}
        if err and not ("save_stock" in outs and "save_off" in outs):
            raise RuntimeError(err)
        stock_png = c.image(outs, "save_stock")
        BASELINE.setdefault((host, arch), {})["stock_png"] = stock_png
        d = pixel_diff(stock_png, c.image(outs, "save_off"))
        ck.detail.update(d, report=Comfy.text(outs, "show_off") if "show_off" in outs else None)
        ck.ok = d["equal"]
    with Check(host, arch, "probe") as ck:
        if "show_probe" not in outs:
            raise RuntimeError(err or "no probe output")
        report = Comfy.text(outs, "show_probe")
        value = float(Comfy.text(outs, "show_probe_value"))
        ck.detail = {"sharpness": value, "report": report, "plot": "save_probe_plot" in outs}
        ck.ok = value == value and value >= 0 and "save_probe_plot" in outs and "Wen" in report
    with Check(host, arch, "compare") as ck:
        if "save_cmp" not in outs:
            raise RuntimeError(err or "no compare output")
        size, _ = pixels(c.image(outs, "save_cmp"))
        report = Comfy.text(outs, "show_cmp")
        ck.detail = {"size": size, "report": report}
        ck.ok = size[0] >= 2 * GEN[arch]["width"] and "[SAIL]" in report
    if arch in LORA_PATHS:
        comfy_lora_check(c, server, arch)


def report_wen(report: str) -> float | None:
    """Step-1 Wen at the start noise from a SailScopeNoise report (``Wen (step 1): before -> after``) or a
    SailScopeSharpness report (``Wen ‖eps_c - eps_u‖ (step 1): value``); first image."""
    for line in report.splitlines():
        if line.startswith("Wen") and "(step 1):" in line:
            first = line.split("(step 1):", 1)[1].split("->")[0].strip().strip("[]").split(",")[0]
            try:
                return float(first)
            except ValueError:
                return None
    return None


def log_since(server: Server, offset: int) -> str:
    """The server log from byte ``offset`` on (what the server printed since then)."""
    server.log.flush()
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def rel_diff(a, b) -> float | None:
    return None if a is None or b is None else abs(a - b) / max(abs(a), abs(b), 1e-12)


def comfy_lora_check(c: Comfy, server: Server, arch: str) -> None:
    """``lora``: the test LoRA through LoraLoaderModelOnly; the no-LoRA results come from the earlier prompts."""
    host = "comfyui"
    base = BASELINE.get((host, arch), {})
    with Check(host, arch, "lora") as ck:
        log0 = os.path.getsize(server.log_path)
        t0 = time.perf_counter()
        res = c.run_prompt(comfy_graph_lora(arch))
        outs, err = res["outputs"], res["error"]
        not_loaded = [line.strip() for line in log_since(server, log0).splitlines() if "lora key not loaded" in line]
        ours = [line for line in not_loaded if "lora_unet_" in line]
        ck.detail = {"lora": LORA[arch], "prompt_seconds": round(time.perf_counter() - t0, 1), "status": res["status"],
                     "log_lora_key_not_loaded": not_loaded[:10]}
        want = ("save_lora_stock", "save_lora_off", "save_lora_on", "show_on_l", "show_probe_l")
        if not all(k in outs for k in want):
            raise RuntimeError(err or f"outputs missing: {[k for k in want if k not in outs]}")
        stock_l = c.image(outs, "save_lora_stock")
        parts, d = {}, ck.detail
        # (1) ComfyUI applied it: no key left unloaded, and the stock image changed
        d["stock_lora_vs_stock"] = pixel_diff(base["stock_png"], stock_l) if base.get("stock_png") else None
        parts["applied"] = not ours and d["stock_lora_vs_stock"] is not None and not d["stock_lora_vs_stock"]["equal"]
        # (2) SAIL off + LoRA = RandomNoise + LoRA
        d["sail_off_vs_stock_with_lora"] = pixel_diff(stock_l, c.image(outs, "save_lora_off"))
        parts["sail_off_equals_stock"] = d["sail_off_vs_stock_with_lora"]["equal"]
        # (3) SAIL on + LoRA: the start loss is the patched model's (differs from the no-LoRA one) and went down
        report = Comfy.text(outs, "show_on_l")
        p = parse_comfy_report(report)
        start0 = base.get("start_loss")
        d.update(report_sail_on_lora=report, parsed=p, start_loss_without_lora=start0,
                 start_loss_rel_diff=rel_diff(p.get("loss_before"), start0),
                 image_sail_on_vs_off_with_lora=pixel_diff(c.image(outs, "save_lora_off"), c.image(outs, "save_lora_on")))
        parts["sail_on_sees_lora"] = (p.get("steps", 0) > 0 and "loss_before" in p and start0 is not None
                                      and sig4(p["loss_before"]) != sig4(start0) and p["loss_after"] < p["loss_before"])
        # (4) the probe with the LoRA model at the seed's noise = the SAIL node's step-1 Wen before (both patched)
        probe_report = Comfy.text(outs, "show_probe_l")
        w_probe, w_sail = report_wen(probe_report), report_wen(report)
        d.update(report_probe_with_lora=probe_report, wen_probe=w_probe, wen_sail_before=w_sail,
                 wen_rel_diff=rel_diff(w_probe, w_sail), wen_without_lora=base.get("wen_before"))
        parts["probe_wen_matches_sail"] = d["wen_rel_diff"] is not None and d["wen_rel_diff"] <= 1e-3
        d["parts"] = parts
        ck.ok = all(parts.values())


def comfy_on_checks(c: Comfy, arch: str, sail_seconds: float) -> None:
    host = "comfyui"
    t0 = time.perf_counter()
    res = c.run_prompt(comfy_graph_on(arch))
    seconds_on = time.perf_counter() - t0
    outs, err = res["outputs"], res["error"]
    with Check(host, arch, "sail_on", seconds_on + sail_seconds) as ck:
        ck.detail = {"prompt_seconds": round(seconds_on, 1), "sail_prompt_seconds (memory check)": sail_seconds,
                     "status": res["status"]}
        if "show_on" not in outs or "save_on" not in outs:
            raise RuntimeError(err or "SAIL-on outputs missing")
        report = Comfy.text(outs, "show_on")
        parsed = parse_comfy_report(report)
        d = pixel_diff(c.image(outs, "save_off"), c.image(outs, "save_on"))
        ck.detail.update(parsed=parsed, report=report, image_vs_off=d,
                         probe_on=Comfy.text(outs, "show_probe_on") if "show_probe_on" in outs else None)
        ck.ok = (parsed.get("steps", 0) > 0 and not d["equal"] and "loss_after" in parsed
                 and parsed["loss_after"] < parsed["loss_before"])
        wen = [line for line in report.splitlines() if line.startswith("Wen (step 1):")]
        METRICS[("comfyui", arch)] = {"loss_after": parsed.get("loss_after"),
                                      "wen_before": float(wen[0].split(":", 1)[1].split("->")[0]) if wen else None}
        BASELINE.setdefault(("comfyui", arch), {}).update(start_loss=parsed.get("loss_before"),
                                                          wen_before=report_wen(report))
    with Check(host, arch, "diagnostics") as ck:
        if "save_plot_on" not in outs:
            raise RuntimeError(err or "no SAIL plot saved")
        size, _ = pixels(c.image(outs, "save_plot_on"))
        cmp_size = pixels(c.image(outs, "save_cmp_on"))[0] if "save_cmp_on" in outs else None
        ck.detail = {"plot_size": size, "compare_size": cmp_size}
        ck.ok = size[0] >= 256 and cmp_size is not None


# ----------------------------------------------------------------------------------------------
# Forge
# ----------------------------------------------------------------------------------------------
FORGE_TITLE = "SAIL Scope"
ARG_ORDER = ("sail", "objective", "threshold", "max_steps", "candidates", "lr", "sharpness", "show_original", "save_plots",
             "low_memory")  # extension/a1111.py ARG_NAMES


def forge_args(**kw) -> list:
    d = {"sail": False, "objective": "reference", "threshold": 8.2, "max_steps": 10, "candidates": 1, "lr": 0.05,
         "sharpness": "fd", "show_original": False, "save_plots": True, "low_memory": False}
    d.update(kw)
    return [d[k] for k in ARG_ORDER]


def forge_payload(arch: str, script_args: list | None, prompt: str = PROMPT) -> dict:
    g = GEN[arch]
    p = {"prompt": prompt, "negative_prompt": NEGATIVE, "seed": SEED, "steps": g["steps"], "cfg_scale": g["cfg"],
         "width": g["width"], "height": g["height"], "sampler_name": "Euler", "scheduler": "Automatic",
         "batch_size": 1, "n_iter": 1, "send_images": True, "save_images": False,
         # live previews would load the "Approx NN" VAE, which Forge downloads for SDXL (no internet here)
         "override_settings": {"sd_model_checkpoint": CKPT[arch], "live_previews_enable": False},
         "override_settings_restore_afterwards": False}
    if script_args is not None:
        p["alwayson_scripts"] = {FORGE_TITLE: {"args": script_args}}
    return p


def forge_txt2img(base: str, arch: str, script_args: list | None, prompt: str = PROMPT) -> dict:
    t0 = time.perf_counter()
    r = http("POST", f"{base}/sdapi/v1/txt2img", forge_payload(arch, script_args, prompt), timeout=1200)
    info = json.loads(r["info"]) if isinstance(r.get("info"), str) else (r.get("info") or {})
    return {"images": [base64.b64decode(s.split(",", 1)[-1]) for s in r.get("images", [])], "info": info,
            "seconds": round(time.perf_counter() - t0, 1)}


def infotext_params(info: dict) -> dict:
    """The first image's infotext as ``{key: value}`` (the registry's parser of A1111's ``Key: value, ...``)."""
    texts = info.get("infotexts") or [""]
    return infotext_registry().parse_png_text(texts[0])


def sail_keys(params: dict) -> dict:
    return {k: v for k, v in params.items() if k.startswith("SAIL")}


_INFOTEXT = None


def infotext_registry():
    """The project's infotext key registry (core/io/infotext.py: stdlib only), loaded by path from this working tree,
    so the checks follow the keys the extension writes (``SAIL steps`` taken, ``SAIL max steps`` the cap ...)."""
    global _INFOTEXT
    if _INFOTEXT is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_sailscope_infotext", os.path.join(REPO, "core", "io", "infotext.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look the module up while the class is made
        spec.loader.exec_module(mod)
        _INFOTEXT = mod
    return _INFOTEXT


def K(name: str) -> str:
    """Infotext key text of a registry entry (``K("loss")`` -> ``"SAIL loss"``)."""
    return infotext_registry().text(name)


def sail_result(sk: dict) -> dict:
    """SAIL's per-image result keys from an infotext: steps taken, start loss, loss, converged."""
    out = {}
    for name in ("steps", "start_loss", "loss", "converged"):
        v = sk.get(K(name))
        if v is None:
            continue
        try:
            out[name] = int(float(v)) if name == "steps" else float(v) if name != "converged" else v
        except ValueError:
            out[name] = v
    return out


def run_forge(forge: str, py: str, work: str, ckpts: dict, archs: list, hf_guess: str) -> None:
    host = "forge"
    with Phase("forge_install_project"):
        repo_dir = os.path.join(forge, "repositories", "huggingface_guess")
        if host_commit(repo_dir) != FORGE_HF_GUESS_COMMIT:
            missing = export_tree(hf_guess, repo_dir, FORGE_HF_GUESS_COMMIT)
            say(f"huggingface_guess @ {FORGE_HF_GUESS_COMMIT[:10]} -> {repo_dir} ({len(missing)} absent blobs)")
        # --data-dir moves extensions/, config.json and outputs out of the checkout (a fresh config each run)
        data_dir = os.path.join(work, "forge-data")
        for name in ("config.json", "ui-config.json", "outputs"):
            path = os.path.join(data_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        install_project(os.path.join(data_dir, "extensions", "sailscope"))
        # the test LoRA where Forge's sd_forge_lora looks: --lora-dir, default <models dir>/Lora, and the models
        # dir is <data-dir>/models (modules/paths_internal.py)
        lora_dir = os.path.join(data_dir, "models", "Lora")
        os.makedirs(lora_dir, exist_ok=True)
        for arch, path in LORA_PATHS.items():
            link = os.path.join(lora_dir, LORA[arch])
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(path, link)
    ckdir = os.path.dirname(next(iter(ckpts.values())))
    port = free_port()
    cmd = [py, "launch.py", "--skip-prepare-environment", "--skip-install", "--skip-python-version-check",
           "--skip-torch-cuda-test", "--skip-version-check", "--always-cpu", "--api", "--nowebui",
           "--server-name", "127.0.0.1", "--port", str(port), "--ckpt-dir", ckdir, "--no-download-sd-model",
           "--disable-nan-check", "--data-dir", data_dir, "--skip-load-model-at-start"]
    env = host_env(py)
    env["COMMANDLINE_ARGS"] = ""
    server = Server("Forge", cmd, forge, env, os.path.join(work, "forge-server.log"),
                    f"http://127.0.0.1:{port}/sdapi/v1/samplers")
    try:
        with Phase("forge_start"):
            server.wait_ready(600)
        base = f"http://127.0.0.1:{port}"
        with Check(host, "-", "registered") as ck:
            scripts = http("GET", f"{base}/sdapi/v1/scripts")
            names = [s.lower() for s in scripts.get("txt2img", [])]
            info = http("GET", f"{base}/sdapi/v1/script-info")
            mine = [s for s in info if s.get("name") == "sail scope" and not s.get("is_img2img")]
            ck.detail = {"txt2img_scripts": names, "args": [a.get("label") for a in mine[0]["args"]] if mine else None}
            ck.ok = "sail scope" in names and bool(mine) and mine[0].get("is_alwayson", False)
        for arch in archs:
            with Phase(f"forge_{arch}"):
                forge_arch(base, server, arch)
    finally:
        server.stop()


def archs_first(arch: str) -> str:
    """The arch on which the one-off API checks run (the first requested)."""
    return ARCHS[0] if ARCHS else arch


ARCHS: list = []


def forge_arch(base: str, server: Server, arch: str) -> None:
    host = "forge"
    runs: dict = {}

    def gen(tag: str, script_args, prompt: str = PROMPT):
        try:
            runs[tag] = forge_txt2img(base, arch, script_args, prompt)
        except Exception as exc:
            runs[tag] = {"error": f"{type(exc).__name__}: {exc}", "log": server.tail(3000)}
        return runs[tag]

    # stock: the script rejects these settings and does nothing for the job (no hook, no probe)
    stock = gen("stock", forge_args(objective="none-stock-baseline"))
    with Check(host, arch, "model_loaded", stock.get("seconds", 0.0)) as ck:
        if "error" in stock:
            raise RuntimeError(stock["error"] + "\n" + stock["log"])
        params = infotext_params(stock["info"])
        ck.detail = {"params": {k: v for k, v in params.items() if k in ("Model", "Size", "Sampler", "Steps", "Schedule type")},
                     "stock_sail_keys": sail_keys(params)}
        # the baseline's settings are rejected by the script: nothing of ours may touch that generation
        ck.ok = len(stock["images"]) == 1 and params.get("Model") == CKPT[arch].rsplit(".", 1)[0] and not sail_keys(params)
    # memory: the stock baseline again (plain: no hook, no probe), then SAIL on, then SAIL on + low_memory, each
    # after a VmHWM reset (the model was loaded by the first stock request)
    sent = dict(sail=True, threshold=SAIL_ON["threshold"], max_steps=SAIL_ON["max_steps"], lr=SAIL_ON["lr"],
                objective=SAIL_ON["objective"], candidates=SAIL_ON["candidates"], sharpness="fd", save_plots=True)
    mt = MemTrack(server.proc.pid)
    mt.reset("plain")
    plain = gen("plain", forge_args(objective="none-stock-baseline"))
    mt.read("plain")
    mt.reset("sail")
    on = gen("on", forge_args(**sent))
    mt.read("sail")
    mt.reset("sail_low_memory")
    on_lm = gen("on_lm", forge_args(**dict(sent, low_memory=True)))
    mt.read("sail_low_memory")
    with Check(host, arch, "memory", plain.get("seconds", 0.0) + on.get("seconds", 0.0)) as ck:
        ck.detail = mt.detail("stock request first (loads the model; not measured), then VmHWM reset -> the stock "
                              "request again (plain: the script rejects its args, no hook, no probe) -> reset -> SAIL "
                              "on (2 Adam steps + the fd probe at the seed's and SAIL's noise) -> reset -> SAIL on "
                              "low_memory; each a full txt2img request, same size and steps")
        ck.detail["request_seconds"] = {k: r.get("seconds") for k, r in (("plain", plain), ("sail", on), ("sail_low_memory", on_lm))}
        if "error" in plain or "error" in on:
            raise RuntimeError(on.get("error") or plain.get("error"))
        ck.detail["plain_vs_stock"] = pixel_diff(stock["images"][0], plain["images"][0]) if "error" not in stock else None
        res_on = sail_result(sail_keys(infotext_params(on["info"])))
        ck.detail["sail_result"] = res_on
        ck.ok = res_on.get("steps", 0) > 0 and isinstance(res_on.get("loss"), float)
    with Check(host, arch, "low_memory_same_result", on_lm.get("seconds", 0.0)) as ck:
        if "error" in on or "error" in on_lm:
            raise RuntimeError(on_lm.get("error") or on.get("error"))
        same, d = same_image(on["images"][0], on_lm["images"][0])
        k0, k1 = sail_keys(infotext_params(on["info"])), sail_keys(infotext_params(on_lm["info"]))
        r0, r1 = sail_result(k0), sail_result(k1)
        losses = {k: [sig4(r0.get(k)), sig4(r1.get(k))] for k in ("start_loss", "loss")}
        ck.detail = {"image": d, "sail_result (off, on)": [r0, r1], "loss_4sig (off, on)": losses,
                     "infotext_diff": {k: [k0.get(k), k1.get(k)] for k in sorted(set(k0) | set(k1)) if k0.get(k) != k1.get(k)}}
        ck.ok = (same and r0.get("steps", 0) > 0 and r0.get("steps") == r1.get("steps")
                 and all(a is not None and a == b for a, b in losses.values()))
    off = gen("off", forge_args(sail=False))
    default = gen("default", None)
    with Check(host, arch, "sail_off_equals_stock", off.get("seconds", 0.0) + default.get("seconds", 0.0)) as ck:
        if "error" in stock or "error" in off:
            raise RuntimeError(off.get("error") or stock.get("error"))
        d = pixel_diff(stock["images"][0], off["images"][0])
        d_default = pixel_diff(stock["images"][0], default["images"][0]) if "error" not in default else default["error"]
        ck.detail = {"explicit_off": d, "no_alwayson_entry": d_default, "off_infotext": sail_keys(infotext_params(off["info"]))}
        ck.ok = d["equal"] and isinstance(d_default, dict) and d_default["equal"]
    with Check(host, arch, "sail_on", on.get("seconds", 0.0)) as ck:
        if "error" in on:
            raise RuntimeError(on["error"])
        params = infotext_params(on["info"])
        sk = sail_keys(params)
        res = sail_result(sk)
        loss = res.get("loss")
        d = pixel_diff(off["images"][0], on["images"][0]) if "error" not in off else None
        ck.detail = {"sail_infotext": sk, "sail_result": res, "image_vs_off": d}
        before, after = sk.get(K("original_sharpness")), sk.get(K("sharpness"))
        wen0 = sk.get(K("original_wen"))
        METRICS[("forge", arch)] = {"loss_after": loss if isinstance(loss, float) else None,
                                    "wen_before": float(wen0) if wen0 is not None else None}
        ck.ok = (res.get("steps", 0) > 0 and isinstance(loss, float) and loss == loss and d is not None and not d["equal"]
                 and "failed" not in sk.get(K("status"), "") and before is not None and after is not None)
    with Check(host, arch, "infotext_roundtrip") as ck:
        if "error" in on:
            raise RuntimeError(on["error"])
        r = http("POST", f"{base}/sdapi/v1/png-info", {"image": base64.b64encode(on["images"][0]).decode()})
        parsed = r.get("parameters") or {}
        # read back as A1111's paste reads it (core/io/infotext.py parse_settings: registry name -> value)
        want = {k: sent[k] for k in ("sail", "objective", "threshold", "max_steps", "candidates", "lr")}
        settings = infotext_registry().parse_settings({k: str(v) for k, v in parsed.items()})
        got = {k: settings.get(k) for k in want}
        mismatch = {}
        for k, v in want.items():
            g = got[k]
            if isinstance(v, (int, float)) and not isinstance(v, bool) and g is not None and not isinstance(g, bool):
                try:
                    same = abs(float(g) - float(v)) <= 1e-9 * max(1.0, abs(float(v)))
                except (TypeError, ValueError):
                    same = False
            else:
                same = g == v
            if not same:
                mismatch[k] = {"sent": v, "png_info": g}
        ck.detail = {"png_info_parameters": {k: v for k, v in parsed.items() if str(k).startswith("SAIL")},
                     "mismatch": mismatch, "info_has_parameters": "SAIL" in (r.get("info") or "")}
        ck.ok = not mismatch
    with Check(host, arch, "diagnostics") as ck:
        if "error" in on:
            raise RuntimeError(on["error"])
        sizes = [pixels(b)[0] for b in on["images"]]
        ck.detail = {"image_sizes": sizes, "n_infotexts": len(on["info"].get("infotexts", []))}
        ck.ok = len(sizes) >= 2 and sizes[1][0] >= 256
    # "render the original": a comparison image (original | SAIL) is added and the SAIL image is unchanged
    both = gen("show_original", forge_args(**dict(sent, show_original=True)))
    with Check(host, arch, "show_original", both.get("seconds", 0.0)) as ck:
        if "error" in both or "error" in on:
            raise RuntimeError(both.get("error") or on.get("error"))
        sizes = [pixels(b)[0] for b in both["images"]]
        d = pixel_diff(on["images"][0], both["images"][0])
        g = GEN[arch]
        ck.detail = {"image_sizes": sizes, "result_vs_sail_on": d,
                     "sail_result": sail_result(sail_keys(infotext_params(both["info"])))}
        ck.ok = len(sizes) >= 3 and sizes[1][0] >= 2 * g["width"] and d["equal"]
    if arch == archs_first(arch):
        # docs/extension.md: 'a single object {"sail": true, "threshold": 7.8} also works'. Through the API the
        # script gets all 9 args (Forge fills the rest with the UI defaults), the object lands in slot 0.
        obj = gen("dict_args", [{"sail": False, "max_steps": 1}])
        with Check(host, arch, "api_dict_args", obj.get("seconds", 0.0)) as ck:
            if "error" in obj:
                raise RuntimeError(obj["error"])
            sk = sail_keys(infotext_params(obj["info"]))
            ck.detail = {"sent": {"sail": False, "max_steps": 1}, "sail_infotext": sk,
                         "image_vs_stock": pixel_diff(stock["images"][0], obj["images"][0]) if "error" not in stock else None}
            ck.ok = K("sail") not in sk and not sail_result(sk)  # no "SAIL" setting, no steps/loss
    if arch in LORA_PATHS:
        forge_lora_check(server, arch, gen, stock, on, sent)


def forge_lora_check(server: Server, arch: str, gen, stock: dict, on: dict, sent: dict) -> None:
    """``lora``: the test LoRA through the prompt (``<lora:NAME:1>``, Forge's builtin sd_forge_lora), compared with
    the no-LoRA stock baseline and SAIL-on run of this arch (same settings otherwise)."""
    host = "forge"
    name = LORA[arch].rsplit(".", 1)[0]
    with Check(host, arch, "lora") as ck:
        log0 = os.path.getsize(server.log_path)
        stock_l = gen("lora_stock", forge_args(objective="none-stock-baseline"), f"{PROMPT} <lora:{name}:1>")
        on_l = gen("lora_on", forge_args(**sent), f"{PROMPT} <lora:{name}:1>")
        log = log_since(server, log0)
        lora_lines = [line.strip() for line in log.splitlines() if "[LORA]" in line or "lora" in line.lower() and
                      ("mismatch" in line.lower() or "not found" in line.lower() or "couldn't find" in line.lower())]
        ck.detail = d = {"lora": LORA[arch], "prompt_suffix": f"<lora:{name}:1>", "log": lora_lines[:10],
                         "request_seconds": {"stock": stock_l.get("seconds"), "sail_on": on_l.get("seconds")}}
        for r in (stock, on, stock_l, on_l):
            if "error" in r:
                raise RuntimeError(r["error"])
        parts = {}
        # applied: sd_forge_lora loaded every UNet key (its own log line) and the stock image changed
        loaded = [line for line in lora_lines if line.startswith("[LORA] Loaded") and name in line and "-UNet" in line]
        bad = [line for line in lora_lines if "mismatch" in line.lower() or "unmatched" in line.lower()]
        p_stock = infotext_params(stock_l["info"])
        d.update(stock_lora_vs_stock=pixel_diff(stock["images"][0], stock_l["images"][0]),
                 infotext_lora_hashes=p_stock.get("Lora hashes"), stock_lora_sail_keys=sail_keys(p_stock))
        parts["applied"] = (bool(loaded) and all("skipped 0 keys" in line for line in loaded) and not bad
                            and not d["stock_lora_vs_stock"]["equal"] and not sail_keys(p_stock))
        # SAIL on with the LoRA: the start loss is the patched model's (differs from the no-LoRA one), loss went down
        r0 = sail_result(sail_keys(infotext_params(on["info"])))
        sk = sail_keys(infotext_params(on_l["info"]))
        r1 = sail_result(sk)
        d.update(sail_result_with_lora=r1, sail_result_without_lora=r0,
                 start_loss_rel_diff=rel_diff(r1.get("start_loss"), r0.get("start_loss")),
                 original_wen_with_lora=sk.get(K("original_wen")),
                 original_wen_without_lora=sail_keys(infotext_params(on["info"])).get(K("original_wen")),
                 status=sk.get(K("status")))
        s0, s1, l1 = r0.get("start_loss"), r1.get("start_loss"), r1.get("loss")
        parts["sail_on_sees_lora"] = (r1.get("steps", 0) > 0 and isinstance(s0, float) and isinstance(s1, float)
                                      and isinstance(l1, float) and sig4(s1) != sig4(s0) and l1 < s1
                                      and "failed" not in (sk.get(K("status")) or ""))
        d["parts"] = parts
        ck.ok = all(parts.values())


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=DEFAULT_MIRRORS["comfyui"], help="ComfyUI checkout (or bare git dir)")
    ap.add_argument("--forge", default=DEFAULT_MIRRORS["forge"], help="Forge checkout (or bare git dir)")
    ap.add_argument("--hf-guess", default=DEFAULT_MIRRORS["hf_guess"], help="huggingface_guess git dir (Forge's pinned commit is exported)")
    ap.add_argument("--work", default="/work/hosts/venvs", help="venvs, checkpoints, logs, outputs")
    ap.add_argument("--json", help="write all records, host commits and timings here")
    ap.add_argument("--only", choices=("comfyui", "forge"))
    ap.add_argument("--arch", default="sd15,sdxl", help="comma list of sd15, sdxl")
    args = ap.parse_args(argv)
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    ARCHS[:] = archs
    for a in archs:
        if a not in CKPT:
            ap.error(f"unknown arch {a!r}")
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    t_all = time.perf_counter()
    hosts = [h for h in ("comfyui", "forge") if args.only in (None, h)]
    commits: dict = {}
    fatal = None
    try:
        with Phase("checkouts"):
            comfy = checkout(args.comfyui, "ComfyUI", work) if args.comfyui else None
            forge = checkout(args.forge, "forge", work) if "forge" in hosts else None
            commits = {"comfyui": host_commit(comfy) if comfy else None, "forge": host_commit(forge) if forge else None,
                       "huggingface_guess": FORGE_HF_GUESS_COMMIT if forge else None,
                       "sailscope": host_commit(REPO),
                       "sailscope_dirty": bool(subprocess.run(["git", "-C", REPO, "status", "--porcelain"],
                                                              capture_output=True, text=True).stdout.strip())}
            say(f"commits: {commits}")
        comfy_py = forge_py = None
        with Phase("venv_comfyui"):
            comfy_py = setup_comfyui(work, comfy) if comfy else None
        if "forge" in hosts:
            with Phase("venv_forge"):
                forge_py = setup_forge(work, forge)
        for name, py in (("comfyui", comfy_py), ("forge", forge_py)):
            if py:
                VERSIONS[name] = package_versions(py)
        with Phase("checkpoints"):
            ckpts = build_checkpoints(work, comfy, comfy_py, archs)
        with Phase("lora"):
            LORA_PATHS.update(build_loras(work, comfy, comfy_py, ckpts))
        if "comfyui" in hosts:
            try:
                run_comfyui(comfy, comfy_py, work, ckpts, archs)
            except Exception as exc:
                emit("comfyui", "-", "server", False, {"error": f"{type(exc).__name__}: {exc}"}, 0.0)
        if "forge" in hosts:
            try:
                run_forge(forge, forge_py, work, ckpts, archs, args.hf_guess)
            except Exception as exc:
                emit("forge", "-", "server", False, {"error": f"{type(exc).__name__}: {exc}"}, 0.0)
        for arch in archs:
            a, b = METRICS.get(("comfyui", arch)), METRICS.get(("forge", arch))
            if a and b:
                with Check("both", arch, "cross_host") as ck:
                    # same seed noise (torch CPU randn) and model: step-1 Wen and SAIL's final loss agree up to
                    # the hosts' noise scaling (ComfyUI c = 1, Forge c = sigma_t ~ 0.998)
                    rel = {k: abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a if a[k] is not None and b.get(k) is not None}
                    ck.detail = {"comfyui": a, "forge": b, "rel_diff": rel}
                    ck.ok = len(rel) == 2 and all(v < 0.02 for v in rel.values())
    except Exception as exc:
        fatal = f"{type(exc).__name__}: {exc}"
        emit("-", "-", "setup", False, {"error": fatal}, 0.0)
    TIMINGS["total"] = round(time.perf_counter() - t_all, 1)
    failed = [r for r in RECORDS if not r["ok"]]
    say(f"{len(RECORDS) - len(failed)}/{len(RECORDS)} checks passed; timings {TIMINGS}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"records": RECORDS, "commits": commits, "timings": TIMINGS, "versions": VERSIONS, "archs": archs,
                       "settings": {"gen": GEN, "sail_on": SAIL_ON, "seed": SEED, "prompt": PROMPT}}, f, indent=2, default=str)
    return 1 if failed or not RECORDS else 0


if __name__ == "__main__":
    sys.exit(main())
