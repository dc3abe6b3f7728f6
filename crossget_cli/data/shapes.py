"""A built-in, seeded image-text benchmark made of easy-VQA images ("shapes").

`easy-VQA <https://github.com/vzhou842/easy-VQA>`_ (MIT; its PyPI wheel ``easy-vqa`` 1.0 is read as an archive,
never installed: see :func:`~crossget_cli.data.easy_vqa.easy_vqa_wheel`)
ships 4000 train and 1000 test 64x64 PNGs, each one shape (circle, rectangle,
triangle) in one of 8 colours on a light, flat background. One such image is far
too easy for retrieval (84% of it is background), so a **composite** puts
``rows x cols`` of them, each shrunk to ``object_size`` pixels, in a grid, leaves
some cells empty (a flat background like easy-VQA's), and adds Gaussian noise::

    canvas = (rows * object_size) x (cols * object_size) pixels, RGB
    caption = "black circle, blue triangle, blue triangle, red rectangle"

* **Objects** come from easy-VQA's *train* images for the ``train`` split and from
  its *test* images for ``val``/``test`` (so no source image is shared between
  train and evaluation); within a composite no source image repeats. The label of
  every source image is read from its pixels (the exact palette colour; the shape
  from how much of its bounding box it fills) and checked against easy-VQA's own
  question/answer annotations.
* **Captions** list the objects' ``"<color> <shape>"`` phrases joined by ``", "``:
  alphabetically sorted (``order="sorted"``, the default: the caption is the bag of
  objects) or in row-major cell order (``order="row-major"``: reading order matters).
* **Hard negatives**: captions that differ from the truth in exactly one object's
  colour or one object's shape (about half of each when the objects allow),
  distinct from each other and from the truth. :func:`hard_negative_accuracy`
  scores them.
* **Determinism**: composite ``i`` of a split depends only on ``(seed, split, i)``
  (a ``numpy`` ``SeedSequence``; no global random state), so the first ``n``
  composites are the same whatever ``n`` is, the same seed gives identical pixels,
  and train, val and test draw from disjoint random streams.

The default (:data:`DEFAULT`, builtin ``shapes``) is a 3x3 grid of 32-pixel objects
on a 96x96 canvas, 25% empty cells (1-9 objects, 6.75 on average), each object
cropped to its shape before shrinking, noise sigma 12/255, 8 hard negatives,
10000 train and 1000 test composites. Why cropped 3x3: on a 2-core CPU a small
CLIP (ViT 4x128, patch 8; text transformer 4x128; batch 128, AdamW 5e-4) trained
4 minutes on 10000 composites reached, on 500 test composites (hard-negative chance
11.1%): cropped 3x3 R@1 0.92 (both ways), hard-negative accuracy 21%; uncropped 3x3
R@1 0.28, hard negatives 5% (shapes 1/8-1/2 of a cell are not yet learnt: below
chance); the 2x2 variant R@1 0.20, hard negatives 8%. Cropped objects are learnt
within the budget, and then retrieval saturates while one changed attribute among
~7 objects keeps separating models: report hard-negative accuracy alongside recall.
Captions of 1-9 objects are 4-~35 CLIP tokens with SOT/EOT (31 for nine), enough for
text-side merging to act. The measured 2x2 variant (four whole easy-VQA images
shrunk to 32x32 on 64x64, no empty cells, sorted captions) is :data:`PRESETS`
``["shapes2x2"]``.

This module makes the composites; the easy-VQA source images are read by :mod:`.easy_vqa`.
:func:`~crossget_cli.data.builtin.write_dataset` writes PNGs and a Karpathy-style ``dataset_shapes.json`` that
:func:`crossget_cli.data.retrieval.load_retrieval` reads unchanged; :func:`~crossget_cli.data.builtin.resolve_builtin`
generates a preset once into a cache folder for ``builtin:shapes-test`` style data strings.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from crossget_cli.data.easy_vqa import COLORS, EASY_VQA_VERSION, SHAPES, source_images
from crossget_cli.errors import CrossGetError

#: Bumped whenever the same config would produce different pixels or JSON.
FORMAT_VERSION = 1

ORDERS = ("sorted", "row-major")
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
_POOL = {"train": "train", "val": "test", "test": "test"}  # which easy-VQA image set a split draws from
_BACKGROUND = (230, 255)  # easy-VQA backgrounds: each channel uniform in [230, 255]


def classnames() -> list[str]:
    """The 24 colour-shape classes, ``"black circle"`` ... ``"yellow triangle"``."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ShapesConfig:
    """How composites are made. Invalid values raise :class:`CrossGetError`.

    Attributes:
        grid: ``(rows, cols)`` cells (an int ``n`` means ``(n, n)``), 1..8 each.
        object_size: pixels per cell side (each easy-VQA object is shrunk to this);
            the canvas is ``rows * object_size`` by ``cols * object_size``.
        noise_sigma: standard deviation of the Gaussian pixel noise, in units of the
            full range (``12/255``: 12 grey levels); 0 turns it off.
        empty_prob: probability that a cell is left empty (a flat background), so
            object counts vary; at least one cell always holds an object.
        crop: cut each easy-VQA image to its shape's bounding box (plus ``margin`` on
            every side, squared) before shrinking, so every object fills its cell;
            False shrinks the whole 64x64 image (shapes then span 1/8 to 1/2 of the cell).
        margin: the crop's margin, as a fraction of the shape's larger side.
        order: ``"sorted"`` (alphabetical phrases) or ``"row-major"`` (cell order).
        hard_negatives: hard-negative captions per composite, 0..9 (9 is what a
            single object allows: 7 other colours + 2 other shapes).
        max_objects: at most this many objects per composite (None: no cap); 1 makes
            single-object composites, the zero-shot classification set ``shapes1``.
        seed: base seed of every random draw.
        n_train, n_val, n_test: composites per split (the default splits to write).
    """

    grid: tuple[int, int] | int = (3, 3)
    object_size: int = 32
    noise_sigma: float = 12 / 255
    empty_prob: float = 0.25
    crop: bool = True
    margin: float = 0.15
    order: str = "sorted"
    hard_negatives: int = 8
    seed: int = 0
    n_train: int = 10000
    n_val: int = 0
    n_test: int = 1000
    max_objects: int | None = None

    def __post_init__(self):
        grid = self.grid
        if isinstance(grid, int) and not isinstance(grid, bool):
            grid = (grid, grid)
        if isinstance(grid, list):
            grid = tuple(grid)
        if (
            not isinstance(grid, tuple)
            or len(grid) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= 8 for g in grid)
        ):
            raise CrossGetError(f"grid must be (rows, cols) with 1..8 cells each, got {self.grid!r}", "e.g. grid=(3, 3)")
        object.__setattr__(self, "grid", grid)
        check_int("object_size", self.object_size, 8, 256, "e.g. object_size=32")
        _check_number("noise_sigma", self.noise_sigma, 0.0, 1.0, "e.g. noise_sigma=12/255")
        _check_number("empty_prob", self.empty_prob, 0.0, 1.0, "e.g. empty_prob=0.25", high_open=True)
        if not isinstance(self.crop, bool):
            raise CrossGetError(f"crop must be True or False, got {self.crop!r}", "e.g. crop=True")
        _check_number("margin", self.margin, 0.0, 1.0, "e.g. margin=0.15")
        if self.order not in ORDERS:
            raise CrossGetError(f"unknown caption order {self.order!r}", f"choose one of: {', '.join(ORDERS)}")
        check_int("hard_negatives", self.hard_negatives, 0, 9, "at most 9: one object has 7 other colours and 2 other shapes")
        check_int("seed", self.seed, 0, 2**63 - 1, "e.g. seed=0")
        for name in ("n_train", "n_val", "n_test"):
            check_int(name, getattr(self, name), 0, 10**7, f"e.g. {name}=1000")
        if self.max_objects is not None:
            check_int("max_objects", self.max_objects, 1, 64, "e.g. max_objects=1, or None for no cap")

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def canvas(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return self.grid[0] * self.object_size, self.grid[1] * self.object_size

    def split_sizes(self) -> dict[str, int]:
        """The non-empty ``{split: n}`` of ``n_train``/``n_val``/``n_test``."""
        sizes = {"train": self.n_train, "val": self.n_val, "test": self.n_test}
        return {k: v for k, v in sizes.items() if v > 0}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["grid"] = list(self.grid)
        if out["max_objects"] is None:  # unset keys stay out, so configs made before the key keep their hash
            del out["max_objects"]
        return out

    def hash(self) -> str:
        """12 hex digits identifying the generated data (config, format version, easy-VQA version)."""
        key = {"config": self.to_dict(), "format": FORMAT_VERSION, "easy_vqa": EASY_VQA_VERSION}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def check_int(name: str, value: Any, low: int, high: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise CrossGetError(f"{name} must be an integer in [{low}, {high}], got {value!r}", hint)


def _check_number(name: str, value: Any, low: float, high: float, hint: str, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise CrossGetError(f"{name} must be a number in [{low}, {high}{bracket}, got {value!r}", hint)


#: The default benchmark (see the module doc for why).
DEFAULT = ShapesConfig()

#: Built-in variants by name: ``builtin:<name>``, ``builtin:<name>-train`` / ``-val`` / ``-test``.
PRESETS: dict[str, ShapesConfig] = {
    "shapes": DEFAULT,
    "shapes2x2": ShapesConfig(grid=(2, 2), object_size=32, empty_prob=0.0, crop=False, order="sorted"),
    # One object per composite, in a random cell: zero-shot classification over the
    # 24 colour-shape classes (`crossget eval --task zeroshot --data builtin:shapes1-test`).
    "shapes1": ShapesConfig(max_objects=1, n_train=0, n_test=1000),
}


# --------------------------------------------------------------------------- composites


@lru_cache(maxsize=4)
def _objects(pool: str, size: int, crop: bool, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Every source image of ``pool`` as a ``size``-pixel cell: ``[n, size, size, 3]`` uint8,
    and ``[n, 2]`` float (y, x) of the shape's bounding-box centre in the cell."""
    records, images = source_images(pool)
    cells = np.empty((len(records), size, size, 3), np.uint8)
    centers = np.empty((len(records), 2), np.float64)
    for n, (rec, rgb) in enumerate(zip(records, images)):
        top, left, bottom, right = rec.bbox
        cy, cx = (top + bottom) / 2, (left + right) / 2
        if crop:
            side = max(1, math.ceil(max(bottom - top, right - left) * (1 + 2 * margin)))
            y0, x0 = round(cy - side / 2), round(cx - side / 2)
            patch = np.empty((side, side, 3), np.uint8)
            patch[:] = rec.background  # pad with the image's own background
            sy0, sx0 = max(y0, 0), max(x0, 0)
            sy1, sx1 = min(y0 + side, rgb.shape[0]), min(x0 + side, rgb.shape[1])
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
            src, (cy, cx), scale = patch, (cy - y0, cx - x0), size / side
        else:
            src, scale = rgb, size / rgb.shape[0]
        cells[n] = np.asarray(Image.fromarray(src).resize((size, size), Image.BILINEAR))
        centers[n] = (cy * scale, cx * scale)
    return cells, centers


@dataclass(frozen=True)
class ShapeObject:
    """One object of a composite: labels, cell, centre ``(y, x)`` in canvas pixels, easy-VQA source id."""

    color: str
    shape: str
    row: int
    col: int
    center: tuple[float, float]
    source: int

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "color": self.color,
            "shape": self.shape,
            "row": self.row,
            "col": self.col,
            "center": [round(self.center[0], 2), round(self.center[1], 2)],
            "source": self.source,
        }


@dataclass(frozen=True)
class Composite:
    """One benchmark image. ``objects`` are in row-major cell order (empty cells skipped);
    ``caption`` lists them in the config's ``order``; ``hard_negatives`` each change one
    object's colour or shape."""

    split: str
    index: int
    image: Image.Image = field(repr=False, compare=False)
    objects: tuple[ShapeObject, ...]
    caption: str
    hard_negatives: tuple[str, ...]


def caption_of(phrases: Sequence[str], order: str = "sorted") -> str:
    """The caption of objects given as ``"<color> <shape>"`` phrases in row-major order."""
    return ", ".join(sorted(phrases) if order == "sorted" else phrases)


def _hard_negatives(phrases: list[str], k: int, order: str, rng: np.random.Generator) -> list[str]:
    """``k`` distinct captions, each with one object's colour or shape changed; about half
    shape changes (there are only 2 per object against 7 colour changes)."""
    truth = caption_of(phrases, order)
    by_kind: dict[str, dict[str, None]] = {"color": {}, "shape": {}}
    for j, phrase in enumerate(phrases):
        color, shape = phrase.split(" ")
        options = [("color", f"{c} {shape}") for c in COLORS if c != color]
        options += [("shape", f"{color} {s}") for s in SHAPES if s != shape]
        for kind, new in options:
            changed = caption_of(phrases[:j] + [new] + phrases[j + 1 :], order)
            if changed != truth and all(changed not in d for d in by_kind.values()):
                by_kind[kind][changed] = None
    shapes, colors = list(by_kind["shape"]), list(by_kind["color"])
    shapes = [shapes[i] for i in rng.permutation(len(shapes))]
    colors = [colors[i] for i in rng.permutation(len(colors))]
    n_shape = min(len(shapes), (k + 1) // 2)
    n_color = min(len(colors), k - n_shape)
    n_shape = min(len(shapes), k - n_color)
    chosen = shapes[:n_shape] + colors[:n_color]
    if len(chosen) < k:  # cannot happen with >= 1 object and k <= 9
        raise AssertionError("too few hard negatives")
    return [chosen[i] for i in rng.permutation(len(chosen))]


def generate(split: str, n: int, config: ShapesConfig = DEFAULT, start: int = 0) -> list[Composite]:
    """Composites ``start .. start+n-1`` of ``split`` (``"train"``, ``"val"`` or ``"test"``).

    Composite ``i`` depends only on ``(config, split, i)``: a numpy ``Generator`` seeded
    with ``SeedSequence([config.seed, split code, i])``, never global random state.
    """
    if split not in SPLITS:
        raise CrossGetError(f"unknown split {split!r}", f"choose one of: {', '.join(SPLITS)}")
    check_int("n", n, 0, 10**7, "e.g. n=1000")
    check_int("start", start, 0, 10**9, "e.g. start=0")
    pool = _POOL[split]
    records, _ = source_images(pool)
    cells, centers = _objects(pool, config.object_size, config.crop, float(config.margin))
    rows, cols = config.grid
    size = config.object_size
    out = []
    for index in range(start, start + n):
        rng = np.random.default_rng([config.seed, _SPLIT_CODE[split], index])
        occupied = rng.random(config.cells) >= config.empty_prob
        if not occupied.any():
            occupied[rng.integers(config.cells)] = True
        if config.max_objects is not None and occupied.sum() > config.max_objects:
            keep = rng.choice(np.flatnonzero(occupied), size=config.max_objects, replace=False)
            occupied[:] = False
            occupied[keep] = True
        sources = rng.choice(len(records), size=int(occupied.sum()), replace=False)
        backgrounds = rng.integers(_BACKGROUND[0], _BACKGROUND[1] + 1, size=(config.cells, 3))
        canvas = np.empty((rows * size, cols * size, 3), np.uint8)
        objects, it = [], iter(sources)
        for cell in range(config.cells):
            r, c = divmod(cell, cols)
            view = canvas[r * size : (r + 1) * size, c * size : (c + 1) * size]
            if not occupied[cell]:
                view[:] = backgrounds[cell]
                continue
            s = int(next(it))
            view[:] = cells[s]
            cy, cx = centers[s]
            rec = records[s]
            center = (float(r * size + cy), float(c * size + cx))
            objects.append(ShapeObject(rec.color, rec.shape, r, c, center, rec.image_id))
        if config.noise_sigma > 0:
            noisy = canvas + rng.normal(0.0, config.noise_sigma * 255.0, canvas.shape)
            canvas = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        phrases = [o.phrase for o in objects]
        negatives = _hard_negatives(phrases, config.hard_negatives, config.order, rng) if config.hard_negatives else []
        out.append(
            Composite(
                split, index, Image.fromarray(canvas, "RGB"), tuple(objects), caption_of(phrases, config.order), tuple(negatives)
            )
        )
    return out


# --------------------------------------------------------------------------- scoring


def hard_negative_accuracy(image_features: Any, caption_features: Any, negative_features: Any) -> float:
    """Percent of images whose true caption scores strictly higher than every hard negative.

    Args:
        image_features: ``[N, D]``, one row per image.
        caption_features: ``[N, D]``, the true caption of each image.
        negative_features: ``[N, K, D]``, its ``K`` hard-negative captions.

    Features are L2-normalised (already normalised ones are unchanged); scores are
    cosine similarities. Torch tensors or numpy arrays. ``crossget eval`` computes the
    same from the data's ``hard_negatives`` (:func:`crossget_cli.metrics.retrieval.hard_negative_accuracy`).
    """
    import torch

    from crossget_cli.metrics.retrieval import hard_negative_accuracy as flat_accuracy

    img = torch.as_tensor(image_features)
    pos = torch.as_tensor(caption_features)
    neg = torch.as_tensor(negative_features)
    if img.ndim != 2 or pos.shape != img.shape or neg.ndim != 3 or neg.shape[0] != img.shape[0] or neg.shape[2] != img.shape[1]:
        raise CrossGetError(
            f"feature shapes {tuple(img.shape)}, {tuple(pos.shape)}, {tuple(neg.shape)} do not fit",
            "pass images [N, D], true captions [N, D] and hard negatives [N, K, D]",
        )
    if img.shape[0] == 0:
        raise CrossGetError("no images to score", "pass at least one image")
    if neg.shape[1] == 0:
        return 100.0
    owner = torch.arange(neg.shape[0]).repeat_interleave(neg.shape[1])
    return flat_accuracy(img, pos, neg.reshape(-1, neg.shape[2]), owner)


__all__ = [
    "DEFAULT",
    "PRESETS",
    "Composite",
    "ShapeObject",
    "ShapesConfig",
    "caption_of",
    "classnames",
    "generate",
    "hard_negative_accuracy",
]
