"""Judging a copy: the nearest known image, and whether several seeds give the same image.

A memorized prompt reproduces one training image whatever the seed; a normal prompt gives a different image per
seed. Two checks follow, both on pixels only (no model, no extra dependency):

- :func:`nearest_known`: the images of a :class:`ReferenceSet` closest to a generated image. For the demo model the
  set is its memorized training images (``memorized.jsonl`` + ``memorized/`` in the model folder,
  :meth:`ReferenceSet.from_model_folder`); for a user, a folder of reference images chosen when the server starts
  (``sailscope serve --reference-dir DIR``, :meth:`ReferenceSet.from_folder`), never a path typed in the browser.
- :func:`seed_agreement`: the pairwise distances between the images of several seeds of one prompt.

**Distance** (:func:`image_distance`): both images are converted to RGB, resized to ``SIZE × SIZE`` by area
averaging (PIL's box filter) and scaled to [0, 1]; the distance is the root-mean-square difference of those
pixels (0 = identical, 1 = black vs white everywhere). For the 64-px demo model this is exactly the copy distance
of its model card (RMSE in [0, 1] pixels), so its ``tau_copy`` (``eval.json``: the VAE's worst reconstruction
error) is the threshold below which two images count as the same. For another model there is no calibrated
threshold: the distances are shown, and a verdict only when the server is given one (``--reference-tau``).
It is a coarse pixel measure: it finds exact and near-exact copies (the case of a memorized prompt), not a copy
that is shifted, cropped, recoloured or restyled (SSCD-like descriptors do that; they need a network's weights).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from sailscope.core.errors import UserInputError

SIZE = 64  # side of the grid both images are averaged onto before comparing
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_REFERENCE_IMAGES = 5000  # a reference folder is read once, into memory: SIZE² × 3 floats per image


def as_array(image: Any, size: int = SIZE) -> np.ndarray:
    """``image`` (PIL image, HxWx3 uint8 or [0, 1] float array, or a file path) as a ``size × size × 3`` float32
    array in [0, 1], resized by area averaging."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            pil = im.convert("RGB")
    elif isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        a = np.asarray(image)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        if a.ndim != 3 or a.shape[-1] not in (3, 4):
            raise UserInputError(f"an image must be HxWx3, got an array of shape {a.shape}")
        a = a[..., :3]
        if a.dtype != np.uint8:
            a = np.clip(np.round(np.asarray(a, np.float64) * 255.0), 0, 255).astype(np.uint8)
        pil = Image.fromarray(a, "RGB")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BOX)
    return np.asarray(pil, np.float32) / 255.0


def image_distance(a: Any, b: Any, size: int = SIZE) -> float:
    """RMSE in [0, 1] pixels between two images averaged onto ``size × size`` (0 = identical)."""
    return float(np.sqrt(np.mean((as_array(a, size) - as_array(b, size)) ** 2)))


def _distances(x: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """RMSE of one prepared image ``x`` (S×S×3) to each prepared reference (N×S×S×3)."""
    if refs.shape[0] == 0:
        return np.zeros(0)
    return np.sqrt(((refs - x[None]) ** 2).reshape(refs.shape[0], -1).mean(axis=1)).astype(np.float64)


@dataclass(frozen=True)
class Match:
    """One known image near a generated one: its name (relative to the set, never a local path), its caption
    when the set has captions, the distance and whether that is under the set's copy threshold."""

    name: str
    distance: float
    caption: str | None = None
    copy: bool | None = None  # None: the set has no threshold
    index: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "distance": self.distance, "caption": self.caption, "copy": self.copy}


@dataclass
class ReferenceSet:
    """Known images to compare against, prepared once (``arrays``: N×SIZE×SIZE×3 in [0, 1]).

    ``tau``: distance under which an image counts as a copy of a reference, and two generations as the same image
    (None: no verdict, distances only); ``tau_source`` says where it came from; ``image_tau`` overrides it per
    image (a merged set); ``description`` what the set is (shown in the app, no local path).
    """

    names: list[str]
    arrays: np.ndarray
    captions: list[str | None] = field(default_factory=list)
    tau: float | None = None
    tau_source: str = "no threshold"
    description: str = ""
    size: int = SIZE
    skipped: list[str] = field(default_factory=list)  # files that could not be read
    image_tau: list[float | None] | None = None  # per image (a merged set keeps each part's); None: ``tau`` for all

    def tau_of(self, index: int) -> float | None:
        return self.image_tau[index] if self.image_tau is not None else self.tau

    def __len__(self) -> int:
        return len(self.names)

    def image(self, index: int) -> np.ndarray:
        """Reference ``index`` as prepared (SIZE×SIZE×3 in [0, 1])."""
        return self.arrays[index]

    @classmethod
    def from_images(cls, images: Sequence[Any], names: Sequence[str] | None = None,
                    captions: Sequence[str | None] | None = None, *, tau: float | None = None,
                    tau_source: str = "user setting", description: str = "", size: int = SIZE) -> "ReferenceSet":
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        arrays = np.stack([as_array(im, size) for im in images]) if len(images) else np.zeros((0, size, size, 3), np.float32)
        caps = list(captions) if captions is not None else [None] * len(names)
        return cls(names=names, arrays=arrays, captions=caps, tau=tau,
                   tau_source=tau_source if tau is not None else "no threshold", description=description, size=size)

    @classmethod
    def from_model_folder(cls, folder: str | Path, size: int = SIZE) -> "ReferenceSet | None":
        """The memorized training images a model folder ships (the demo model: ``memorized.jsonl`` lines
        ``{"caption", "image"}``), with the copy threshold of its card (``eval.json`` ``tau_copy``, else
        ``train_info.json``'s); None when the folder has no such list."""
        folder = Path(folder)
        listing = folder / "memorized.jsonl"
        if not listing.is_file():
            return None
        names, captions, images = [], [], []
        for line in listing.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            path = (folder / item["image"]).resolve()
            if folder.resolve() not in path.parents:  # the list names files inside the model folder only
                raise UserInputError(f"memorized.jsonl names a file outside the model folder: {item['image']!r}")
            names.append(str(item["image"]))
            captions.append(item.get("caption"))
            images.append(path)
        tau, source = None, "no threshold"
        for meta in ("eval.json", "train_info.json"):
            p = folder / meta
            if p.is_file():
                value = json.loads(p.read_text(encoding="utf-8")).get("tau_copy")
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tau, source = float(value), f"the model card's copy threshold ({meta} tau_copy)"
                    break
        return cls.from_images(images, names, captions, tau=tau, tau_source=source, size=size,
                               description=f"the model's {len(names)} memorized training images")

    @classmethod
    def from_folder(cls, folder: str | Path, *, tau: float | None = None, limit: int = MAX_REFERENCE_IMAGES,
                    size: int = SIZE) -> "ReferenceSet":
        """Every image file (``IMAGE_SUFFIXES``) under ``folder`` (recursively, sorted; links are not followed
        out of it), names relative to it. A caption is read from a ``.txt`` file of the same stem when present.
        More than ``limit`` images is an error (the set is held in memory)."""
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise UserInputError(f"reference folder not found: {folder}")
        root_resolved = root.resolve()
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and root_resolved in p.resolve().parents)
        if len(files) > limit:
            raise UserInputError(f"the reference folder has {len(files)} images; the limit is {limit}")
        names, captions, arrays, skipped = [], [], [], []
        for p in files:
            try:
                arrays.append(as_array(p, size))
            except (OSError, ValueError, Image.DecompressionBombError):
                skipped.append(str(p.relative_to(root)))
                continue
            names.append(str(p.relative_to(root)))
            txt = p.with_suffix(".txt")
            captions.append(txt.read_text(encoding="utf-8", errors="replace").strip()[:500] if txt.is_file() else None)
        stacked = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.float32)
        return cls(names=names, arrays=stacked, captions=captions, tau=tau,
                   tau_source="server setting (--reference-tau)" if tau is not None else "no threshold",
                   description=f"{len(names)} reference images from the server's reference folder",
                   size=size, skipped=skipped)

    def merged(self, other: "ReferenceSet | None") -> "ReferenceSet":
        """Both sets in one; each image keeps its own set's threshold (``image_tau``), and ``tau`` (used for the
        seeds' agreement) is this set's, else the other's."""
        if other is None or len(other) == 0:
            return self
        if len(self) == 0:
            return other
        if self.size != other.size:
            raise UserInputError("reference sets of different comparison sizes cannot be merged")
        first = self if self.tau is not None else other
        return ReferenceSet(
            names=self.names + other.names, arrays=np.concatenate([self.arrays, other.arrays]),
            captions=list(self.captions) + list(other.captions), tau=first.tau, tau_source=first.tau_source,
            description=f"{self.description}; {other.description}", size=self.size,
            skipped=self.skipped + other.skipped,
            image_tau=[self.tau_of(i) for i in range(len(self))] + [other.tau_of(i) for i in range(len(other))],
        )


def _under(distance: float, tau: float | None) -> bool | None:
    return None if tau is None else bool(distance < tau)


def nearest_known(image: Any, references: ReferenceSet, k: int = 3) -> list[Match]:
    """The ``k`` references nearest to ``image`` (by :func:`image_distance`), nearest first."""
    if len(references) == 0:
        return []
    d = _distances(as_array(image, references.size), references.arrays)
    order = np.argsort(d, kind="stable")[: max(int(k), 1)]
    return [Match(name=references.names[i], distance=float(d[i]),
                  caption=references.captions[i] if i < len(references.captions) else None,
                  copy=_under(float(d[i]), references.tau_of(int(i))), index=int(i))
            for i in order]


@dataclass(frozen=True)
class SeedAgreement:
    """Pairwise distances between the images of several seeds of one prompt.

    ``distances[i][j]`` (symmetric, 0 on the diagonal); ``min``/``median`` over the pairs; ``same_pairs``: pairs
    under ``tau`` (None without a threshold); ``groups``: seeds linked by such pairs (connected components, only
    groups of two or more).
    """

    seeds: list[int]
    distances: list[list[float]]
    min: float | None
    median: float | None
    tau: float | None
    same_pairs: list[tuple[int, int]] | None
    groups: list[list[int]] | None

    @property
    def n_pairs(self) -> int:
        n = len(self.seeds)
        return n * (n - 1) // 2

    @property
    def all_same(self) -> bool | None:
        """Every pair of seeds gave the same image (None without a threshold or with fewer than 2 seeds)."""
        if self.same_pairs is None or self.n_pairs == 0:
            return None
        return len(self.same_pairs) == self.n_pairs

    def to_dict(self) -> dict:
        return {"seeds": self.seeds, "distances": self.distances, "min": self.min, "median": self.median,
                "tau": self.tau, "same_pairs": self.same_pairs, "groups": self.groups}


def seed_agreement(images: Sequence[Any], seeds: Sequence[int] | None = None, tau: float | None = None,
                   size: int = SIZE) -> SeedAgreement:
    """Do several seeds give the same image? Pairwise :func:`image_distance` of ``images`` (one per seed)."""
    seeds = list(seeds) if seeds is not None else list(range(len(images)))
    if len(seeds) != len(images):
        raise UserInputError(f"{len(images)} images for {len(seeds)} seeds")
    arrays = np.stack([as_array(im, size) for im in images]) if len(images) else np.zeros((0, size, size, 3))
    n = len(seeds)
    dist = [[0.0] * n for _ in range(n)]
    pairs: list[float] = []
    for i in range(n):
        d = _distances(arrays[i], arrays[i + 1:])
        for j, v in enumerate(d, start=i + 1):
            dist[i][j] = dist[j][i] = float(v)
            pairs.append(float(v))
    same = groups = None
    if tau is not None:
        same = [(seeds[i], seeds[j]) for i in range(n) for j in range(i + 1, n) if dist[i][j] < tau]
        parent = list(range(n))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for i in range(n):
            for j in range(i + 1, n):
                if dist[i][j] < tau:
                    parent[find(i)] = find(j)
        comps: dict[int, list[int]] = {}
        for i in range(n):
            comps.setdefault(find(i), []).append(seeds[i])
        groups = [g for g in comps.values() if len(g) > 1]
    return SeedAgreement(seeds=seeds, distances=dist, min=min(pairs) if pairs else None,
                         median=float(np.median(pairs)) if pairs else None, tau=tau, same_pairs=same, groups=groups)


@dataclass(frozen=True)
class CopyCheck:
    """What the app shows next to the verdict: per seed its nearest known images, and the seeds' agreement."""

    seeds: list[int]
    nearest: list[list[Match]]
    agreement: SeedAgreement
    references: str  # the set's description
    tau: float | None
    tau_source: str

    @property
    def judged(self) -> bool:
        """Some nearest image has a copy threshold (a verdict, not only distances)."""
        return any(m.copy is not None for ms in self.nearest for m in ms)

    @property
    def copies(self) -> list[int] | None:
        """Seeds whose image is under the threshold of one of its nearest known images (None: no threshold)."""
        if not self.judged:
            return None
        return [s for s, ms in zip(self.seeds, self.nearest) if any(m.copy for m in ms)]

    def summary(self) -> str:
        """One plain sentence per check (no jargon; the numbers are in the tables)."""
        n = len(self.seeds)
        parts = []
        if not self.nearest or not any(self.nearest):
            parts.append("No known images to compare with.")
        elif not self.judged:
            best = min((m[0] for m in self.nearest if m), key=lambda m: m.distance)
            parts.append(f"Nearest known image: {best.name} at distance {best.distance:.3f} "
                         "(no copy threshold for this set: judge by eye).")
        else:
            copies = self.copies or []
            if copies:
                names = sorted({m.name for s, ms in zip(self.seeds, self.nearest) if s in copies for m in ms if m.copy})
                parts.append(f"{len(copies)} of {n} image(s) reproduce a known image ({', '.join(names)}).")
            else:
                parts.append(f"None of the {n} image(s) is a copy of a known image.")
        ag = self.agreement
        if n >= 2:
            if ag.tau is None:
                parts.append(f"Seeds: closest pair at distance {ag.min:.3f}, median {ag.median:.3f}.")
            elif ag.all_same:
                parts.append(f"All {n} seeds give the same image: the prompt, not the noise, decides it.")
            elif ag.same_pairs:
                parts.append(f"{len(ag.same_pairs)} of {ag.n_pairs} seed pairs give the same image "
                             f"(groups: {'; '.join(', '.join(map(str, g)) for g in ag.groups or [])}).")
            else:
                parts.append(f"Every seed gives a different image ({ag.n_pairs} pairs compared).")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {"seeds": self.seeds, "nearest": [[m.to_dict() for m in ms] for ms in self.nearest],
                "agreement": self.agreement.to_dict(), "references": self.references, "tau": self.tau,
                "tau_source": self.tau_source, "summary": self.summary()}


def check_copies(images: Sequence[Any], seeds: Sequence[int], references: ReferenceSet | None, *,
                 k: int = 3, tau: float | None = None) -> CopyCheck:
    """Both checks for the images of several seeds of one prompt. ``tau`` for the seeds' agreement defaults to
    the reference set's threshold."""
    refs = references if references is not None else ReferenceSet.from_images([], description="no reference images")
    tau = tau if tau is not None else refs.tau
    return CopyCheck(seeds=list(seeds), nearest=[nearest_known(im, refs, k) for im in images],
                     agreement=seed_agreement(images, seeds, tau, refs.size), references=refs.description,
                     tau=tau, tau_source=refs.tau_source if tau == refs.tau else "user setting")


def references_for(model_folder: str | Path | None, reference_dir: str | Path | None = None,
                   reference_tau: float | None = None) -> ReferenceSet | None:
    """The known images for a loaded model: its own memorized set (demo) and the server's reference folder."""
    own = ReferenceSet.from_model_folder(model_folder) if model_folder else None
    user = ReferenceSet.from_folder(reference_dir, tau=reference_tau) if reference_dir else None
    if own is None:
        return user
    return own.merged(user)
