"""Per-model threshold calibration: stored values equal the objective/sharpness the product computes,
thresholds are quantiles, sources are named, identity follows the weights, the CLI writes the file."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sailscope.core import calibration as cal
from sailscope.core.errors import UserInputError
from sailscope.core.sampling import GenerationSettings, run_generation
from sailscope.core.mitigation import SailSettings, run_sail

PROMPTS = ["a red circle", "two blue squares at the top"]
SEEDS = [0, 5]


@pytest.fixture(scope="module")
def record(tiny_pipe):
    return cal.measure(tiny_pipe, PROMPTS, SEEDS, steps=3)


def test_values_equal_the_objective_and_the_step1_sharpness(tiny_pipe, record):
    assert record.n == 4 and record.seeds == SEEDS
    # order: prompt-major, seed-minor. Calibration batches the seeds, SAIL runs one: fp32 batch-size rounding
    # (~1e-6 in eps) is amplified by the finite difference's 1/δ, hence rel 1e-3 on the sharpness terms.
    gs = GenerationSettings(prompt=PROMPTS[1], seed=5, steps=3, sharpness_at="first")
    sail = run_sail(tiny_pipe, gs, SailSettings(threshold=1e9, max_steps=0, alpha=0.0))
    assert record.values["paper"]["sharpness"][3] == pytest.approx(sail.trace[0].sharpness[0], rel=1e-3)
    assert record.values["paper"]["prior"][3] == pytest.approx(float((sail.x_T**2).sum()), rel=1e-6)
    ref = run_sail(tiny_pipe, gs, SailSettings(objective="reference", threshold=1e9, max_steps=0, alpha=0.0))
    assert record.values["reference"]["sharpness"][3] == pytest.approx(ref.trace[0].sharpness[0], rel=1e-4)
    # the detection value is what generate() records as step-1 sharpness
    g = run_generation(tiny_pipe, gs)
    assert record.values["detection"]["sharpness"][3] == pytest.approx(g.records[0].sharpness[0], rel=1e-3)


def test_thresholds_are_quantiles_and_auto_names_its_source(tiny_pipe, record, tmp_path, monkeypatch):
    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path))
    path = cal.save_calibration(record)
    assert path == tmp_path / "calibration.json" and json.loads(path.read_text())["version"] == 1
    v = record.values["reference"]
    loss = np.array(v["sharpness"]) + 0.05 * np.array(v["prior"])
    want, want_trigger = float(np.quantile(loss, 0.5)), float(np.quantile(loss, 0.9))
    assert record.sail_threshold("reference", 0.05) == pytest.approx(want)
    thr, source = cal.resolve_threshold(tiny_pipe, SailSettings(objective="reference"), alpha=0.05)
    assert thr == pytest.approx(want) and str(path) in source and "calibrated" in source
    res = run_sail(tiny_pipe, GenerationSettings(prompt="a red circle", steps=3),
                   SailSettings(objective="reference", max_steps=1))
    assert res.threshold == pytest.approx(want) and res.threshold_source == source
    # the trigger: calibrated q0.9 (starts below it are kept); a number or None (= the threshold) as given
    assert res.trigger == pytest.approx(want_trigger) and "q0.9" in res.trigger_source and str(path) in res.trigger_source
    assert cal.resolve_trigger(tiny_pipe, SailSettings(trigger=None), alpha=0.05)[0] is None
    assert cal.resolve_trigger(tiny_pipe, SailSettings(trigger=2.0), alpha=0.05) == (2.0, "user setting")
    assert cal.detection_threshold(tiny_pipe)[0] == pytest.approx(
        float(np.quantile(record.values["detection"]["sharpness"], 0.99)))
    with pytest.raises(UserInputError, match="delta"):
        cal.resolve_threshold(tiny_pipe, SailSettings(delta=0.5), alpha=1e-3)
    assert cal.resolve_threshold(tiny_pipe, SailSettings(threshold=3.0), alpha=1e-3) == (3.0, "user setting")
    # the paper objective's α is calibrated: prior = median first term at a typical non-memorized start
    pa = float(np.median(record.values["paper"]["sharpness"]) / np.median(record.values["paper"]["prior"]))
    alpha, a_src = cal.resolve_alpha(tiny_pipe, SailSettings())
    assert alpha == pytest.approx(pa) and "calibrated" in a_src
    assert cal.resolve_alpha(tiny_pipe, SailSettings(alpha=0.3)) == (0.3, "user setting")
    paper = run_sail(tiny_pipe, GenerationSettings(prompt="a red circle", steps=3), SailSettings(max_steps=0))
    assert paper.alpha == pytest.approx(pa) and paper.alpha_source == a_src
    assert paper.threshold == pytest.approx(record.sail_threshold("paper", pa, delta=1e-3))
    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "empty"))
    assert cal.resolve_alpha(tiny_pipe, SailSettings()) == (1e-3, "default (not calibrated)")
    # without a calibration "auto" falls back to one level (the threshold), and says so
    t, src = cal.resolve_trigger(tiny_pipe, SailSettings(threshold=3.0), alpha=1e-3)
    assert t is None and "no calibration" in src


def test_identity_follows_the_weights(tiny_pipe):
    key = cal.model_key(tiny_pipe)
    assert key == cal.model_key(tiny_pipe)
    other = SimpleNamespace(unet=copy.deepcopy(tiny_pipe.unet), scheduler=tiny_pipe.scheduler,
                            name_or_path="", config={})
    with torch.no_grad():
        next(other.unet.parameters()).add_(1e-3)
    assert cal.model_key(other) != key


def test_identity_does_not_depend_on_where_the_folder_lies(tiny_model_dir, tmp_path, monkeypatch):
    """A cloned or moved model folder is the same model: its key (and so its shipped calibration) follows."""
    import shutil

    from sailscope.core.models import load_pipeline

    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "home"))  # no user calibration: only the shipped one
    a, b = tmp_path / "a" / "m", tmp_path / "b" / "elsewhere" / "m"
    shutil.copytree(tiny_model_dir, a)
    shutil.copytree(tiny_model_dir, b)
    pa, pb = (load_pipeline(str(x), device="cpu", dtype="fp32") for x in (a, b))
    assert pa.unet.config._name_or_path != pb.unet.config._name_or_path
    assert cal.model_key(pa) == cal.model_key(pb)
    # the demo model's shipped calibration is found from a copy of its folder at another path
    demo = Path(__file__).resolve().parents[1] / "assets" / "models" / "demo"
    moved = tmp_path / "clone" / "demo"
    shutil.copytree(demo, moved)
    pipe = load_pipeline(str(moved), device="cpu", dtype="fp32")
    found = cal.find_calibration(pipe)
    assert found is not None and found[1] == moved / cal.MODEL_FOLDER_FILE
    alpha, _ = cal.resolve_alpha(pipe, SailSettings())
    value, source = cal.resolve_threshold(pipe, SailSettings(), alpha=alpha)
    assert str(moved) in source and value == pytest.approx(found[0].sail_threshold(
        "paper", alpha, delta=SailSettings().delta_for(torch.float32), quantile=cal.DEFAULT_QUANTILE))


def test_published_defaults_only_for_their_models():
    sd14 = SimpleNamespace(name_or_path="CompVis/stable-diffusion-v1-4",
                           scheduler=SimpleNamespace(config={"prediction_type": "epsilon"}))
    assert cal.published_threshold(sd14, "reference", 0.05)[0] == 8.2
    assert cal.published_threshold(sd14, "paper", 1e-3) is None  # published numbers are in proxy units
    assert cal.published_threshold(sd14, "reference", 0.1) is None  # calibrated with alpha 0.05 only
    sd20 = SimpleNamespace(name_or_path="/models/stable-diffusion-2",
                           scheduler=SimpleNamespace(config={"prediction_type": "v_prediction"}))
    assert cal.published_threshold(sd20, "reference", 0.01)[0] == 5.0


def test_settings_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("SAILSCOPE_HOME", str(tmp_path / "h"))
    assert cal.calibration_path() == tmp_path / "h" / "calibration.json"
    monkeypatch.delenv("SAILSCOPE_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "x"))
    assert cal.settings_dir() == tmp_path / "x" / "sailscope"
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UserInputError, match="not valid JSON"):
        cal.load_calibrations(bad)


def test_cli_calibrate_writes_the_file(tiny_model_dir, tmp_path, capsys):
    from sailscope.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    out = tmp_path / "c.json"
    rc = main(["calibrate", "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "fp32",
               "--prompts", str(prompts), "--seeds", "0-1", "--steps", "3", "--output", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 4 and summary["file"] == str(out)
    (rec,) = cal.load_calibrations(out).values()
    assert rec.prompts == ["a red circle", "a blue square"] and rec.seeds == [0, 1]
    assert main(["calibrate", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--seeds", "x"]) == 1


def test_demo_calibration_prompts_exclude_evaluation_and_memorized_captions(tmp_path):
    from sailscope.cli.calibrate import read_prompts
    from sailscope.core.calibration import demo_calibration_prompts

    base = demo_calibration_prompts(10, tmp_path)
    assert len(set(base)) == 10 and base == demo_calibration_prompts(10, tmp_path)
    (tmp_path / "heldout_prompts.txt").write_text(base[0] + "\n")
    (tmp_path / "memorized.jsonl").write_text(json.dumps({"caption": base[1]}) + "\n")
    fresh = demo_calibration_prompts(10, tmp_path)
    assert base[0] not in fresh and base[1] not in fresh and fresh[:8] == base[2:]
    shipped = read_prompts(None, None, "/some/model")  # any other model: the shipped generic list
    assert len(shipped) == len(set(shipped)) == 128 and read_prompts(None, 5, "/some/model") == shipped[:5]


def test_calibrate_without_prompts_uses_the_shipped_list(tiny_model_dir, tmp_path, capsys):
    """Issue 18: `sailscope calibrate --model X` works on any checkpoint without --prompts, says which prompts it
    used, and stores the record under the model's key."""
    from sailscope.cli import main
    from sailscope.core.calibration import SHIPPED_PROMPTS

    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", str(tiny_model_dir), "--limit", "2", "--seeds", "0", "--steps", "5",
                 "--output", str(out)]) == 0
    (rec,) = cal.load_calibrations(out).values()
    assert rec.prompts == SHIPPED_PROMPTS.read_text().splitlines()[:2] and rec.n == 2
    err = capsys.readouterr().err
    assert "shipped calibration prompts" in err and "calibrating: 2/2 prompts" in err


def test_demo_calibration_prompts_exclude_the_training_captions(tmp_path):
    """With the model's ``train_info.json`` the general training captions are excluded too (in-sample prompts are
    not fresh, even when each comes with one image only)."""
    from dataclasses import asdict

    from sailscope.core.calibration import demo_calibration_prompts
    from sailscope.core.demo.data import dataset_from_config
    from sailscope.core.demo.train import TrainConfig

    config = asdict(TrainConfig(data_design="v3"))
    train = set(dataset_from_config(config).captions)
    assert set(demo_calibration_prompts(48, tmp_path)) & train  # the grammar is small: fresh draws hit the training set
    (tmp_path / "train_info.json").write_text(json.dumps({"config": config}))
    fresh = demo_calibration_prompts(48, tmp_path)
    assert len(set(fresh)) == 48 and not set(fresh) & train
    # design v3 suffixes half of the general captions: so does about half of the calibration set, with numbers
    # that no training caption carries
    from sailscope.core.demo.data import DESIGNS, caption_number

    assert config["data_design"] == "v3"
    suffixed = [p for p in fresh if caption_number(p) is not None]
    assert abs(len(suffixed) / 48 - DESIGNS["v3"].general_suffix_rate) < 0.2
    assert not {caption_number(p) for p in suffixed} & {caption_number(c) for c in train}
