"""A built-in, seeded image-text benchmark made of easy-VQA images ("shapes").

`easy-VQA <https://github.com/vzhou842/easy-VQA>`_ (MIT; its PyPI wheel ``easy-vqa`` 1.0 is read as an archive, never installed: see :func:`easy_vqa_wheel`)
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

:func:`write_dataset` writes PNGs and a Karpathy-style ``dataset_shapes.json`` that
:func:`crossget_cli.data.formats.load_retrieval` reads unchanged; :func:`resolve_builtin`
generates a preset once into a cache folder for ``builtin:shapes-test`` style data strings.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crossget_cli.errors import CrossGetError
from crossget_cli.files import replace_folder, sha256

#: Bumped whenever the same config would produce different pixels or JSON.
FORMAT_VERSION = 1

#: easy-VQA's palette (``gen_data/color.py``), in the order used for class names.
COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "blue": (0, 0, 255),
    "brown": (165, 42, 42),
    "gray": (128, 128, 128),
    "green": (0, 255, 0),
    "red": (255, 0, 0),
    "teal": (0, 128, 128),
    "yellow": (255, 255, 0),
}
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle")
ORDERS = ("sorted", "row-major")
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
_POOL = {"train": "train", "val": "test", "test": "test"}  # which easy-VQA image set a split draws from
_BACKGROUND = (230, 255)  # easy-VQA backgrounds: each channel uniform in [230, 255]
JSON_NAME = "dataset_shapes.json"
CONFIG_NAME = "shapes_config.json"
#: The easy-VQA release the benchmark is made of. Its wheel is read as an archive
#: and never installed: installing it puts a top-level ``test`` package into
#: site-packages, which shadows the standard library's ``test`` for every user of
#: the environment.
EASY_VQA_VERSION = "1.0"
EASY_VQA_WHEEL = f"easy_vqa-{EASY_VQA_VERSION}-py3-none-any.whl"
EASY_VQA_SHA256 = "fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f"
INSTALL_HINT = (
    f"let crossget fetch it from PyPI once (needs pip and access to PyPI), or download it elsewhere with "
    f"`pip download easy-vqa=={EASY_VQA_VERSION} --no-deps` and set CROSSGET_EASY_VQA_WHEEL to the .whl file"
)


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
        _check_int("object_size", self.object_size, 8, 256, "e.g. object_size=32")
        _check_number("noise_sigma", self.noise_sigma, 0.0, 1.0, "e.g. noise_sigma=12/255")
        _check_number("empty_prob", self.empty_prob, 0.0, 1.0, "e.g. empty_prob=0.25", high_open=True)
        if not isinstance(self.crop, bool):
            raise CrossGetError(f"crop must be True or False, got {self.crop!r}", "e.g. crop=True")
        _check_number("margin", self.margin, 0.0, 1.0, "e.g. margin=0.15")
        if self.order not in ORDERS:
            raise CrossGetError(f"unknown caption order {self.order!r}", f"choose one of: {', '.join(ORDERS)}")
        _check_int("hard_negatives", self.hard_negatives, 0, 9, "at most 9: one object has 7 other colours and 2 other shapes")
        _check_int("seed", self.seed, 0, 2**63 - 1, "e.g. seed=0")
        for name in ("n_train", "n_val", "n_test"):
            _check_int(name, getattr(self, name), 0, 10**7, f"e.g. {name}=1000")
        if self.max_objects is not None:
            _check_int("max_objects", self.max_objects, 1, 64, "e.g. max_objects=1, or None for no cap")

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
        key = {"config": self.to_dict(), "format": FORMAT_VERSION, "easy_vqa": _easy_vqa_version()}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _check_int(name: str, value: Any, low: int, high: int, hint: str) -> None:
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


# --------------------------------------------------------------------------- easy-VQA source images


@dataclass(frozen=True)
class SourceImage:
    """One easy-VQA image: its id in its set, labels, the shape's bounding box
    ``(top, left, bottom, right)`` (exclusive ends) in the 64x64 image, and the
    background colour."""

    image_id: int
    color: str
    shape: str
    bbox: tuple[int, int, int, int]
    background: tuple[int, int, int]


def easy_vqa_wheel() -> Path:
    """The easy-VQA wheel: ``$CROSSGET_EASY_VQA_WHEEL``, else the copy in the cache
    (``cache_root()/sources``), fetched from PyPI with ``pip download`` on first use.
    Its SHA-256 is checked, so the benchmark is always made of the same images."""
    given = os.environ.get("CROSSGET_EASY_VQA_WHEEL")
    path = Path(given).expanduser() if given else cache_root() / "sources" / EASY_VQA_WHEEL
    if given and not path.is_file():
        raise CrossGetError(f"CROSSGET_EASY_VQA_WHEEL={given}: no such file", INSTALL_HINT)
    if not path.is_file():
        _download_wheel(path)
    if sha256(path) != EASY_VQA_SHA256:
        raise CrossGetError(f"{path} is not the easy-vqa {EASY_VQA_VERSION} wheel (its SHA-256 differs)", INSTALL_HINT)
    return path


def _download_wheel(path: Path) -> None:
    import subprocess
    import sys

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".easy-vqa-", dir=path.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", f"easy-vqa=={EASY_VQA_VERSION}", "--no-deps"]
        command += ["--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        fetched = Path(tmp) / EASY_VQA_WHEEL
        if done.returncode != 0 or not fetched.is_file():
            lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            reason = lines[-1].strip()[:160] if lines else f"pip exited with {done.returncode}"
            raise CrossGetError(f"cannot fetch the easy-vqa wheel (the shapes benchmark's images): {reason}", INSTALL_HINT)
        os.replace(fetched, path)


def _easy_vqa_pool(pool: str) -> tuple[dict[int, bytes], tuple[list, list, list]]:
    """One easy-VQA set read from the wheel: ``{image_id: PNG bytes}`` and its
    questions as ``(texts, answers, image_ids)``."""
    import zipfile

    prefix = f"easy_vqa/data/{pool}/"
    with zipfile.ZipFile(easy_vqa_wheel()) as wheel:
        images = {
            int(name[len(prefix + "images/") : -len(".png")]): wheel.read(name)
            for name in wheel.namelist()
            if name.startswith(prefix + "images/") and name.endswith(".png")
        }
        questions = json.loads(wheel.read(prefix + "questions.json"))
    return images, ([q[0] for q in questions], [q[1] for q in questions], [q[2] for q in questions])


def _easy_vqa_version() -> str:
    return EASY_VQA_VERSION


def _packed(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[..., 3]`` as one int32 per pixel."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_PALETTE = _packed(np.array(list(COLORS.values()), dtype=np.uint8))


def _label_pixels(rgb: np.ndarray) -> tuple[str, str, tuple[int, int, int, int], tuple[int, int, int]]:
    """(colour, shape, bbox, background) of one easy-VQA image, from its pixels.

    The background is the most frequent colour (a shape covers at most a quarter of
    the image); the shape's colour is the palette colour most of its pixels hold
    exactly (only the anti-aliased rim is blended); the shape is told by how much of
    its bounding box it fills: a rectangle ~1, a circle pi/4, this triangle 1/2
    (measured on all 5000 images: >= 0.98, 0.76-0.92, 0.51-0.69)."""
    packed = _packed(rgb)
    values, counts = np.unique(packed, return_counts=True)
    bg = int(values[counts.argmax()])
    background = (bg >> 16, (bg >> 8) & 255, bg & 255)
    fg = np.abs(rgb.astype(np.int16) - np.array(background, np.int16)).max(-1) > 24
    if not fg.any():
        raise ValueError("no shape")
    votes = (packed[fg][:, None] == _PALETTE[None]).sum(0)
    if votes.max() == 0:
        raise ValueError("no palette colour")
    color = list(COLORS)[int(votes.argmax())]
    ys, xs = np.nonzero(fg)
    bbox = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    fill = fg.sum() / ((bbox[2] - bbox[0]) * (bbox[3] - bbox[1]))
    shape = "rectangle" if fill > 0.95 else "circle" if fill > 0.72 else "triangle"
    return color, shape, bbox, background


def _question_labels(questions: tuple[list, list, list]) -> dict[int, tuple[set[str], set[str]]]:
    """Per image id: (colours, shapes) that easy-VQA's questions and answers assert."""
    color_words, shape_words = set(COLORS), set(SHAPES)
    out: dict[int, tuple[set[str], set[str]]] = {}
    not_shapes: dict[int, set[str]] = {}
    for text, answer, image_id in zip(*questions):
        colors, shapes = out.setdefault(image_id, (set(), set()))
        words = set(re.findall(r"[a-z]+", text))
        if answer in color_words:  # "what color is the triangle?" -> blue
            colors.add(answer)
            shapes.update(words & shape_words)
        elif answer in shape_words:  # "what is the blue shape?" -> rectangle
            shapes.add(answer)
            colors.update(words & color_words)
        elif answer in ("yes", "no") and words & shape_words:  # "is there not a circle?" -> no
            negated = " not " in f" {text} " or text.startswith("is no ")
            if (answer == "yes") != negated:
                shapes.update(words & shape_words)
            else:
                not_shapes.setdefault(image_id, set()).update(words & shape_words)
    for image_id, excluded in not_shapes.items():
        shapes = out[image_id][1]
        if not shapes and len(excluded) == len(SHAPES) - 1:
            shapes.update(set(SHAPES) - excluded)
    return out


@lru_cache(maxsize=2)
def source_images(pool: str) -> tuple[tuple[SourceImage, ...], np.ndarray]:
    """easy-VQA's ``"train"`` or ``"test"`` images: labels and a ``[n, 64, 64, 3]`` uint8 array (id order)."""
    if pool not in ("train", "test"):
        raise ValueError(pool)
    pngs, questions = _easy_vqa_pool(pool)
    asserted = _question_labels(questions)
    records, arrays = [], []
    for image_id in sorted(pngs):
        with Image.open(io.BytesIO(pngs[image_id])) as img:
            rgb = np.asarray(img.convert("RGB"))
        try:
            color, shape, bbox, background = _label_pixels(rgb)
        except ValueError as err:
            raise CrossGetError(
                f"easy-vqa {pool} image {image_id} cannot be labelled ({err})", INSTALL_HINT
            ) from None
        colors, shapes = asserted.get(image_id, (set(), set()))
        if (colors and colors != {color}) or (shapes and shapes != {shape}):
            raise CrossGetError(
                f"easy-vqa {pool} image {image_id}: its pixels show a {color} {shape}, its questions say "
                f"{'/'.join(sorted(colors)) or '?'} {'/'.join(sorted(shapes)) or '?'}",
                INSTALL_HINT,
            )
        records.append(SourceImage(image_id, color, shape, bbox, background))
        arrays.append(rgb)
    return tuple(records), np.stack(arrays)


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


# --------------------------------------------------------------------------- composites


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
    _check_int("n", n, 0, 10**7, "e.g. n=1000")
    _check_int("start", start, 0, 10**9, "e.g. start=0")
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


# --------------------------------------------------------------------------- writing


def _image_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.png"


def write_dataset(
    folder: str | os.PathLike,
    config: ShapesConfig = DEFAULT,
    splits: Mapping[str, int] | None = None,
    *,
    overwrite: bool = False,
    batch: int = 500,
) -> Path:
    """Write composites as PNGs plus a Karpathy-style ``dataset_shapes.json``; returns its path.

    ``splits`` is ``{split: n}`` (default: ``config.split_sizes()``). The folder holds
    ``images/<split>_<index>.png``, ``dataset_shapes.json`` (all splits; entries with
    ``filename``, ``filepath``, ``split``, ``imgid``, ``sentences: [{"raw": caption}]``,
    ``objects`` and ``hard_negatives``), ``dataset_shapes_<split>.json`` (one split
    each) and ``shapes_config.json`` (config, hash, versions). It is written to a
    temporary sibling and renamed into place; an existing folder is an error unless
    ``overwrite``.
    """
    splits = dict(config.split_sizes() if splits is None else splits)
    if not splits:
        raise CrossGetError("no split to write", "pass splits={'test': 1000} or set n_train/n_test")
    for split, n in splits.items():
        if split not in SPLITS:
            raise CrossGetError(f"unknown split {split!r}", f"choose from: {', '.join(SPLITS)}")
        _check_int(f"the size of split {split}", n, 1, 10**7, "e.g. 1000")
    folder = Path(folder).expanduser()
    if folder.exists() and not overwrite:
        raise CrossGetError(f"{folder} already exists", "pass overwrite=True or choose another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        (tmp / "images").mkdir()
        entries: list[dict] = []
        for split, n in splits.items():
            for start in range(0, n, batch):
                for comp in generate(split, min(batch, n - start), config, start):
                    name = _image_name(split, comp.index)
                    comp.image.save(tmp / "images" / name, format="PNG", compress_level=1)
                    imgid = len(entries)
                    entries.append(
                        {
                            "filename": name,
                            "filepath": "images",
                            "split": split,
                            "imgid": imgid,
                            "sentids": [imgid],
                            "sentences": [{"raw": comp.caption, "imgid": imgid, "sentid": imgid}],
                            "objects": [o.to_dict() for o in comp.objects],
                            "hard_negatives": list(comp.hard_negatives),
                        }
                    )
        meta = {
            "dataset": "shapes",
            "format": FORMAT_VERSION,
            "config": config.to_dict(),
            "config_hash": config.hash(),
            "easy_vqa": _easy_vqa_version(),
            "splits": splits,
            "caption_order": config.order,
        }
        _write_json(tmp / JSON_NAME, {**meta, "images": entries})
        for split in splits:
            subset = [e for e in entries if e["split"] == split]
            _write_json(tmp / f"dataset_shapes_{split}.json", {**meta, "splits": {split: splits[split]}, "images": subset})
        _write_json(tmp / CONFIG_NAME, meta)
        _replace_dir(tmp, folder, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / JSON_NAME


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))


def _replace_dir(tmp: Path, folder: Path, overwrite: bool) -> None:
    if folder.exists() and not overwrite:
        raise CrossGetError(f"{folder} already exists", "pass overwrite=True or choose another folder")
    replace_folder(tmp, folder)


def load_hard_negatives(path: str | os.PathLike, split: str | None = "test") -> list[list[str]]:
    """The ``hard_negatives`` of a ``dataset_shapes*.json``, one list per image, in the
    image order :func:`~crossget_cli.data.formats.load_retrieval` gives for the same ``split``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    wanted = None if split is None else set(split.replace(",", "+").split("+"))
    return [list(e.get("hard_negatives", [])) for e in data["images"] if wanted is None or e.get("split") in wanted]


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


# --------------------------------------------------------------------------- built-in data strings


def available_builtins() -> list[str]:
    """Every name :func:`resolve_builtin` accepts (without the ``builtin:`` prefix and ``@seed``)."""
    return [n for p in PRESETS for n in (p, *(f"{p}-{s}" for s in SPLITS))]


def _parse_builtin(name: str) -> tuple[str, str | None, int | None]:
    """``shapes-test@3`` -> ``("shapes", "test", 3)``."""
    text, _, seed_text = name.removeprefix("builtin:").partition("@")
    seed = None
    if seed_text:
        if not seed_text.isdigit():
            raise CrossGetError(f"built-in dataset {name!r}: the seed after '@' must be an integer", "e.g. builtin:shapes-test@1")
        seed = int(seed_text)
    if text in PRESETS:
        return text, None, seed
    preset, _, split = text.rpartition("-")
    if preset in PRESETS and split in SPLITS:
        return preset, split, seed
    raise CrossGetError(
        f"unknown built-in dataset {name!r}", f"choose one of: {', '.join('builtin:' + n for n in available_builtins())}"
    )


def builtin_split(name: str) -> str | None:
    """The split a built-in name asks for (``"test"`` for ``builtin:shapes-test``), None for all."""
    return _parse_builtin(name)[1]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$CROSSGET_CACHE``, else ``$XDG_CACHE_HOME/crossget`` (``~/.cache/crossget``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("CROSSGET_CACHE"):
        return Path(os.environ["CROSSGET_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "crossget"


def resolve_builtin(name: str, cache_dir: str | os.PathLike | None = None, config: ShapesConfig | None = None) -> Path:
    """The JSON file behind a built-in data string, generated on first use.

    ``name``: ``builtin:shapes`` (every split), ``builtin:shapes-train`` / ``-val`` / ``-test``
    (that split only), likewise ``shapes2x2`` (the ``builtin:`` prefix is optional); a
    ``@seed`` suffix (``builtin:shapes-test@1``) draws the preset with another seed
    (fresh composites from the same source images: a second test set).
    The preset (or ``config``, which replaces it) is written once, all its splits,
    to ``<cache>/<preset>-<config hash>/`` (see :func:`cache_root`); later calls
    re-use it after checking the stored hash, and regenerate a folder whose stored
    config does not match. Returns ``dataset_shapes.json`` or ``dataset_shapes_<split>.json``
    (which holds only that split: read it with ``split=None`` or that split).
    """
    preset, split, seed = _parse_builtin(name)
    config = PRESETS[preset] if config is None else config
    if seed is not None:
        config = replace(config, seed=seed)
    sizes = config.split_sizes()
    if split is not None and split not in sizes:
        raise CrossGetError(
            f"built-in dataset {name!r}: its config makes no {split} composites (n_{split}=0)",
            f"choose one of: {', '.join(f'{preset}-{s}' for s in sizes)}",
        )
    digest = config.hash()
    folder = cache_root(cache_dir) / f"{preset}-{digest}"
    target = folder / (JSON_NAME if split is None else f"dataset_shapes_{split}.json")
    if not _valid_cache(folder, digest, sizes):
        easy_vqa_wheel()  # a clear error before any work when the images cannot be had
        try:
            write_dataset(folder, config, sizes, overwrite=folder.exists())
        except OSError:
            if not _valid_cache(folder, digest, sizes):  # another process may have won the rename race
                raise
    return target


def _valid_cache(folder: Path, digest: str, sizes: dict[str, int]) -> bool:
    try:
        with open(folder / CONFIG_NAME, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("config_hash") == digest
        and meta.get("splits") == sizes
        and (folder / JSON_NAME).is_file()
        and all((folder / f"dataset_shapes_{s}.json").is_file() for s in sizes)
    )


def object_counts(composites: Sequence[Composite]) -> Counter:
    """How many composites hold each number of objects."""
    return Counter(len(c.objects) for c in composites)


__all__ = [
    "COLORS",
    "DEFAULT",
    "PRESETS",
    "SHAPES",
    "Composite",
    "ShapeObject",
    "ShapesConfig",
    "SourceImage",
    "available_builtins",
    "builtin_split",
    "cache_root",
    "caption_of",
    "classnames",
    "generate",
    "hard_negative_accuracy",
    "load_hard_negatives",
    "resolve_builtin",
    "source_images",
    "write_dataset",
]
