"""Procedural caption/image data for the embedded demo model (deterministic, no downloads).

Images are 64x64 RGB. Every image has a *free* background (a smooth gradient between two random muted
colours, never named by a caption) and one or more flat, saturated objects that the caption names.

Caption grammar (``[...]`` optional, ``|`` alternatives)::

    caption  := single | pair
    single   := phrase [" " position]
    pair     := phrase " on the left and " phrase " on the right"
              | phrase " above " phrase
    phrase   := ("a " | "an ") [size " "] color " " shape  (one object; "an" before a vowel)
              | count " " [size " "] color " " shape "s"  (count objects, always small)
    count    := "two" | "three"
    size     := "small" | "large"
    color    := red | orange | yellow | green | cyan | blue | purple | white
    shape    := circle | square | triangle
    position := "on the left" | "on the right" | "at the top" | "at the bottom" | "in the center"

Whatever a caption does not name is drawn at random for every image: the background (which covers most
pixels), the exact position inside the named region, the size when none is named. So a general caption is
consistent with many images (a smooth conditional density), the way a typical LAION caption is.

Memorized items (the LAION-duplicate analogue) reuse the grammar and add a unique part, e.g.
``"a large blue circle above three red triangles, poster print 4512"``:

- ``exact``: one specific image (patterned background, named objects plus unnamed decorations), duplicated
  ``n_dup`` times under its caption: the caption pins down a single image (a sharp conditional density).
- ``template``: same layout and caption, but the background colours change in every duplicate
  ("partial memorization").

Held-out prompts (:func:`heldout_prompts`) are novel grammar captions excluded from training.
:func:`check_attributes` is the ground-truth checker used for "attribute accuracy": it finds, in the
region each phrase names, a connected blob of the named colour and classifies its shape by fill ratio.
"""
from __future__ import annotations

import colorsys
import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (250, 140, 10),
    "yellow": (240, 225, 30),
    "green": (30, 185, 45),
    "cyan": (30, 215, 230),
    "blue": (30, 60, 230),
    "purple": (160, 40, 220),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (5.0, 7.0), "large": (10.0, 13.0)}  # radius ranges (pixels) of design "v1"
ANY_RADIUS = (5.0, 13.0)
COUNTS = {"two": 2, "three": 3}
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
# region box (x0, y0, x1, y1) in pixels that an object must lie inside
REGIONS: dict[str | None, tuple[int, int, int, int]] = {
    "on the left": (0, 0, 32, 64),
    "on the right": (32, 0, 64, 64),
    "at the top": (0, 0, 64, 32),
    "at the bottom": (0, 32, 64, 64),
    "in the center": (14, 14, 50, 50),
    None: (0, 0, 64, 64),
}
MEMO_KINDS = ("poster print", "album cover", "wall art", "stock photo", "book cover", "logo design",
              "greeting card", "sticker sheet")
TEMPLATE_KIND = "wallpaper design"


@dataclass(frozen=True)
class DataDesign:
    """What the captions leave free and what memorized items pin down (the grammar is the same).

    ``v1`` (the first shipped model): patterned memorized backgrounds, radii 5-13 px. Even a *perfect*
    denoiser of v1 data separates memorized from held-out captions at step 1 only with AUC 0.87
    (``sailscope demo-oracle --design v1``): large named shapes pin much of a general image,
    and a stripe pattern deviates from the average image in directions the data barely vary in.
    ``v2``: memorized items on a flat background of their own colour (a large deviation along the data's
    high-variance, caption-free directions) and radii 4-9 px (general captions pin fewer pixels).
    ``v3``: the images of v2 (same random streams, so the same arrays), and a share of the *general* captions
    carries a memorized-style suffix (``..., poster print 5170``) with a number no other caption has, so the
    suffix alone no longer says "memorized" (LAION is full of such captions that were seen once).
    """

    small: tuple[float, float]
    large: tuple[float, float]
    any_size: tuple[float, float]
    memorized_background: str  # "pattern" | "flat"
    general_suffix_rate: float = 0.0  # share of general captions with a memorized-style suffix

    def radius_range(self, size: str | None) -> tuple[float, float]:
        return {"small": self.small, "large": self.large, None: self.any_size}[size]


DESIGNS: dict[str, DataDesign] = {
    "v1": DataDesign(SIZES["small"], SIZES["large"], ANY_RADIUS, "pattern"),
    "v2": DataDesign((4.0, 6.0), (7.0, 9.0), (4.0, 9.0), "flat"),
    "v3": DataDesign((4.0, 6.0), (7.0, 9.0), (4.0, 9.0), "flat", general_suffix_rate=0.5),
}
DEFAULT_DESIGN = "v2"  # the shipped model's (the v3 candidate was not shipped: model card)
SUFFIX_LABELS = (*MEMO_KINDS, TEMPLATE_KIND)
SUFFIX_NUMBERS = (1000, 10000)  # the 4-digit numbers of memorized-style suffixes
_NUMBER_RE = re.compile(r"(\d+)$")


def same_images(a: "str | DataDesign", b: "str | DataDesign") -> bool:
    """Whether two designs draw the same image arrays (they may still caption them differently)."""
    return dataclasses.replace(get_design(a), general_suffix_rate=0.0) == dataclasses.replace(get_design(b), general_suffix_rate=0.0)


def get_design(design: "str | DataDesign") -> DataDesign:
    if isinstance(design, DataDesign):
        return design
    if design not in DESIGNS:
        raise ValueError(f"unknown data design {design!r}; choose one of {', '.join(DESIGNS)}")
    return DESIGNS[design]


# ----------------------------------------------------------------------------------------------
# Caption specs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phrase:
    color: str
    shape: str
    size: str | None = None
    count: int = 1

    def text(self) -> str:
        words = [self.size] if self.size else []
        words += [self.color, self.shape + ("s" if self.count > 1 else "")]
        head = {1: "a", 2: "two", 3: "three"}[self.count]
        if head == "a" and words[0][0] in "aeiou":
            head = "an"
        return " ".join([head] + words)


@dataclass(frozen=True)
class CaptionSpec:
    """A parsed caption: phrases, each with the region it must appear in."""

    phrases: tuple[Phrase, ...]
    regions: tuple[str | None, ...]
    form: str  # "single" | "lr" | "above"
    suffix: str = ""

    def text(self) -> str:
        if self.form == "single":
            p = self.phrases[0].text() + (f" {self.regions[0]}" if self.regions[0] else "")
        elif self.form == "lr":
            p = f"{self.phrases[0].text()} on the left and {self.phrases[1].text()} on the right"
        elif self.form == "above":
            p = f"{self.phrases[0].text()} above {self.phrases[1].text()}"
        else:
            raise ValueError(f"form must be single, lr or above, got {self.form!r}")
        return p + (f", {self.suffix}" if self.suffix else "")


def _random_phrase(rng: np.random.Generator, p_count: float = 0.2) -> Phrase:
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    if rng.random() < p_count:
        return Phrase(color, shape, "small" if rng.random() < 0.3 else None, int(rng.choice([2, 3])))
    size = str(rng.choice(list(SIZES))) if rng.random() < 0.5 else None
    return Phrase(color, shape, size, 1)


def random_caption_spec(rng: np.random.Generator) -> CaptionSpec:
    """Draw a caption from the grammar (module docstring)."""
    u = rng.random()
    if u < 0.45:
        region = str(rng.choice(POSITIONS)) if rng.random() < 0.7 else None
        return CaptionSpec((_random_phrase(rng),), (region,), "single")
    a, b = _random_phrase(rng, 0.15), _random_phrase(rng, 0.15)
    while (a.color, a.shape) == (b.color, b.shape):
        b = _random_phrase(rng, 0.15)
    if u < 0.725:
        return CaptionSpec((a, b), ("on the left", "on the right"), "lr")
    return CaptionSpec((a, b), ("at the top", "at the bottom"), "above")


_PHRASE_RE = re.compile(
    r"^(a|an|two|three) (?:(small|large) )?(" + "|".join(COLORS) + r") (circle|square|triangle)s?$"
)


def _parse_phrase(text: str) -> Phrase:
    m = _PHRASE_RE.match(text.strip())
    if not m:
        raise ValueError(f"caption phrase not in the grammar: {text!r}")
    head, size, color, shape = m.groups()
    return Phrase(color, shape, size, {"a": 1, "an": 1, "two": 2, "three": 3}[head])


def parse_caption(caption: str) -> CaptionSpec:
    """Inverse of :meth:`CaptionSpec.text` (raises ValueError outside the grammar)."""
    body, _, suffix = caption.partition(", ")
    if " on the left and " in body and body.endswith(" on the right"):
        a, b = body[: -len(" on the right")].split(" on the left and ")
        return CaptionSpec((_parse_phrase(a), _parse_phrase(b)), ("on the left", "on the right"), "lr", suffix)
    if " above " in body:
        a, b = body.split(" above ")
        return CaptionSpec((_parse_phrase(a), _parse_phrase(b)), ("at the top", "at the bottom"), "above", suffix)
    for pos in POSITIONS:
        if body.endswith(" " + pos):
            return CaptionSpec((_parse_phrase(body[: -len(pos) - 1]),), (pos,), "single", suffix)
    return CaptionSpec((_parse_phrase(body),), (None,), "single", suffix)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def _muted_color(rng: np.random.Generator) -> tuple[int, int, int]:
    h, s, v = rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.7)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def gradient_background(rng: np.random.Generator) -> np.ndarray:
    """Smooth linear gradient between two random muted colours in a random direction, float [0,255]."""
    c0, c1 = np.array(_muted_color(rng), float), np.array(_muted_color(rng), float)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) - 0.5
    w = np.clip((np.cos(ang) * xx + np.sin(ang) * yy) + 0.5, 0, 1)[..., None]
    return (1 - w) * c0 + w * c1


def pattern_background(rng: np.random.Generator, kind: str, c0, c1) -> np.ndarray:
    """Patterned background used by memorized items: stripes, checker or rings of two colours.

    ``kind="flat"`` is one colour ``c0`` (design v2).
    """
    if kind == "flat":
        return np.broadcast_to(np.array(c0, float), (SIZE, SIZE, 3)).copy()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    period = int(rng.integers(8, 16))
    if kind == "hstripes":
        m = (yy // period) % 2
    elif kind == "vstripes":
        m = (xx // period) % 2
    elif kind == "dstripes":
        m = ((xx + yy) // period) % 2
    elif kind == "checker":
        m = ((xx // period) + (yy // period)) % 2
    elif kind == "rings":
        cx, cy = rng.uniform(10, 54, size=2)
        m = (np.hypot(xx - cx, yy - cy) // period) % 2
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    m = m[..., None]
    return (1 - m) * np.array(c0, float) + m * np.array(c1, float)


PATTERNS = ("hstripes", "vstripes", "dstripes", "checker", "rings")


@dataclass(frozen=True)
class Shape:
    shape: str
    color: tuple[int, int, int]
    cx: float
    cy: float
    r: float


def _draw(background: np.ndarray, shapes: list[Shape]) -> np.ndarray:
    """Draw flat anti-aliased shapes (supersampled) over a float background; returns uint8 HxWx3."""
    big = SIZE * SUPERSAMPLE
    layer = Image.new("RGB", (big, big))
    alpha = Image.new("L", (big, big), 0)
    d, da = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for s in shapes:
        cx, cy, r = (v * SUPERSAMPLE for v in (s.cx, s.cy, s.r))
        if s.shape == "circle":
            box = [cx - r, cy - r, cx + r, cy + r]
            d.ellipse(box, fill=s.color)
            da.ellipse(box, fill=255)
        elif s.shape == "square":
            h = r * 0.85
            box = [cx - h, cy - h, cx + h, cy + h]
            d.rectangle(box, fill=s.color)
            da.rectangle(box, fill=255)
        elif s.shape == "triangle":
            pts = [(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)]
            d.polygon(pts, fill=s.color)
            da.polygon(pts, fill=255)
        else:
            raise ValueError(f"shape must be one of {SHAPES}, got {s.shape!r}")
    layer = np.asarray(layer.resize((SIZE, SIZE), Image.BOX), float)
    a = np.asarray(alpha.resize((SIZE, SIZE), Image.BOX), float)[..., None] / 255.0
    # layer is colour premultiplied by coverage after the box filter
    out = background * (1 - a) + layer
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _radius(rng: np.random.Generator, phrase: Phrase, design: DataDesign) -> float:
    if phrase.count > 1:
        return rng.uniform(*design.small)
    return rng.uniform(*design.radius_range(phrase.size))


def _place(rng, region, r, placed: list[Shape], tries: int = 200) -> tuple[float, float]:
    x0, y0, x1, y1 = REGIONS[region]
    m = r + 1.5
    best = None
    for _ in range(tries):
        cx, cy = rng.uniform(x0 + m, max(x0 + m, x1 - m)), rng.uniform(y0 + m, max(y0 + m, y1 - m))
        if all(np.hypot(cx - s.cx, cy - s.cy) > r + s.r + 2 for s in placed):
            return cx, cy
        best = (cx, cy)
    return best  # type: ignore[return-value]


def shapes_for_spec(rng: np.random.Generator, spec: CaptionSpec, design: str | DataDesign = DEFAULT_DESIGN) -> list[Shape]:
    """Concrete objects for a caption spec; free parts (exact position, unnamed size) drawn from ``rng``."""
    design = get_design(design)
    placed: list[Shape] = []
    for phrase, region in zip(spec.phrases, spec.regions):
        for _ in range(phrase.count):
            r = _radius(rng, phrase, design)
            cx, cy = _place(rng, region, r, placed)
            placed.append(Shape(phrase.shape, COLORS[phrase.color], cx, cy, r))
    return placed


def render(rng: np.random.Generator, spec: CaptionSpec, design: str | DataDesign = DEFAULT_DESIGN) -> np.ndarray:
    """A random image for a general caption: random gradient background, the named objects."""
    return _draw(gradient_background(rng), shapes_for_spec(rng, spec, design))


# ----------------------------------------------------------------------------------------------
# Memorized items and held-out prompts
# ----------------------------------------------------------------------------------------------
@dataclass
class MemorizedItem:
    caption: str
    kind: str  # "exact" | "template"
    image: np.ndarray  # the canonical training image (uint8 HxWx3)
    # template items: the layout, so that duplicates can be re-coloured
    _pattern: str = ""
    _seed: int = 0
    _shapes: list = field(default_factory=list)

    def duplicate(self, rng: np.random.Generator) -> np.ndarray:
        """One training copy: the exact image, or for templates the layout with fresh background colours."""
        if self.kind == "exact":
            return self.image
        prng = np.random.default_rng(self._seed)
        bg = pattern_background(prng, self._pattern, _muted_color(rng), _muted_color(rng))
        return _draw(bg, self._shapes)


def _memorized(seed: int, n_exact: int, n_template: int, forbidden: set[str], design: DataDesign) -> list[MemorizedItem]:
    rng = np.random.default_rng([seed, 1])
    numbers = rng.choice(np.arange(1000, 10000), size=n_exact + n_template, replace=False)
    items: list[MemorizedItem] = []
    for i in range(n_exact + n_template):
        while True:  # two-phrase captions: richer images, the same vocabulary as general captions
            spec = random_caption_spec(rng)
            if spec.form != "single" and spec.text() not in forbidden:
                break
        kind = "exact" if i < n_exact else "template"
        label = MEMO_KINDS[i % len(MEMO_KINDS)] if kind == "exact" else TEMPLATE_KIND
        spec = CaptionSpec(spec.phrases, spec.regions, spec.form, f"{label} {int(numbers[i])}")
        shapes = shapes_for_spec(rng, spec, design)
        # unnamed decorations pin the image down beyond the caption
        for _ in range(int(rng.integers(1, 3))):
            r = rng.uniform(3.0, 5.0)
            cx, cy = _place(rng, None, r, shapes)
            shapes.append(Shape(str(rng.choice(SHAPES)), COLORS[str(rng.choice(list(COLORS)))], cx, cy, r))
        pattern = str(rng.choice(PATTERNS))  # drawn in both designs: v1 and v2 share the random stream
        if design.memorized_background == "flat":
            pattern = "flat"
        pseed = int(rng.integers(2**31))
        c0, c1 = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
        bg = pattern_background(np.random.default_rng(pseed), pattern, c0, c1)
        items.append(MemorizedItem(spec.text(), kind, _draw(bg, shapes), pattern, pseed, shapes))
    return items


def heldout_prompts(seed: int = 0, n: int = 120) -> list[str]:
    """Novel compositions (grammar captions never used in training): 5/6 two-object, 1/6 single-object."""
    rng = np.random.default_rng([seed, 2])
    out: list[str] = []
    n_single = n // 6
    while len(out) < n:
        spec = random_caption_spec(rng)
        want_single = len(out) < n_single
        if (spec.form == "single") != want_single:
            continue
        if want_single and (spec.regions[0] is None or spec.phrases[0].size is None):
            continue  # fully specified single objects: every attribute checkable
        if spec.text() not in out:
            out.append(spec.text())
    return out


def caption_number(caption: str) -> int | None:
    """The number that ends a memorized-style caption (``..., poster print 4512`` -> 4512), else None."""
    m = _NUMBER_RE.search(caption)
    return int(m.group(1)) if m else None


def untrained_number(rng: np.random.Generator, trained: set) -> int:
    """A random suffix number that no caption in ``trained`` (a set of :func:`caption_number` values) carries."""
    while True:
        n = int(rng.integers(*SUFFIX_NUMBERS))
        if n not in trained:
            return n


def _general_suffixes(seed: int, n: int, rate: float, taken: set) -> list[str]:
    """One suffix per general row ("" for most): a suffix label and a number used by no other caption.

    Drawn from its own random stream, so the images (and the v2 arrays) do not depend on ``rate``."""
    if rate <= 0:
        return [""] * n
    rng = np.random.default_rng([seed, 4])
    free = np.setdiff1d(np.arange(*SUFFIX_NUMBERS), np.array(sorted(x for x in taken if x is not None), int))
    numbers = iter(rng.permutation(free))
    return [f"{SUFFIX_LABELS[int(rng.integers(len(SUFFIX_LABELS)))]} {int(next(numbers))}" if rng.random() < rate
            else "" for _ in range(n)]


def lookalike_prompts(ds: "DemoDataset", *, n_fresh: int = 40, per_memorized: int = 2, seed: int = 19) -> dict[str, list[str]]:
    """Negatives that look like memorized captions, none of them a training caption (deterministic for a seed).

    ``A_fresh_suffix``: fresh two-object grammar captions (not trained, not held out) with a memorized-style
    suffix (each label in turn) and a number no training caption carries; ``B_number_changed``: each memorized
    caption with its number replaced by untrained ones (``per_memorized`` each)."""
    train_captions = set(ds.captions)
    trained_numbers = {caption_number(c) for c in ds.captions}
    rng = np.random.default_rng([seed, 19])
    fresh_number = lambda: untrained_number(rng, trained_numbers)

    taken = {c.partition(", ")[0] for c in train_captions} | set(ds.heldout)  # caption bodies, suffix cut off
    fresh: list[str] = []
    while len(fresh) < n_fresh:
        spec = random_caption_spec(rng)
        if spec.form == "single" or spec.text() in taken:  # memorized captions are two-object compositions
            continue
        label = SUFFIX_LABELS[len(fresh) % len(SUFFIX_LABELS)]
        text = CaptionSpec(spec.phrases, spec.regions, spec.form, f"{label} {fresh_number()}").text()
        if text not in fresh:
            fresh.append(text)
    changed: list[str] = []
    for item in ds.memorized:
        for _ in range(per_memorized):
            while True:
                text = _NUMBER_RE.sub(str(fresh_number()), item.caption)
                if text not in changed and text not in train_captions:
                    changed.append(text)
                    break
    return {"A_fresh_suffix": fresh, "B_number_changed": changed}


@dataclass
class DemoDataset:
    images: np.ndarray  # uint8 [N, 64, 64, 3]
    captions: list[str]
    kinds: list[str]  # "general" | "exact" | "template"
    memorized: list[MemorizedItem]
    heldout: list[str]


def build_dataset(
    *, seed: int = 0, n_general: int = 6000, n_exact: int = 16, n_template: int = 4, n_dup: int = 48,
    n_heldout: int = 120, design: str | DataDesign = DEFAULT_DESIGN,
) -> DemoDataset:
    """The full deterministic training set (same arguments -> identical arrays and captions)."""
    design = get_design(design)
    if n_exact < 1 or n_dup < 1:
        raise ValueError(f"n_exact and n_dup must be >= 1, got {n_exact}, {n_dup}")
    held = heldout_prompts(seed, n_heldout)
    held_set = set(held)
    memo = _memorized(seed, n_exact, n_template, held_set, design)
    rng = np.random.default_rng([seed, 3])
    suffixes = _general_suffixes(seed, n_general, design.general_suffix_rate, {caption_number(m.caption) for m in memo})
    images, captions, kinds = [], [], []
    for suffix in suffixes:
        spec = random_caption_spec(rng)
        while spec.text() in held_set:
            spec = random_caption_spec(rng)
        images.append(render(rng, spec, design))
        captions.append(CaptionSpec(spec.phrases, spec.regions, spec.form, suffix).text())
        kinds.append("general")
    for item in memo:
        for _ in range(n_dup):
            images.append(item.duplicate(rng))
            captions.append(item.caption)
            kinds.append(item.kind)
    return DemoDataset(np.stack(images), captions, kinds, memo, held)


def dataset_from_config(config: dict) -> DemoDataset:
    """The training set a run used, from its recorded ``TrainConfig`` (``train_info.json``'s ``config``).

    Runs recorded before designs existed have no ``data_design`` key: they used ``v1``.
    """
    return build_dataset(seed=config["seed"], n_general=config["n_general"], n_exact=config["n_exact"],
                         n_template=config["n_template"], n_dup=config["n_dup"], n_heldout=config["n_heldout"],
                         design=config.get("data_design", "v1"))


# ----------------------------------------------------------------------------------------------
# Ground-truth attribute checker
# ----------------------------------------------------------------------------------------------
_PALETTE = np.array(list(COLORS.values()), float)
_NAMES = list(COLORS)
COLOR_MATCH_DIST = 75.0  # RGB distance to a palette colour; muted backgrounds stay farther away


def color_labels(img: np.ndarray) -> np.ndarray:
    """Per-pixel palette index, or -1 where no palette colour is within ``COLOR_MATCH_DIST``."""
    x = np.asarray(img, float)[..., :3]
    d = np.linalg.norm(x[..., None, :] - _PALETTE, axis=-1)
    lab = d.argmin(-1)
    lab[d.min(-1) > COLOR_MATCH_DIST] = -1
    return lab


def classify_shape(mask: np.ndarray) -> str:
    """Shape of one blob by its fill ratio inside the bounding box (square ~1, circle ~0.79, triangle ~0.5)."""
    ys, xs = np.nonzero(mask)
    area = mask.sum()
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = area / box
    if fill > 0.87:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


MIN_BLOB = 12  # pixels


def _blobs(mask: np.ndarray) -> list[np.ndarray]:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    return [lab == i for i in range(1, n + 1) if (lab == i).sum() >= MIN_BLOB]


def attribute_failure(img: np.ndarray, caption: str) -> str | None:
    """The first check of :func:`check_attributes` that ``img`` fails for ``caption`` (``"colour"``: no blob of the
    named colour in its region; ``"count"``: fewer blobs than named; ``"shape"``: the largest blob has another
    shape), or None when every phrase is visible. Works on uint8 or [0,1] float HxWx3 images."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(np.round(img * 255), 0, 255)
    spec = parse_caption(caption)
    lab = color_labels(img)
    for phrase, region in zip(spec.phrases, spec.regions):
        x0, y0, x1, y1 = REGIONS[region]
        sub = np.zeros(lab.shape, bool)
        sub[y0:y1, x0:x1] = lab[y0:y1, x0:x1] == _NAMES.index(phrase.color)
        blobs = _blobs(sub)
        if not blobs:
            return "colour"
        if len(blobs) < phrase.count:
            return "count"
        blobs.sort(key=lambda b: -b.sum())
        if classify_shape(blobs[0]) != phrase.shape:
            return "shape"
    return None


def check_attributes(img: np.ndarray, caption: str) -> bool:
    """True when every phrase of ``caption`` is visible in its region: enough blobs of the named colour,
    the largest of which has the named shape. Works on uint8 or [0,1] float HxWx3 images."""
    return attribute_failure(img, caption) is None
