"""Evaluation data: real on-disk formats read into uniform, lazily loaded records.

Nothing here decodes an image until it is asked for: records hold *image
references* (:data:`ImageRef`), and :func:`open_image` (called by the datasets
returned from ``image_dataset(transform)``) opens one with PIL, converted to RGB,
and hands it to the caller's ``transform`` (open_clip's ``preprocess``, a wrapper
around a transformers image processor, ...). Preprocessing is the caller's job.

Retrieval and captioning (:func:`load_retrieval`, :func:`load_captions`),
``source`` being:

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

Classification (:func:`load_classification`): an ImageFolder tree, CSV/JSONL with
path + label columns, or an HF dataset (a ``ClassLabel`` feature names the classes).
Prompt templates: :func:`load_templates`. VQA (:func:`load_vqa`): the official VQAv2
question/annotation JSON files with COCO image naming, or JSONL/JSON records.

Problems a user can fix raise :class:`~crossget_cli.errors.CrossGetError` naming the
file, key or column and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.utils.data
from PIL import Image

from crossget_cli.errors import CrossGetError, first_line

#: What a record holds for an image: a file path, a PIL image, or a
#: ``{"bytes": ..., "path": ...}`` dict (``datasets.Image(decode=False)`` values).
ImageRef = str | Image.Image | dict

#: A data source: a file or folder path, a hub name, or a ``datasets`` object.
Source = str | os.PathLike | Any

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".txt", ".parquet", ".arrow")
HF_ID_COLUMNS = ("image_id", "img_id", "imgid", "cocoid")

HF_HINT = (
    "check the name or path; offline, a hub dataset must already be in the Hugging Face cache "
    "(set HF_HUB_OFFLINE=1), or pass a local file or save_to_disk folder"
)


# --------------------------------------------------------------------------- images


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


# --------------------------------------------------------------------------- records


def shortens(n: int | None, size: int) -> bool:
    """Whether ``limit(n)`` keeps fewer than ``size`` records (and ``n`` is valid)."""
    if n is not None and n < 1:
        raise CrossGetError(f"limit must be at least 1, got {n}", "pass a positive --limit")
    return n is not None and n < size


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


@dataclass
class ClassificationData:
    """Classification records: ``images[i]`` has class ``labels[i]``, an index into ``classnames``."""

    images: Sequence[ImageRef]
    labels: list[int]
    classnames: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def image_dataset(self, transform: Callable[[Image.Image], Any] | None = None) -> ImageDataset:
        """A torch ``Dataset`` of ``(sample_index, transform(rgb_image))``; labels are ``self.labels``."""
        return ImageDataset(self.images, transform)

    def limit(self, n: int | None) -> ClassificationData:
        """The first ``n`` samples (an ImageFolder is ordered by class: shuffle before limiting)."""
        if not shortens(n, len(self)):
            return self
        return ClassificationData(self.images[:n], self.labels[:n], self.classnames)


@dataclass
class VQAData:
    """Visual question answering records, one per question.

    Attributes:
        question_ids, image_paths, questions: per question.
        image_ids: per question, the image's id (None entries where the data has none).
        answers: per question, the human answers (10 in VQAv2), or None without annotations.
        multiple_choice_answers, answer_types, question_types: per question when
            annotated (entries may be None; ``question_type`` is VQAv2's, e.g. "what color is the").
    """

    question_ids: list[Any]
    image_paths: Sequence[ImageRef]
    questions: list[str]
    image_ids: list[Any]
    answers: list[list[str]] | None = None
    multiple_choice_answers: list[str | None] | None = None
    answer_types: list[str | None] | None = None
    question_types: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.questions)

    def image_dataset(self, transform: Callable[[Image.Image], Any] | None = None) -> ImageDataset:
        """A torch ``Dataset`` of ``(question_index, transform(rgb_image))``."""
        return ImageDataset(self.image_paths, transform)

    def limit(self, n: int | None) -> VQAData:
        """The first ``n`` questions."""
        if not shortens(n, len(self)):
            return self

        def cut(xs):
            return None if xs is None else xs[:n]

        return VQAData(
            self.question_ids[:n],
            self.image_paths[:n],
            self.questions[:n],
            self.image_ids[:n],
            cut(self.answers),
            cut(self.multiple_choice_answers),
            cut(self.answer_types),
            cut(self.question_types),
        )


# --------------------------------------------------------------------------- file reading


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CrossGetError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}", "fix or re-download the file"
        ) from None
    except UnicodeDecodeError:
        raise CrossGetError(f"{path} is not UTF-8 text", "pass a JSON file") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CrossGetError(
                    f"{path} line {n} is not valid JSON: {err.msg}", "each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise CrossGetError(f"{path} line {n} is not a JSON object", "each line must be one JSON object")
            rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            return list(reader)
        except csv.Error as err:
            raise CrossGetError(f"{path} is not valid CSV: {err}", "fix the file") from None


def read_records(path: Path) -> list[dict]:
    """Rows of a CSV/TSV, JSONL, or list-of-objects JSON file."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    data = _read_json(path)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise CrossGetError(f"{path} is not a list of JSON objects", "pass a JSON list of records, JSONL or CSV")
    return data


def required_field(row: dict, key: str, path: Path, n: int, flag: str) -> Any:
    if key not in row:
        columns = ", ".join(map(str, row)) or "none"
        raise CrossGetError(
            f"{path} record {n} has no {key!r} (its keys: {columns})", f"pass {flag} with the column that holds it"
        )
    if row[key] is None or row[key] == "":
        raise CrossGetError(f"{path} record {n} has an empty {key!r}", "fill it in or remove the record")
    return row[key]


def _captions(value: Any, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise CrossGetError(
            f"{where}: a caption must be a string or a list of strings, got {type(value).__name__}", "fix the data"
        )
    return [v.strip() for v in values if v.strip()]


def records_root(image_root: Any, path: Path | None) -> str | None:
    if image_root is not None:
        return os.fspath(Path(image_root).expanduser())
    return os.fspath(path.parent) if path is not None else None


# --------------------------------------------------------------------------- sources


def _is_hf_object(obj: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, (datasets.Dataset, datasets.DatasetDict))


def _resolve_source(source: Source) -> tuple[str, Any]:
    """``("hf", name_or_obj)``, ``("dir", Path)`` or ``("file", Path)``."""
    if _is_hf_object(source):
        return "hf-object", source
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
        raise CrossGetError("no data given", "pass a data file, folder or dataset name")
    text = os.fspath(source)
    if text.startswith("hf:"):
        return "hub", text[3:]
    path = Path(text).expanduser()
    if path.is_dir():
        return "dir", path
    if path.is_file():
        return "file", path
    if (
        path.is_absolute()
        or text.startswith((".", "~"))
        or path.suffix.lower() in DATA_SUFFIXES
        or path.suffix.lower() in IMAGE_EXTENSIONS
    ):
        raise CrossGetError(f"data file {text} not found", "check the path (prefix hf: for a Hugging Face hub dataset)")
    return "hub", text


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _hf_load(kind: str, value: Any, split: str | None) -> tuple[Any, str]:
    """Load an HF source; returns the Dataset/DatasetDict and a name for messages."""
    import datasets

    if kind == "hf-object":
        return value, "the given dataset"
    if kind == "dir" and _is_saved_dataset(value):
        try:
            return datasets.load_from_disk(os.fspath(value)), os.fspath(value)
        except Exception as err:  # noqa: BLE001 - a corrupt or foreign folder fails in many ways
            raise CrossGetError(
                f"cannot read saved dataset {value}: {first_line(err)}", "re-create it with save_to_disk"
            ) from None
    name = os.fspath(value)
    try:
        if split:  # load only the split asked for; kept as a one-split dict so _select_split knows it was chosen
            return datasets.DatasetDict({split: datasets.load_dataset(name, split=split)}), name
        return datasets.load_dataset(name), name
    except CrossGetError:
        raise
    except Exception as err:  # noqa: BLE001 - offline/missing/unknown-split failures come as many types
        where = f" (split {split!r})" if split else ""
        raise CrossGetError(f"cannot load dataset {name!r}{where}: {first_line(err)}", HF_HINT) from None



def _select_split(obj: Any, split: str | None, name: str) -> tuple[Any, list[int] | None]:
    """Pick ``split`` of a DatasetDict, and filter on a ``split`` column; returns (Dataset, rows or None)."""
    import datasets

    chosen = False
    if isinstance(obj, datasets.DatasetDict):
        available = list(obj)
        if split is None:
            if len(available) != 1:
                raise CrossGetError(f"{name} has several splits: {', '.join(available)}", "pass --split with one of them")
            obj = obj[available[0]]
        elif split in obj:
            obj, chosen = obj[split], True
        elif len(available) == 1 and split in _split_values(obj[available[0]]):
            obj = obj[available[0]]
        else:
            raise CrossGetError(f"{name} has no split {split!r}", f"choose --split from: {', '.join(available)}")
    if len(obj) == 0:
        raise CrossGetError(f"{name} is empty", "pass a dataset with at least one row")
    values = _split_values(obj)
    if split is None or not values:
        return obj, None
    if split in values:
        return obj, [i for i, v in enumerate(_column(obj, "split")) if v == split]
    if chosen:
        return obj, None
    raise CrossGetError(f"{name} has no rows with split {split!r}", f"choose --split from: {', '.join(sorted(values))}")


def _split_values(ds: Any) -> set[str]:
    import datasets

    feature = ds.features.get("split")
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return set(_column(ds, "split"))
    return set()


def _column(ds: Any, name: str) -> list:
    return ds.with_format("arrow")[name].to_pylist()


def _require_columns(ds: Any, columns: dict[str, str], name: str) -> None:
    for column, flag in columns.items():
        if column not in ds.column_names:
            raise CrossGetError(
                f"{name} has no column {column!r} (columns: {', '.join(ds.column_names)})", f"pass {flag} with the right column"
            )


def _hf_image_keys(ds: Any, column: str, image_root: str | None, name: str) -> tuple[list[Any], list[str | None]]:
    """Per row, a grouping key (None: a row of its own) and the file that must exist (None: bytes embedded)."""
    import datasets
    import pyarrow.compute as pc

    feature = ds.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        paths = [join_root(image_root, p) if p else None for p in _column(ds, column)]
        for n, p in enumerate(paths):
            if p is None:
                raise CrossGetError(f"{name} row {n} has an empty {column!r}", "every row needs an image path")
        return paths, paths
    if isinstance(feature, datasets.Image):
        arr = ds.with_format("arrow")[column]
        raw_paths = pc.struct_field(arr, "path").to_pylist()
        sizes = pc.binary_length(pc.struct_field(arr, "bytes")).to_pylist()
        keys = [(p, s) if p else None for p, s in zip(raw_paths, sizes)]
        need = [join_root(image_root, p) if s is None and p else None for p, s in zip(raw_paths, sizes)]
        return keys, need
    raise CrossGetError(
        f"column {column!r} of {name} holds {feature}, not images or image paths", "pass --image-column with the image column"
    )


def _check_hf_exist(images: HFImages, need: list[str | None], name: str, image_root: Any) -> None:
    check_images_exist([need[r] for r in images.rows if need[r] is not None], name, image_root)


# --------------------------------------------------------------------------- retrieval


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
        from crossget_cli.data.shapes import builtin_split, resolve_builtin

        split = builtin_split(source) or split
        source = resolve_builtin(source)
    kind, value = _resolve_source(source)
    if kind == "file":
        path: Path = value
        suffix = path.suffix.lower()
        if suffix == ".json":
            data = _read_json(path)
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
    obj, name = _hf_load(kind, value, split)
    result, need = _hf_retrieval(obj, name, split, image_root, image_column, caption_column)
    result = result.limit(limit)
    if check_images:
        _check_hf_exist(result.image_paths, need, name, image_root)
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
    ds, rows = _select_split(obj, split, name)
    _require_columns(ds, {image_column: "--image-column", caption_column: "--caption-column"}, name)
    root = None if image_root is None else os.fspath(Path(image_root).expanduser())
    keys, need = _hf_image_keys(ds, image_column, root, name)
    captions = _column(ds, caption_column)
    id_column = next((c for c in HF_ID_COLUMNS if c in ds.column_names), None)
    ids = _column(ds, id_column) if id_column else None
    if ids is None and isinstance(keys[0], str):
        ids = _column(ds, image_column)
    builder = _Builder()
    for r in rows if rows is not None else range(len(ds)):
        builder.add(keys[r], r, None if ids is None else ids[r], _captions(captions[r], f"{name} row {r}"))
    data = builder.build(name)
    data.image_paths = HFImages(ds, image_column, data.image_paths, root)
    if ids is None:
        data.image_ids = None
    return data, need


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


# --------------------------------------------------------------------------- classification


def load_classification(
    source: Source,
    *,
    split: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    classnames: Sequence[str] | str | os.PathLike | None = None,
    limit: int | None = None,
    image_root: str | os.PathLike | None = None,
) -> ClassificationData:
    """Read classification data.

    * an **ImageFolder** tree ``root/<class_name>/**/*.jpg|png|...`` (``root/<split>/<class_name>/``
      when ``split`` is given): classes are the sorted folder names with ``_`` as spaces;
    * a **CSV/TSV, JSONL or JSON list** with ``image_column`` (a path, relative to
      ``image_root`` or the file's folder) and ``label_column``: an int index into
      ``classnames``, or a class name (classes then default to the sorted distinct names);
    * an **HF dataset** (see :func:`load_retrieval`): a ``ClassLabel`` label column names
      the classes; int labels need ``classnames``; string labels are names.

    ``classnames`` (a list, or a text file with one name per line) overrides or supplies
    the class names, in label order.
    """
    names = (
        _read_classnames(classnames)
        if isinstance(classnames, (str, os.PathLike))
        else (list(classnames) if classnames is not None else None)
    )
    if isinstance(source, str) and source.startswith("builtin:"):
        return _builtin_classification(source, split, names).limit(limit)
    kind, value = _resolve_source(source)
    if kind == "dir" and not _is_saved_dataset(value):
        base = value / split if split else value
        if split and not base.is_dir():
            subdirs = sorted(d.name for d in value.iterdir() if d.is_dir() and not d.name.startswith("."))
            raise CrossGetError(f"{value} has no split folder {split!r}", f"choose --split from: {', '.join(subdirs) or 'none'}")
        if _has_class_folders(base):
            return _image_folder(base, names).limit(limit)
        if not _has_data_files(value):
            raise CrossGetError(f"{base} holds no images", f"put images under {base}/<class_name>/ (an ImageFolder tree)")
    if kind == "file":
        path: Path = value
        if path.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".ndjson", ".json"):
            raise CrossGetError(
                f"unsupported data file {path}", "pass an ImageFolder, a .csv/.tsv/.jsonl/.json file or a dataset folder"
            )
        rows = read_records(path)
        root = records_root(image_root, path)
        images, labels = [], []
        for n, row in enumerate(rows, 1):
            image = required_field(row, image_column, path, n, "--image-column")
            images.append(join_root(root, str(image)))
            labels.append(required_field(row, label_column, path, n, "--label-column"))
        if not images:
            raise CrossGetError(f"{path} holds no records", "pass a file with at least one image and label")
        label_ids, names = _encode_labels(labels, names, os.fspath(path))
        result = ClassificationData(images, label_ids, names).limit(limit)
        check_images_exist(result.images, os.fspath(path), image_root)
        return result
    obj, name = _hf_load(kind, value, split)
    result, need = _hf_classification(obj, name, split, image_root, image_column, label_column, names)
    result = result.limit(limit)
    _check_hf_exist(result.images, need, name, image_root)
    return result


def _builtin_classification(source: str, split: str | None, names: list[str] | None) -> ClassificationData:
    """A built-in shapes set read as classification: each composite's caption is its
    label (``builtin:shapes1-test``: one object each, over the 24 colour-shape classes)."""
    from crossget_cli.data.shapes import builtin_split, classnames

    retrieval = load_retrieval(source, split=builtin_split(source) or split)
    labels = [retrieval.captions[caps[0]] for caps in retrieval.image_to_captions]
    names = names or classnames()
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise CrossGetError(
            f"{source}: {len(unknown)} captions are not class names (e.g. {unknown[0]!r})",
            "use a single-object set such as builtin:shapes1-test",
        )
    index = {name: i for i, name in enumerate(names)}
    return ClassificationData(list(retrieval.image_paths), [index[label] for label in labels], names)


def _read_classnames(path: str | os.PathLike) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CrossGetError(f"class-name file {path} not found", "pass a text file with one class name per line")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise CrossGetError(f"class-name file {path} is empty", "write one class name per line")
    return names


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _has_class_folders(base: Path) -> bool:
    for d in base.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            for _, _, files in os.walk(d, followlinks=True):
                if any(_is_image(f) for f in files):
                    return True
    return False


def _has_data_files(root: Path) -> bool:
    """Whether a folder might be something ``datasets.load_dataset`` reads (data files or a script)."""
    suffixes = DATA_SUFFIXES + (".py", ".zip", ".tar", ".gz")
    return any(f.lower().endswith(suffixes) for _, _, files in os.walk(root) for f in files)


def _image_folder(base: Path, names: list[str] | None) -> ClassificationData:
    class_dirs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if names is not None and len(names) != len(class_dirs):
        raise CrossGetError(
            f"{len(names)} class names given but {base} has {len(class_dirs)} class folders",
            "pass one class name per folder, in sorted folder order",
        )
    images, labels = [], []
    for label, d in enumerate(class_dirs):
        for dirpath, dirnames, files in sorted(os.walk(d, followlinks=True)):
            dirnames.sort()
            for f in sorted(files):
                if _is_image(f) and not f.startswith("."):
                    images.append(os.path.join(dirpath, f))
                    labels.append(label)
    if not images:
        raise CrossGetError(f"{base} holds no images", f"put images under {base}/<class_name>/")
    return ClassificationData(images, labels, names if names is not None else [d.name.replace("_", " ") for d in class_dirs])


def _encode_labels(values: list[Any], names: list[str] | None, source: str) -> tuple[list[int], list[str]]:
    """Labels as indices into class names (given, or the sorted distinct label strings)."""

    def as_int(v: Any) -> int | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        return None

    if names is None:
        if any(as_int(v) is not None for v in values):
            raise CrossGetError(
                f"labels of {source} are class indices but no class names were given",
                "pass --classnames (a file, one name per line)",
            )
        names = sorted({str(v) for v in values})
    lookup = {n: i for i, n in enumerate(names)}
    out = []
    for n, v in enumerate(values, 1):
        if isinstance(v, str) and v in lookup:
            out.append(lookup[v])
            continue
        i = as_int(v)
        if i is None:
            raise CrossGetError(
                f"label {v!r} (record {n} of {source}) is not one of the {len(names)} class names",
                "check --classnames and the label column",
            )
        if not 0 <= i < len(names):
            raise CrossGetError(
                f"label {i} (record {n} of {source}) is out of range for {len(names)} classes",
                "check --classnames and the label column",
            )
        out.append(i)
    return out, list(names)


def _hf_classification(
    obj: Any, name: str, split: str | None, image_root: Any, image_column: str, label_column: str, names: list[str] | None
) -> tuple[ClassificationData, list[str | None]]:
    import datasets

    ds, rows = _select_split(obj, split, name)
    _require_columns(ds, {image_column: "--image-column", label_column: "--label-column"}, name)
    root = None if image_root is None else os.fspath(Path(image_root).expanduser())
    _, need = _hf_image_keys(ds, image_column, root, name)
    rows = list(rows) if rows is not None else list(range(len(ds)))
    values = _column(ds, label_column)
    feature = ds.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        if names is not None and len(names) != feature.num_classes:
            raise CrossGetError(
                f"{len(names)} class names given but {name} has {feature.num_classes} classes", "pass one class name per class"
            )
        names = names if names is not None else list(feature.names)
        labels = [values[r] for r in rows]
        if any(v is None or v < 0 for v in labels):
            raise CrossGetError(f"{name} has unlabelled rows (label -1)", "pick a labelled split with --split")
    else:
        labels, names = _encode_labels([values[r] for r in rows], names, name)
    return ClassificationData(HFImages(ds, image_column, rows, root), labels, names), need


OPENAI_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS = {"openai-imagenet": OPENAI_IMAGENET_TEMPLATES, "simple": ("a photo of a {}.",), "bare": ("{}",)}


def load_templates(path_or_name: str | os.PathLike) -> list[str]:
    """Zero-shot prompt templates, each with one ``{}`` for the class name.

    ``"openai-imagenet"``: CLIP's 80 ImageNet templates; ``"simple"``: ``["a photo of a {}."]``;
    ``"bare"``: the class name alone (models trained on bare phrases, like the shapes benchmark);
    otherwise a text file, one template per line (blank lines and ``#`` comments skipped).
    """
    if isinstance(path_or_name, str) and path_or_name in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[path_or_name])
    path = Path(path_or_name).expanduser()
    if not path.is_file():
        raise CrossGetError(
            f"template file {path} not found",
            f"pass a text file with one template per line, or one of: {', '.join(TEMPLATE_SETS)}",
        )
    templates = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            ok = line.count("{}") == 1 and line.format("x") == line.replace("{}", "x")
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CrossGetError(
                f"{path} line {n}: template {line!r} must contain exactly one {{}} and no other braces",
                "write e.g. 'a photo of a {}.'",
            )
        templates.append(line)
    if not templates:
        raise CrossGetError(f"template file {path} holds no templates", "write one template per line, e.g. 'a photo of a {}.'")
    return templates


# --------------------------------------------------------------------------- VQA

VQA_SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test2015", "test-dev2015": "test2015"}


def load_vqa(
    questions: str | os.PathLike,
    *,
    annotations: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    image_column: str = "image",
    question_column: str = "question",
    answers_column: str = "answers",
    limit: int | None = None,
    check_images: bool = True,
) -> VQAData:
    """Read VQA questions (and answers when available).

    * the official **VQAv2** files: ``questions`` = ``v2_OpenEnded_mscoco_val2014_questions.json``
      (``{"data_subtype": "val2014", "questions": [{"question_id", "image_id", "question"}]}``),
      ``annotations`` = ``v2_mscoco_val2014_annotations.json`` (``{"annotations": [{"question_id",
      "answers": [{"answer"}], "multiple_choice_answer", "answer_type"}]}``), optional. Images are
      ``image_root/COCO_{subtype}_{image_id:012d}.jpg`` (or under ``image_root/{subtype}/``); the
      subtype is ``split`` (``val``/``val2014``, ``test-dev`` -> ``test2015``) or the file's
      ``data_subtype``;
    * **JSONL or a JSON list** of records with ``image_column`` (a path), ``question_column``,
      optionally ``answers_column`` (a string, a list of strings, or VQAv2-style
      ``[{"answer": ...}]``), ``question_id``, ``image_id``, ``multiple_choice_answer``, ``answer_type``.
    """
    kind, path = _resolve_source(questions)
    if kind != "file":
        raise CrossGetError(f"VQA questions must be a file, got {questions}", "pass a VQAv2 question JSON or a JSONL file")
    suffix = path.suffix.lower()
    data = _read_json(path) if suffix == ".json" else None
    if isinstance(data, dict) and "questions" in data:
        result = _vqav2(path, data, annotations, image_root, split)
    elif isinstance(data, dict) and "annotations" in data:
        raise CrossGetError(f"{path} is a VQA annotation file", "pass the question file first and this one as annotations")
    elif suffix in (".jsonl", ".ndjson", ".json", ".csv", ".tsv"):
        if annotations is not None:
            raise CrossGetError(
                "annotations go with a VQAv2 question JSON only", f"put the answers in {path} ({answers_column!r} column)"
            )
        rows = data if data is not None else read_records(path)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise CrossGetError(
                f"{path} is neither a VQAv2 question file nor a list of records", "pass a VQAv2 question JSON or JSONL"
            )
        result = _vqa_records(path, rows, image_root, image_column, question_column, answers_column)
    else:
        raise CrossGetError(f"unsupported VQA file {path}", "pass a VQAv2 question .json or a .jsonl file")
    result = result.limit(limit)
    if check_images:  # not when only the answers are scored
        check_images_exist(result.image_paths, os.fspath(path), image_root)
    return result


def _vqav2(path: Path, data: dict, annotations: Any, image_root: Any, split: str | None) -> VQAData:
    qs = data["questions"]
    if not isinstance(qs, list) or not all(isinstance(q, dict) for q in qs):
        raise CrossGetError(f"{path}: 'questions' is not a list of objects", "pass a VQAv2 question JSON")
    if not qs:
        raise CrossGetError(f"{path} holds no questions", "pass a VQAv2 question JSON with questions")
    subtype = split or data.get("data_subtype")
    if not subtype:
        raise CrossGetError(f"cannot tell the image split of {path} (no data_subtype)", "pass --split, e.g. val2014")
    subtype = VQA_SUBTYPES.get(subtype, subtype)
    root = records_root(image_root, path)
    qids, images, texts, image_ids = [], [], [], []
    located: dict[Any, str] = {}
    for n, q in enumerate(qs):
        for key in ("question_id", "image_id", "question"):
            if key not in q:
                raise CrossGetError(f"{path}: question {n} has no {key!r}", "pass a VQAv2 question JSON")
        image_id = q["image_id"]
        if image_id not in located:
            located[image_id] = _coco_image(root, subtype, image_id, path)
        qids.append(q["question_id"])
        images.append(located[image_id])
        texts.append(q["question"])
        image_ids.append(image_id)
    result = VQAData(qids, images, texts, image_ids)
    if annotations is None:
        return result
    ann_path = Path(annotations).expanduser()
    if not ann_path.is_file():
        raise CrossGetError(f"annotation file {ann_path} not found", "check the path of the VQAv2 annotation JSON")
    ann = _read_json(ann_path)
    if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
        raise CrossGetError(
            f"{ann_path} is not a VQAv2 annotation file (no 'annotations' list)", "pass e.g. v2_mscoco_val2014_annotations.json"
        )
    by_qid = {a.get("question_id"): a for a in ann["annotations"] if isinstance(a, dict)}
    missing = [q for q in qids if q not in by_qid]
    if missing:
        raise CrossGetError(
            f"{len(missing)} of {len(qids)} questions have no annotation in {ann_path}, e.g. question_id {missing[0]}",
            "pass the annotation file of the same split as the question file",
        )
    result.answers = [_answers(by_qid[q].get("answers"), f"{ann_path} question_id {q}") for q in qids]
    result.multiple_choice_answers = [by_qid[q].get("multiple_choice_answer") for q in qids]
    result.answer_types = [by_qid[q].get("answer_type") for q in qids]
    result.question_types = [by_qid[q].get("question_type") for q in qids]
    return result


def _coco_image(root: str | None, subtype: str, image_id: Any, path: Path) -> str:
    try:
        name = f"COCO_{subtype}_{int(image_id):012d}.jpg"
    except (TypeError, ValueError):
        raise CrossGetError(f"{path}: image_id {image_id!r} is not an integer", "pass a VQAv2 question JSON") from None
    flat = join_root(root, name)
    nested = join_root(root, os.path.join(subtype, name))
    return nested if not os.path.isfile(flat) and os.path.isfile(nested) else flat


def _answers(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out = []
        for a in value:
            a = a.get("answer") if isinstance(a, dict) else a
            if not isinstance(a, str):
                raise CrossGetError(f"{where}: an answer must be a string or {{'answer': string}}", "fix the answers")
            out.append(a)
        return out
    raise CrossGetError(f"{where}: answers must be a string or a list, got {type(value).__name__}", "fix the answers")


def _vqa_records(
    path: Path, rows: list[dict], image_root: Any, image_column: str, question_column: str, answers_column: str
) -> VQAData:
    if not rows:
        raise CrossGetError(f"{path} holds no questions", "pass a file with at least one record")
    root = records_root(image_root, path)
    annotated = answers_column in rows[0]
    out = VQAData([], [], [], [], *([[] for _ in range(4)] if annotated else [None] * 4))
    for n, row in enumerate(rows, 1):
        out.question_ids.append(row.get("question_id", n - 1))
        out.image_paths.append(join_root(root, str(required_field(row, image_column, path, n, "--image-column"))))
        question = required_field(row, question_column, path, n, "--question-column")
        if not isinstance(question, str):
            raise CrossGetError(f"{path} record {n}: {question_column!r} must be a string", "fix the question column")
        out.questions.append(question)
        out.image_ids.append(row.get("image_id"))
        if annotated:
            out.answers.append(_answers(required_field(row, answers_column, path, n, "--answers-column"), f"{path} record {n}"))
            out.multiple_choice_answers.append(row.get("multiple_choice_answer"))
            out.answer_types.append(row.get("answer_type"))
            out.question_types.append(row.get("question_type"))
    return out


__all__ = [
    "OPENAI_IMAGENET_TEMPLATES",
    "CaptionData",
    "ClassificationData",
    "HFImages",
    "ImageDataset",
    "ImageRef",
    "RetrievalData",
    "VQAData",
    "load_captions",
    "load_classification",
    "load_retrieval",
    "load_templates",
    "load_vqa",
    "open_image",
]
