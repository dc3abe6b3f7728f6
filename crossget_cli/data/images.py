"""Image references and lazily loaded image datasets.

Nothing here decodes an image until it is asked for: records hold *image
references* (:data:`ImageRef`), and :func:`open_image` (called by the datasets
returned from ``image_dataset(transform)``) opens one with PIL, converted to RGB,
and hands it to the caller's ``transform`` (open_clip's ``preprocess``, a wrapper
around a transformers image processor, ...). Preprocessing is the caller's job.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch.utils.data
from PIL import Image

from crossget_cli.errors import CrossGetError

#: What a record holds for an image: a file path, a PIL image, or a
#: ``{"bytes": ..., "path": ...}`` dict (``datasets.Image(decode=False)`` values).
ImageRef = str | Image.Image | dict

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def open_image(ref: ImageRef) -> Image.Image:
    """Open one image reference as an RGB PIL image (the file is read now and closed)."""
    if isinstance(ref, Image.Image):
        return _to_rgb(ref)
    if isinstance(ref, dict):
        data, path = ref.get("bytes"), ref.get("path")
        if data is not None:
            return _read_image(io.BytesIO(data), path or "<embedded image>")
        if not path:
            raise CrossGetError("an image record holds neither bytes nor a path", "rebuild the dataset's image column")
        ref = path
    if isinstance(ref, (str, os.PathLike)):
        return _read_image(os.fspath(ref), os.fspath(ref))
    raise TypeError(f"not an image reference: {type(ref).__name__}")


def _read_image(fp: Any, name: str) -> Image.Image:
    try:
        with Image.open(fp) as img:
            return _to_rgb(img)
    except FileNotFoundError:
        raise CrossGetError(f"image {name} not found", "check --image-root and the image paths in the data file") from None
    except (Image.UnidentifiedImageError, OSError) as err:
        raise CrossGetError(
            f"cannot read image {name}: {str(err).splitlines()[0]}", "the file is corrupt or not an image"
        ) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")  # always a loaded copy, detached from the file


class ImageDataset(torch.utils.data.Dataset):
    """``dataset[i] == (i, transform(rgb_pil_image_i))`` (the PIL image when ``transform`` is None)."""

    def __init__(self, images: Sequence[ImageRef], transform: Callable[[Image.Image], Any] | None = None):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        img = open_image(self.images[index])
        return index, (self.transform(img) if self.transform is not None else img)


class HFImages(Sequence):
    """Lazy view of a ``datasets`` image column: item ``i`` is row ``rows[i]``'s image as
    an :data:`ImageRef` (a path string, or ``{"bytes", "path"}``); nothing is decoded
    until :func:`open_image`. Slicing returns another view; it pickles for DataLoader workers."""

    def __init__(self, dataset: Any, column: str, rows: Sequence[int], image_root: str | None = None):
        import datasets

        view = dataset.select_columns([column])
        if isinstance(view.features[column], datasets.Image):
            view = view.cast_column(column, datasets.Image(decode=False))
        self.dataset, self.column, self.rows, self.image_root = view, column, list(rows), image_root

    @classmethod
    def _view(cls, other: HFImages, rows: Sequence[int]) -> HFImages:
        new = cls.__new__(cls)
        new.dataset, new.column, new.rows, new.image_root = other.dataset, other.column, list(rows), other.image_root
        return new

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return HFImages._view(self, self.rows[index])
        value = self.dataset[int(self.rows[index])][self.column]
        if isinstance(value, str):
            return join_root(self.image_root, value)
        if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
            return {"bytes": None, "path": join_root(self.image_root, value["path"])}
        return value

    def __repr__(self) -> str:
        return f"HFImages(column={self.column!r}, n={len(self)})"


def join_root(root: str | os.PathLike | None, path: str) -> str:
    path = os.path.expanduser(path)
    return os.path.normpath(os.path.join(root, path)) if root is not None and not os.path.isabs(path) else path


def check_images_exist(paths: Iterable[str], source: str, image_root: Any) -> None:
    """One error for all missing image files (checked once per distinct path)."""
    unique = list(dict.fromkeys(p for p in paths if isinstance(p, str)))
    missing = [p for p in unique if not os.path.isfile(p)]
    if missing:
        hint = (
            f"check --image-root ({image_root}); image paths are joined under it"
            if image_root is not None
            else "pass --image-root, the folder the image paths in the data are relative to"
        )
        raise CrossGetError(f"{len(missing)} of {len(unique)} images of {source} not found, e.g. {missing[0]}", hint)


__all__ = [
    "HFImages",
    "ImageDataset",
    "ImageRef",
    "open_image",
]
