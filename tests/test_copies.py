"""core/copies.py against an oracle: a training image is found at distance 0, distinct random images are not copies,
several seeds of one image agree; the demo's memorized set and a reference folder load without local paths."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sailscope.core.copies import (
    SIZE, ReferenceSet, as_array, check_copies, image_distance, nearest_known, references_for, seed_agreement,
)
from sailscope.core.errors import UserInputError
from sailscope.core.models import DEMO_MODEL_DIR


def _random_images(n: int, seed: int = 0, size: int = SIZE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_distance_is_rmse_in_unit_pixels():
    black, white = np.zeros((SIZE, SIZE, 3), np.uint8), np.full((SIZE, SIZE, 3), 255, np.uint8)
    assert image_distance(black, black) == 0.0
    assert image_distance(black, white) == pytest.approx(1.0)
    grey = np.full((SIZE, SIZE, 3), 0.5, np.float32)  # float input in [0, 1]
    assert image_distance(black, grey) == pytest.approx(128 / 255, abs=1e-6)
    # resizing by area averaging: a 2x image of the same content is at distance 0
    img = _random_images(1)[0]
    big = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
    assert image_distance(img, big) == pytest.approx(0.0, abs=1e-6)
    assert as_array(Image.fromarray(big)).shape == (SIZE, SIZE, 3)


def test_exact_training_image_found_at_distance_zero_random_ones_not():
    train = _random_images(8, seed=1)
    refs = ReferenceSet.from_images(train, [f"t{i}.png" for i in range(8)], tau=0.11)
    for i, im in enumerate(train):
        (m,) = nearest_known(im, refs, k=1)
        assert m.name == f"t{i}.png" and m.distance == 0.0 and m.copy is True
    for im in _random_images(5, seed=2):  # distinct random images: far from every reference (~0.41 for uniform noise)
        ms = nearest_known(im, refs, k=3)
        assert len(ms) == 3 and all(m.copy is False for m in ms) and ms[0].distance > 0.3
        assert [m.distance for m in ms] == sorted(m.distance for m in ms)
    # no threshold: distances, no verdict
    plain = ReferenceSet.from_images(train)
    assert nearest_known(train[0], plain)[0].copy is None


def test_seed_agreement_same_and_different_images():
    a, b, c = _random_images(3, seed=3)
    noisy_a = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)  # a near copy (RMSE ~0.01)
    ag = seed_agreement([a, noisy_a, a, b], seeds=[0, 1, 2, 3], tau=0.11)
    assert ag.distances[0][2] == 0.0 and ag.distances[2][0] == 0.0
    assert sorted(ag.same_pairs) == [(0, 1), (0, 2), (1, 2)]
    assert ag.groups == [[0, 1, 2]] and ag.all_same is False and ag.n_pairs == 6
    assert seed_agreement([a, a, a], tau=0.11).all_same is True
    diff = seed_agreement([a, b, c], tau=0.11)
    assert diff.same_pairs == [] and diff.groups == [] and diff.min > 0.3
    assert seed_agreement([a, b]).same_pairs is None  # no threshold: distances only


def test_check_copies_summary_words():
    train = _random_images(2, seed=4)
    refs = ReferenceSet.from_images(train, ["cat.png", "dog.png"], tau=0.11, description="two images")
    same = check_copies([train[0]] * 3, [0, 1, 2], refs)
    assert same.copies == [0, 1, 2]
    assert "3 of 3 image(s) reproduce a known image (cat.png)" in same.summary()
    assert "All 3 seeds give the same image" in same.summary()
    fresh = check_copies(_random_images(2, seed=5), [7, 8], refs)
    assert fresh.copies == [] and "None of the 2 image(s) is a copy" in fresh.summary()
    assert "Every seed gives a different image" in fresh.summary()
    assert json.loads(json.dumps(fresh.to_dict()))["seeds"] == [7, 8]
    empty = check_copies(_random_images(1), [0], None)
    assert empty.copies is None and "No known images" in empty.summary()


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "memorized.jsonl").is_file(), reason="demo model not shipped")
def test_demo_memorized_set_finds_its_training_images():
    refs = ReferenceSet.from_model_folder(DEMO_MODEL_DIR)
    items = [json.loads(l) for l in (DEMO_MODEL_DIR / "memorized.jsonl").read_text().splitlines() if l.strip()]
    card = json.loads((DEMO_MODEL_DIR / "eval.json").read_text())
    assert len(refs) == len(items) and refs.tau == card["tau_copy"] and "eval.json" in refs.tau_source
    assert all(not n.startswith("/") for n in refs.names)  # names inside the model folder, never a local path
    for it in items:
        (m,) = nearest_known(DEMO_MODEL_DIR / it["image"], refs, k=1)
        assert m.distance == 0.0 and m.caption == it["caption"] and m.copy is True


def test_reference_folder(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("refs")
    imgs = _random_images(3, seed=6)
    (tmp_path / "sub").mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / ("sub" if i == 2 else ".") / f"r{i}.png")
    (tmp_path / "r0.txt").write_text("a caption\n")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.md").write_text("ignored")
    refs = ReferenceSet.from_folder(tmp_path, tau=0.05)
    assert refs.names == ["r0.png", "r1.png", "sub/r2.png"] and refs.skipped == ["broken.png"]
    assert refs.captions[0] == "a caption" and refs.tau == 0.05
    (m,) = nearest_known(imgs[2], refs, k=1)
    assert m.name == "sub/r2.png" and m.distance == 0.0 and m.copy is True
    with pytest.raises(UserInputError, match="limit"):
        ReferenceSet.from_folder(tmp_path, limit=2)
    with pytest.raises(UserInputError, match="not found"):
        ReferenceSet.from_folder(tmp_path / "missing")
    # merged with a model's set: each image keeps its own threshold
    model = tmp_path_factory.mktemp("model")
    Image.fromarray(imgs[0]).save(model / "m.png")
    (model / "memorized.jsonl").write_text(json.dumps({"caption": "c", "image": "m.png"}) + "\n")
    (model / "eval.json").write_text(json.dumps({"tau_copy": 0.2}))
    both = references_for(model, tmp_path, reference_tau=None)
    assert len(both) == 4 and both.tau == 0.2
    near = nearest_known(imgs[1], both, k=4)
    by_name = {m.name: m for m in near}
    assert by_name["r1.png"].copy is None and by_name["m.png"].copy is False
    assert references_for(None, None) is None
