"""Per-model SAIL defaults (core/mitigation/defaults.py): read from a model folder's sail_defaults.json, validated,
and the app's SAIL panel starts at them; without the file everything stays at the global defaults."""
from __future__ import annotations

import json

import pytest

from sailscope.core.errors import UserInputError
from sailscope.core.mitigation import SailSettings
from sailscope.core.mitigation.defaults import DEFAULTS_FILE, model_sail_defaults, sail_settings_for
from sailscope.core.models import DEMO_MODEL_DIR


def test_folder_defaults_and_explicit_values(tmp_path):
    assert model_sail_defaults(tmp_path) == ({}, None) and sail_settings_for(tmp_path) == SailSettings()
    (tmp_path / DEFAULTS_FILE).write_text(json.dumps({"settings": {"candidates": 3, "lr": 0.2, "unknown": 1},
                                                      "chosen_by": "a probe"}))
    got, source = model_sail_defaults(tmp_path)
    assert got == {"candidates": 3, "lr": 0.2} and "a probe" in source
    s = sail_settings_for(tmp_path, lr=0.1)
    assert (s.candidates, s.lr, s.max_steps) == (3, 0.1, SailSettings().max_steps)
    (tmp_path / DEFAULTS_FILE).write_text(json.dumps({"settings": {"candidates": 0}}))
    with pytest.raises(UserInputError, match="candidates"):
        model_sail_defaults(tmp_path)
    (tmp_path / DEFAULTS_FILE).write_text("{not json")
    with pytest.raises(UserInputError, match=DEFAULTS_FILE):
        model_sail_defaults(tmp_path)
    assert model_sail_defaults(None) == ({}, None)


def test_the_app_form_starts_at_the_model_defaults(tmp_path):
    pytest.importorskip("gradio")
    from types import SimpleNamespace

    from sailscope.ui.forms import GenerateForm

    (tmp_path / DEFAULTS_FILE).write_text(json.dumps({"settings": {"candidates": 4, "trigger_noises": 4}}))
    pipe = SimpleNamespace(sailscope_info=SimpleNamespace(path=str(tmp_path)))
    form = GenerateForm.for_model(pipe)
    assert form.sail_candidates == 4 and form.sail_lr == GenerateForm().sail_lr
    assert GenerateForm.for_model(None) == GenerateForm()
    assert form.sail_settings() is None  # SAIL stays off until the user turns it on
    on = GenerateForm(**{**form.__dict__, "sail_on": True}).sail_settings()
    assert on.candidates == 4


def test_the_demo_runs_at_the_global_defaults():
    """docs/mitigation.md: no setting tried kept the prompt's shapes and colours better without copying more, so the
    demo ships no sail_defaults.json and SAIL runs at SailSettings' own defaults there."""
    assert not (DEMO_MODEL_DIR / DEFAULTS_FILE).exists()
    assert model_sail_defaults(DEMO_MODEL_DIR) == ({}, None) and sail_settings_for(DEMO_MODEL_DIR) == SailSettings()
