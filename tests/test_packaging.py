"""pyproject.toml, install.py and the CLI agree on what SAIL Scope needs (issue 22: `pip install .` gives a working
CLI, `[app]` the app, and a missing optional dependency names its extra)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_torch_is_a_dependency_with_a_lower_bound_only():
    """A lower bound lets pip keep whatever compatible torch is installed (a host's CUDA build, a CPU wheel)."""
    deps = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower(): d for d in _project()["dependencies"]}
    assert deps["torch"] == "torch>=2.1"


def test_install_py_installs_what_pyproject_declares():
    sys.path.insert(0, str(ROOT))
    try:
        import install
    finally:
        sys.path.pop(0)
    deps = set(_project()["dependencies"]) - {"torch>=2.1"}
    assert {spec for _, spec in install.RUNTIME} == deps
    assert {spec for _, spec in install.APP} == set(_project()["optional-dependencies"]["app"])
    assert install.TORCH_SPEC.startswith("torch==")  # without a torch, a pinned build (never an unpinned CUDA one)


def test_missing_gradio_hint_names_an_extra_that_exists():
    from sailscope.cli import MISSING_HINTS

    extras = _project()["optional-dependencies"]
    hint = MISSING_HINTS["gradio"]
    extra = re.search(r'pip install "sailscope\[(\w+)\]"', hint).group(1)
    assert any(d.startswith("gradio") for d in extras[extra])


def test_shipped_tokenizer_is_clips_vocabulary():
    """The demo trainer reads CLIP's vocabulary from the shipped tokenizer (no open-clip-torch needed)."""
    from sailscope.core.demo.tokenizer import N_MERGES, build_clip_tokenizer, shipped_vocab_and_merges

    vocab, merges = shipped_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == N_MERGES
    assert vocab["a</w>"] == 320 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert merges[0] == "i n" and merges[-1].count(" ") == 1
    assert build_clip_tokenizer()("hello world").input_ids == [49406, 3306, 1002, 49407]  # SD 1.x CLIP ids
