"""The easy-VQA images the shapes benchmark is made of: its pinned wheel (read as an
archive, never installed; fetched once into :func:`cache_root`), and every image's
colour, shape and bounding box, read from its pixels and checked against easy-VQA's questions."""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from crossget_cli.errors import CrossGetError
from crossget_cli.files import sha256

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


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$CROSSGET_CACHE``, else ``$XDG_CACHE_HOME/crossget`` (``~/.cache/crossget``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("CROSSGET_CACHE"):
        return Path(os.environ["CROSSGET_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "crossget"


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
            raise CrossGetError(f"easy-vqa {pool} image {image_id} cannot be labelled ({err})", INSTALL_HINT) from None
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


__all__ = [
    "COLORS",
    "SHAPES",
    "SourceImage",
    "cache_root",
    "easy_vqa_wheel",
    "source_images",
]
