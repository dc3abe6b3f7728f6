"""Image-text retrieval data (:func:`load_retrieval`), ``source`` being:

* a **Karpathy split JSON** (``dataset_flickr30k.json``, ``dataset_coco.json``)::

      {"images": [{"filename": "1000092795.jpg", "filepath": "val2014"?, "split": "test",
                   "sentences": [{"raw": "Two young guys ..."}, ...], "imgid": 0, "cocoid"?: 391895}]}

  filtered by ``split`` (``"test"``, ``"val"``, ``"train"``, ``"restval"``; ``"train+restval"``
  joins several; ``None`` keeps all). The image is ``image_root/filepath/filename``
  (``filepath`` only when present, as in COCO);
* a **BLIP-style list JSON** (BLIP's ``flickr30k_test.json``, ``coco_karpathy_test.json``)::

      [{"image": "flickr30k-images/1007129816.jpg", "caption": ["...", "..."] or "..."}, ...]

* a **CSV/TSV or JSONL** file with an image-path column and a caption column (a
  JSONL caption may also be a list of strings);
* a **Hugging Face dataset**: a folder written by ``Dataset.save_to_disk`` /
  ``DatasetDict.save_to_disk``, any other local folder or a hub name understood by
  ``datasets.load_dataset`` (``hf:`` prefix forces the hub reading; offline, a hub
  dataset must already be cached), or a ``Dataset``/``DatasetDict`` object. The image
  column holds images (``datasets.Image`` feature) or paths; the caption column a
  string or a list of strings. ``split`` picks the ``DatasetDict`` split; a string
  column named ``split`` (Karpathy-style exports such as ``nlphuji/flickr30k``) is
  filtered too when it holds the requested value; a single ``Dataset`` without such
  a column is used whole.

In the JSON/BLIP/CSV/JSONL formats, rows naming the same image path are one image
with several captions (BLIP's train files, one caption per row, work as is); HF
rows are grouped the same way by path (for ``Image`` features: by stored path and
byte size). Relative image paths are joined under ``image_root``, or else under the
annotation file's folder (the current directory for HF datasets). Every path-based
image is checked to exist when the data is loaded, so a wrong ``image_root`` is one
clear error, not a failure halfway through an evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from crossget_cli.data.images import HFImages, ImageDataset, ImageRef, check_images_exist, join_root
from crossget_cli.data.records import read_json, read_records, records_root, required_field, shortens
from crossget_cli.data.sources import (
    Source,
    check_hf_images_exist,
    column_values,
    hf_image_keys,
    load_hf_dataset,
    require_columns,
    resolve_source,
    select_split,
)
from crossget_cli.errors import CrossGetError

HF_ID_COLUMNS = ("image_id", "img_id", "imgid", "cocoid")


@dataclass
class RetrievalData:
    """Image-text retrieval records.

    Attributes:
        image_paths: one :data:`ImageRef` per image (paths; a lazy :class:`HFImages`
            view for HF datasets).
        captions: every caption, flat.
        caption_to_image: for each caption, the index of its image.
        image_to_captions: for each image, the indices of its captions.
        image_ids: original ids (COCO id, Karpathy ``imgid``, the path as written in
            the data file, an HF id column), or None when the data has none.
        hard_negatives: for each image, captions that are *almost* right (Karpathy
            JSON entries may carry a ``"hard_negatives"`` list, as the built-in
            shapes benchmark does), or None when the data has none.
    """

    image_paths: Sequence[ImageRef]
    captions: list[str]
    caption_to_image: list[int]
    image_to_captions: list[list[int]]
    image_ids: list[Any] | None = None
    hard_negatives: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.image_paths)

    def image_dataset(self, transform: Callable[[Image.Image], Any] | None = None) -> ImageDataset:
        """A torch ``Dataset`` of ``(image_index, transform(rgb_image))``."""
        return ImageDataset(self.image_paths, transform)

    def limit(self, n: int | None) -> RetrievalData:
        """The first ``n`` images and their captions (caption order kept, indices renumbered)."""
        if not shortens(n, len(self)):
            return self
        keep = [c for c, i in enumerate(self.caption_to_image) if i < n]
        renumber = {old: new for new, old in enumerate(keep)}
        return RetrievalData(
            image_paths=self.image_paths[:n],
            captions=[self.captions[c] for c in keep],
            caption_to_image=[self.caption_to_image[c] for c in keep],
            image_to_captions=[[renumber[c] for c in caps] for caps in self.image_to_captions[:n]],
            image_ids=None if self.image_ids is None else self.image_ids[:n],
            hard_negatives=None if self.hard_negatives is None else self.hard_negatives[:n],
        )


def _captions(value: Any, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise CrossGetError(
            f"{where}: a caption must be a string or a list of strings, got {type(value).__name__}", "fix the data"
        )
    return [v.strip() for v in values if v.strip()]


class _Builder:
    """Groups (key, image, id, captions) entries into images with caption lists."""

    def __init__(self) -> None:
        self.index: dict[Any, int] = {}
        self.images: list[Any] = []
        self.ids: list[Any] = []
        self.captions: list[str] = []
        self.caption_to_image: list[int] = []
        self.image_to_captions: list[list[int]] = []

    def add(self, key: Any, image: Any, image_id: Any, captions: list[str]) -> None:
        j = self.index.get(key) if key is not None else None
        if j is None:
            j = len(self.images)
            if key is not None:
                self.index[key] = j
            self.images.append(image)
            self.ids.append(image_id)
            self.image_to_captions.append([])
        for caption in captions:
            self.image_to_captions[j].append(len(self.captions))
            self.caption_to_image.append(j)
            self.captions.append(caption)

    def build(self, source: str, with_ids: bool = True) -> RetrievalData:
        if not self.images:
            raise CrossGetError(f"{source} holds no images", "pass a file with at least one image and caption")
        for j, caps in enumerate(self.image_to_captions):
            if not caps:
                raise CrossGetError(
                    f"image {self.ids[j] if self.ids[j] is not None else j} of {source} has no captions", "fix the data"
                )
        return RetrievalData(
            self.images, self.captions, self.caption_to_image, self.image_to_captions, self.ids if with_ids else None
        )


def load_retrieval(
    source: Source,
    *,
    image_root: str | os.PathLike | None = None,
    split: str | None = "test",
    image_column: str = "image",
    caption_column: str = "caption",
    limit: int | None = None,
    check_images: bool = True,
) -> RetrievalData:
    """Read image-text retrieval data from any format of the module doc.

    ``split`` filters Karpathy JSON and picks an HF split; BLIP/CSV/JSONL files are
    already one split each and ignore it. ``image_column``/``caption_column`` name the
    columns of BLIP JSON, CSV/JSONL and HF data. ``limit`` keeps the first images.
    ``check_images=False`` skips the check that every image file exists (scoring
    a predictions file needs the references only).
    ``builtin:shapes-test`` style names are the seeded benchmark of :mod:`.shapes`,
    generated on first use.
    """
    if isinstance(source, str) and source.startswith("builtin:"):
        from crossget_cli.data.builtin import builtin_split, resolve_builtin

        split = builtin_split(source) or split
        source = resolve_builtin(source)
    kind, value = resolve_source(source)
    if kind == "file":
        path: Path = value
        suffix = path.suffix.lower()
        if suffix == ".json":
            data = read_json(path)
            if isinstance(data, dict) and "images" in data:
                result = _karpathy(path, data, image_root, split)
            elif isinstance(data, list):
                result = _records_retrieval(path, data, image_root, image_column, caption_column)
            elif isinstance(data, dict) and "questions" in data:
                raise CrossGetError(f"{path} is a VQA question file, not retrieval data", "pass it to the VQA task")
            else:
                raise CrossGetError(
                    f"{path} is neither a Karpathy split JSON ({{'images': [...]}}) nor a list of image/caption records",
                    "pass dataset_flickr30k.json / dataset_coco.json, a BLIP-style list JSON, CSV or JSONL",
                )
        elif suffix in (".csv", ".tsv", ".jsonl", ".ndjson"):
            result = _records_retrieval(path, read_records(path), image_root, image_column, caption_column)
        else:
            raise CrossGetError(f"unsupported data file {path}", "pass a .json, .jsonl, .csv or .tsv file, or a dataset folder")
        result = result.limit(limit)
        if check_images:
            check_images_exist(result.image_paths, os.fspath(path), image_root)
        return result
    obj, name = load_hf_dataset(kind, value, split)
    result, need = _hf_retrieval(obj, name, split, image_root, image_column, caption_column)
    result = result.limit(limit)
    if check_images:
        check_hf_images_exist(result.image_paths, need, name, image_root)
    return result


def _karpathy(path: Path, data: dict, image_root: Any, split: str | None) -> RetrievalData:
    entries = data["images"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CrossGetError(f"{path}: 'images' is not a list of objects", "pass a Karpathy split JSON")
    wanted = None if split is None else set(split.replace(",", "+").split("+"))
    selected = [e for e in entries if wanted is None or e.get("split") in wanted]
    if not selected:
        splits = sorted({str(e.get("split")) for e in entries})
        if not entries:
            raise CrossGetError(f"{path} holds no images", "pass a Karpathy split JSON with images")
        raise CrossGetError(f"{path} has no images with split {split!r}", f"choose --split from: {', '.join(splits)}")
    root = records_root(image_root, path)
    builder = _Builder()
    for n, e in enumerate(selected):
        filename = e.get("filename")
        if not isinstance(filename, str) or not filename:
            raise CrossGetError(f"{path}: image entry {n} of split {split!r} has no 'filename'", "pass a Karpathy split JSON")
        rel = os.path.join(e["filepath"], filename) if e.get("filepath") else filename
        sentences = e.get("sentences")
        if not isinstance(sentences, list):
            raise CrossGetError(f"{path}: image {filename} has no 'sentences' list", "pass a Karpathy split JSON")
        captions = []
        for s in sentences:
            raw = s.get("raw") if isinstance(s, dict) else None
            if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
                raw = " ".join(map(str, s["tokens"]))
            captions += _captions(raw, f"{path}: image {filename}")
        image_id = e.get("cocoid", e.get("imgid", filename))
        full = join_root(root, rel)
        builder.add(full, full, image_id, captions)
    result = builder.build(os.fspath(path))
    if any("hard_negatives" in e for e in selected):
        if len(result) != len(selected):
            raise CrossGetError(f"{path}: an image is listed twice", "hard negatives need one entry per image")
        negatives = [e.get("hard_negatives", []) for e in selected]
        if not all(isinstance(n, list) and all(isinstance(c, str) for c in n) for n in negatives):
            raise CrossGetError(f"{path}: 'hard_negatives' must be a list of caption strings", "fix the data")
        result.hard_negatives = [list(n) for n in negatives]
    return result


def _records_retrieval(path: Path, rows: list, image_root: Any, image_column: str, caption_column: str) -> RetrievalData:
    root = records_root(image_root, path)
    builder = _Builder()
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise CrossGetError(f"{path} record {n} is not an object", "pass a list of image/caption records")
        image = required_field(row, image_column, path, n, "--image-column")
        if not isinstance(image, str):
            raise CrossGetError(
                f"{path} record {n}: {image_column!r} must be an image path", "pass --image-column with the path column"
            )
        caption = required_field(row, caption_column, path, n, "--caption-column")
        full = join_root(root, image)
        builder.add(full, full, row.get("image_id", image), _captions(caption, f"{path} record {n}"))
    return builder.build(os.fspath(path))


def _hf_retrieval(
    obj: Any, name: str, split: str | None, image_root: Any, image_column: str, caption_column: str
) -> tuple[RetrievalData, list[str | None]]:
    ds, rows = select_split(obj, split, name)
    require_columns(ds, {image_column: "--image-column", caption_column: "--caption-column"}, name)
    root = None if image_root is None else os.fspath(Path(image_root).expanduser())
    keys, need = hf_image_keys(ds, image_column, root, name)
    captions = column_values(ds, caption_column)
    id_column = next((c for c in HF_ID_COLUMNS if c in ds.column_names), None)
    ids = column_values(ds, id_column) if id_column else None
    if ids is None and isinstance(keys[0], str):
        ids = column_values(ds, image_column)
    builder = _Builder()
    for r in rows if rows is not None else range(len(ds)):
        builder.add(keys[r], r, None if ids is None else ids[r], _captions(captions[r], f"{name} row {r}"))
    data = builder.build(name)
    data.image_paths = HFImages(ds, image_column, data.image_paths, root)
    if ids is None:
        data.image_ids = None
    return data, need


__all__ = [
    "RetrievalData",
    "load_retrieval",
]
