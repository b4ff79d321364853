"""Shared fixtures: seeded tiny random-weight SD pipelines (no files, no network)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Threads: the suite runs with the app's default (core/threads.py: one torch thread unless $SAILSCOPE_THREADS or
# $OMP_NUM_THREADS says otherwise), set here before any test module imports torch, and exported so that the app
# servers and CLI subprocesses the tests start use it too. torch's own default (a thread per core, spinning while
# it waits) made the suite collapse on a busy 2-core machine (issue 22).
from sailscope.core.threads import configure_threads  # noqa: E402  (imports nothing heavy)

SUITE_THREADS = configure_threads()
# ... and pinned for code that reads the variable itself (the demo trainer would otherwise switch the whole test
# process to its own 2 threads)
os.environ.setdefault("SAILSCOPE_THREADS", str(SUITE_THREADS or os.environ.get("OMP_NUM_THREADS", "0")))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pipe():
    from sailscope.core.testing import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_pipe_v():
    from sailscope.core.testing import tiny_pipeline

    return tiny_pipeline(seed=0, prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pipe):
    """The tiny pipeline saved as a diffusers folder (safetensors), for loading/CLI tests."""
    path = tmp_path_factory.mktemp("tiny-sd")
    tiny_pipe.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def pipe():
    """A tiny pipeline per test module (the app tests hand it to an app context; no module sees another's)."""
    from sailscope.core.testing import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture()
def ctx(pipe, tmp_path, monkeypatch):
    """An app context on ``pipe`` with its own outputs folder and calibration home, live updates unthrottled."""
    from sailscope.ui.jobs import AppConfig, AppContext

    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "home"))
    c = AppContext(AppConfig(outputs=str(tmp_path / "out"), live_interval=0.0))
    c.models.pipe = pipe
    return c
