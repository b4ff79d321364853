"""The demo model's procedural dataset: determinism, grammar, memorized items, attribute checker."""
import numpy as np
import pytest

from sailscope.core.demo import data as D

SMALL = dict(n_general=60, n_exact=12, n_template=3, n_dup=3, n_heldout=120)


@pytest.fixture(scope="module")
def ds():
    return D.build_dataset(seed=0, **SMALL)


def test_deterministic(ds):
    again = D.build_dataset(seed=0, **SMALL)
    assert np.array_equal(ds.images, again.images)
    assert ds.captions == again.captions and ds.heldout == again.heldout
    other = D.build_dataset(seed=1, **SMALL)
    assert not np.array_equal(ds.images, other.images)


def test_shapes_and_counts(ds):
    n = SMALL["n_general"] + (SMALL["n_exact"] + SMALL["n_template"]) * SMALL["n_dup"]
    assert ds.images.shape == (n, 64, 64, 3) and ds.images.dtype == np.uint8
    assert len(ds.captions) == len(ds.kinds) == n
    assert ds.kinds.count("exact") == SMALL["n_exact"] * SMALL["n_dup"]


def test_every_caption_parses_back(ds):
    for c in ds.captions + ds.heldout + [m.caption for m in ds.memorized]:
        assert D.parse_caption(c).text() == c
    with pytest.raises(ValueError, match="grammar"):
        D.parse_caption("a dog on a skateboard")


def test_memorized_items(ds):
    exact = [m for m in ds.memorized if m.kind == "exact"]
    templ = [m for m in ds.memorized if m.kind == "template"]
    assert len(exact) >= 12 and len(templ) >= 1
    caps = [m.caption for m in ds.memorized]
    assert len(set(caps)) == len(caps)
    general = {c for c, k in zip(ds.captions, ds.kinds) if k == "general"}
    for m in ds.memorized:
        body, _, suffix = m.caption.partition(", ")
        assert suffix and suffix.split()[-1].isdigit()  # unique part
        rows = [i for i, c in enumerate(ds.captions) if c == m.caption]
        assert len(rows) == SMALL["n_dup"]
        same = [np.array_equal(ds.images[i], m.image) for i in rows]
        assert all(same) if m.kind == "exact" else not all(same)
        assert m.caption not in general


def test_heldout_are_novel(ds):
    assert len(ds.heldout) >= 100 and len(set(ds.heldout)) == len(ds.heldout)
    assert not set(ds.heldout) & set(ds.captions)


def test_general_captions_leave_background_free():
    spec = D.parse_caption("a large red circle on the left")
    rng = np.random.default_rng(0)
    imgs = np.stack([D.render(rng, spec) for _ in range(16)]).astype(float)
    # the right half (never named) varies between images of the same caption
    assert imgs[:, :, 40:].std(axis=0).mean() > 10


def test_checker_on_ground_truth(ds):
    general = [(im, c) for im, c, k in zip(ds.images, ds.captions, ds.kinds) if k == "general"]
    acc = np.mean([D.check_attributes(im, c) for im, c in general])
    assert acc >= 0.9
    im, c = general[0]
    assert D.check_attributes(im / 255.0, c) == D.check_attributes(im, c)
    assert not D.check_attributes(np.full((64, 64, 3), 128, np.uint8), c)
