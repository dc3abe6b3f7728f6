"""Captioning references (:func:`load_captions`): the formats of :mod:`.retrieval`,
read as images with their reference captions."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from crossget_cli.data.images import ImageDataset, ImageRef
from crossget_cli.data.records import shortens
from crossget_cli.data.retrieval import RetrievalData, load_retrieval
from crossget_cli.data.sources import Source


@dataclass
class CaptionData:
    """Captioning records: images and their reference captions (same formats as retrieval)."""

    image_paths: Sequence[ImageRef]
    references: list[list[str]]
    image_ids: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.image_paths)

    @classmethod
    def from_retrieval(cls, data: RetrievalData) -> CaptionData:
        refs = [[data.captions[c] for c in caps] for caps in data.image_to_captions]
        return cls(data.image_paths, refs, data.image_ids)

    def image_dataset(self, transform: Callable[[Image.Image], Any] | None = None) -> ImageDataset:
        """A torch ``Dataset`` of ``(image_index, transform(rgb_image))``."""
        return ImageDataset(self.image_paths, transform)

    def limit(self, n: int | None) -> CaptionData:
        """The first ``n`` images."""
        if not shortens(n, len(self)):
            return self
        return CaptionData(self.image_paths[:n], self.references[:n], None if self.image_ids is None else self.image_ids[:n])


def load_captions(
    source: Source,
    *,
    image_root: str | os.PathLike | None = None,
    split: str | None = "test",
    image_column: str = "image",
    caption_column: str = "caption",
    limit: int | None = None,
    check_images: bool = True,
) -> CaptionData:
    """Captioning references: the same formats and arguments as :func:`load_retrieval`."""
    data = load_retrieval(
        source,
        image_root=image_root,
        split=split,
        image_column=image_column,
        caption_column=caption_column,
        limit=limit,
        check_images=check_images,
    )
    return CaptionData.from_retrieval(data)


__all__ = [
    "CaptionData",
    "load_captions",
]
