"""Classification data (:func:`load_classification`): an ImageFolder tree, CSV/JSONL
with path + label columns, or an HF dataset (a ``ClassLabel`` feature names the
classes); zero-shot prompt templates (:func:`load_templates`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from crossget_cli.data.images import IMAGE_EXTENSIONS, HFImages, ImageDataset, ImageRef, check_images_exist, join_root
from crossget_cli.data.records import read_records, records_root, required_field, shortens
from crossget_cli.data.retrieval import load_retrieval
from crossget_cli.data.sources import (
    DATA_SUFFIXES,
    Source,
    check_hf_images_exist,
    column_values,
    hf_image_keys,
    is_saved_dataset,
    load_hf_dataset,
    require_columns,
    resolve_source,
    select_split,
)
from crossget_cli.errors import CrossGetError


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
    kind, value = resolve_source(source)
    if kind == "dir" and not is_saved_dataset(value):
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
    obj, name = load_hf_dataset(kind, value, split)
    result, need = _hf_classification(obj, name, split, image_root, image_column, label_column, names)
    result = result.limit(limit)
    check_hf_images_exist(result.images, need, name, image_root)
    return result


def _builtin_classification(source: str, split: str | None, names: list[str] | None) -> ClassificationData:
    """A built-in shapes set read as classification: each composite's caption is its
    label (``builtin:shapes1-test``: one object each, over the 24 colour-shape classes)."""
    from crossget_cli.data.builtin import builtin_split
    from crossget_cli.data.shapes import classnames

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

    ds, rows = select_split(obj, split, name)
    require_columns(ds, {image_column: "--image-column", label_column: "--label-column"}, name)
    root = None if image_root is None else os.fspath(Path(image_root).expanduser())
    _, need = hf_image_keys(ds, image_column, root, name)
    rows = list(rows) if rows is not None else list(range(len(ds)))
    values = column_values(ds, label_column)
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


__all__ = [
    "OPENAI_IMAGENET_TEMPLATES",
    "ClassificationData",
    "load_classification",
    "load_templates",
]
