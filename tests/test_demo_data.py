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


def test_config_rebuilds_the_shipped_memorized_images():
    """``dataset_from_config`` of the shipped ``train_info.json`` redraws its memorized PNGs bit for bit
    (memorized items come before the general images in the random stream, so one general image suffices)."""
    import json

    from PIL import Image

    from sailscope.core.demo.train import default_out

    model = default_out()
    cfg = json.loads((model / "train_info.json").read_text())["config"]
    ds = D.dataset_from_config({**cfg, "n_general": 1})
    rows = [json.loads(line) for line in (model / "memorized.jsonl").read_text().splitlines() if line.strip()]
    assert [r["caption"] for r in rows] == [m.caption for m in ds.memorized]
    for r, m in zip(rows, ds.memorized):
        assert np.array_equal(np.asarray(Image.open(model / r["image"]).convert("RGB")), m.image)


def test_designs_differ_where_documented():
    v1 = D.build_dataset(seed=0, n_general=1, n_exact=12, n_template=1, n_dup=1, design="v1")
    v2 = D.build_dataset(seed=0, n_general=1, n_exact=12, n_template=1, n_dup=1, design="v2")

    def top_colour_share(img):
        _, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        return counts.max() / counts.sum()

    # v2: one flat background colour covers most of every memorized image; v1: a two-colour pattern
    assert min(top_colour_share(m.image) for m in v2.memorized) > 0.55
    assert max(top_colour_share(m.image) for m in v1.memorized if m.kind == "exact") < 0.55
    # v2 draws named objects smaller: a "large" v2 circle has the radius range of design v2
    spec = D.parse_caption("a large red circle")
    for name in ("v1", "v2"):
        lo, hi = D.DESIGNS[name].large
        (shape,) = D.shapes_for_spec(np.random.default_rng(1), spec, name)
        assert lo <= shape.r <= hi
    assert D.DESIGNS["v2"].large[1] < D.DESIGNS["v1"].large[0]
    with pytest.raises(ValueError, match="data design"):
        D.get_design("v9")


def test_heldout_truth_renders_follow_their_prompts(ds):
    """The evaluation's "what a perfect model draws" reference: deterministic, in [0, 1], and the checker agrees."""
    from sailscope.core.demo.evaluate import heldout_truth_renders, nearest_train_rmse

    prompts = ds.heldout[:20]
    a = heldout_truth_renders(prompts, "v2", 2)
    assert a.shape == (40, 64, 64, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, heldout_truth_renders(prompts, "v2", 2))
    assert np.mean([D.check_attributes(im, p) for im, p in zip(a, (p for p in prompts for _ in range(2)))]) >= 0.9
    # nearest-neighbour RMSE agrees with a direct computation
    train = ds.images[:50].astype(np.float32) / 255.0
    direct = np.sqrt(((a[:3, None] - train[None]) ** 2).mean(axis=(2, 3, 4))).min(axis=1)
    assert np.allclose(nearest_train_rmse(a[:3], train), direct, atol=1e-5)


def test_attribute_failure_names_the_first_failed_check():
    rng = np.random.default_rng(3)
    spec = D.parse_caption("a large red square on the left")
    caption = "a large red square on the left"
    im = next(x for x in (D.render(rng, spec, "v2") for _ in range(20)) if D.check_attributes(x, caption))
    assert D.attribute_failure(im, "a large red square on the left") is None
    assert D.attribute_failure(im, "a large blue square on the left") == "colour"
    assert D.attribute_failure(im, "a large red square on the right") == "colour"  # nothing red in that region
    assert D.attribute_failure(im, "two red squares on the left") == "count"
    assert D.attribute_failure(im, "a large red circle on the left") == "shape"
    # a square whose corners are rounded off (what a blurring decoder does) reads as a circle
    red = D.color_labels(im) == D._NAMES.index("red")
    ys, xs = np.nonzero(red)
    cy, cx, r = ys.mean(), xs.mean(), (ys.max() - ys.min() + 1) / 2
    yy, xx = np.mgrid[:64, :64]
    corners = red & ((yy - cy) ** 2 + (xx - cx) ** 2 > (0.95 * r) ** 2)
    rounded = im.copy()
    rounded[corners] = im[~red][0]  # paint the corners with a background pixel
    assert D.attribute_failure(rounded, "a large red square on the left") == "shape"


def test_v3_suffixes_mean_nothing_alone():
    """Design v3: the images of v2, and about half of the general captions carry a memorized-style suffix whose
    number no other caption has (memorized numbers included), so the suffix alone does not mark a memorized item."""
    kw = dict(seed=0, n_general=400, n_exact=12, n_template=2, n_dup=2, n_heldout=120)
    v2, v3 = D.build_dataset(design="v2", **kw), D.build_dataset(design="v3", **kw)
    assert np.array_equal(v2.images, v3.images) and [m.caption for m in v2.memorized] == [m.caption for m in v3.memorized]
    general = [c for c, k in zip(v3.captions, v3.kinds) if k == "general"]
    suffixed = [c for c in general if D.caption_number(c) is not None]
    assert abs(len(suffixed) / len(general) - D.DESIGNS["v3"].general_suffix_rate) < 0.06
    assert {c.partition(", ")[0] for c in general} == set(v2.captions[:len(general)])  # same bodies as v2
    numbers = [D.caption_number(c) for c in suffixed] + [D.caption_number(m.caption) for m in v3.memorized]
    assert len(numbers) == len(set(numbers))
    labels = {c.partition(", ")[2].rsplit(" ", 1)[0] for c in suffixed}
    assert labels == set(D.SUFFIX_LABELS)
    assert all(D.parse_caption(c).text() == c for c in suffixed)


def test_lookalike_prompts_are_untrained_and_look_memorized():
    ds = D.build_dataset(seed=0, n_general=400, n_exact=12, n_template=2, n_dup=2, n_heldout=120, design="v3")
    look = D.lookalike_prompts(ds, n_fresh=18, per_memorized=2)
    trained = set(ds.captions)
    trained_numbers = {D.caption_number(c) for c in ds.captions}
    fresh, changed = look["A_fresh_suffix"], look["B_number_changed"]
    assert len(fresh) == 18 and len(changed) == 2 * len(ds.memorized)
    for c in fresh + changed:
        assert c not in trained and D.caption_number(c) not in trained_numbers
    bodies = {c.partition(", ")[0] for c in ds.captions} | set(ds.heldout)
    assert not any(c.partition(", ")[0] in bodies for c in fresh)
    assert {c.rsplit(" ", 1)[0] for c in changed} == {m.caption.rsplit(" ", 1)[0] for m in ds.memorized}
    assert look == D.lookalike_prompts(ds, n_fresh=18, per_memorized=2)  # deterministic
