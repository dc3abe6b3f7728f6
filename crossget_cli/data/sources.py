"""Where data comes from: :func:`resolve_source` tells a data file, a folder, a hub
name and a ``datasets`` object apart; the Hugging Face helpers load a dataset, pick
its split and read its columns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crossget_cli.data.images import IMAGE_EXTENSIONS, HFImages, check_images_exist, join_root
from crossget_cli.errors import CrossGetError, first_line

#: A data source: a file or folder path, a hub name, or a ``datasets`` object.
Source = str | os.PathLike | Any

DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".txt", ".parquet", ".arrow")

HF_HINT = (
    "check the name or path; offline, a hub dataset must already be in the Hugging Face cache "
    "(set HF_HUB_OFFLINE=1), or pass a local file or save_to_disk folder"
)


def _is_hf_object(obj: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, (datasets.Dataset, datasets.DatasetDict))


def resolve_source(source: Source) -> tuple[str, Any]:
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


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_hf_dataset(kind: str, value: Any, split: str | None) -> tuple[Any, str]:
    """Load an HF source; returns the Dataset/DatasetDict and a name for messages."""
    import datasets

    if kind == "hf-object":
        return value, "the given dataset"
    if kind == "dir" and is_saved_dataset(value):
        try:
            return datasets.load_from_disk(os.fspath(value)), os.fspath(value)
        except Exception as err:  # noqa: BLE001 - a corrupt or foreign folder fails in many ways
            raise CrossGetError(
                f"cannot read saved dataset {value}: {first_line(err)}", "re-create it with save_to_disk"
            ) from None
    name = os.fspath(value)
    try:
        if split:  # load only the split asked for; kept as a one-split dict so select_split knows it was chosen
            return datasets.DatasetDict({split: datasets.load_dataset(name, split=split)}), name
        return datasets.load_dataset(name), name
    except CrossGetError:
        raise
    except Exception as err:  # noqa: BLE001 - offline/missing/unknown-split failures come as many types
        where = f" (split {split!r})" if split else ""
        raise CrossGetError(f"cannot load dataset {name!r}{where}: {first_line(err)}", HF_HINT) from None


def select_split(obj: Any, split: str | None, name: str) -> tuple[Any, list[int] | None]:
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
        return obj, [i for i, v in enumerate(column_values(obj, "split")) if v == split]
    if chosen:
        return obj, None
    raise CrossGetError(f"{name} has no rows with split {split!r}", f"choose --split from: {', '.join(sorted(values))}")


def _split_values(ds: Any) -> set[str]:
    import datasets

    feature = ds.features.get("split")
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return set(column_values(ds, "split"))
    return set()


def column_values(ds: Any, name: str) -> list:
    return ds.with_format("arrow")[name].to_pylist()


def require_columns(ds: Any, columns: dict[str, str], name: str) -> None:
    for column, flag in columns.items():
        if column not in ds.column_names:
            raise CrossGetError(
                f"{name} has no column {column!r} (columns: {', '.join(ds.column_names)})", f"pass {flag} with the right column"
            )


def hf_image_keys(ds: Any, column: str, image_root: str | None, name: str) -> tuple[list[Any], list[str | None]]:
    """Per row, a grouping key (None: a row of its own) and the file that must exist (None: bytes embedded)."""
    import datasets
    import pyarrow.compute as pc

    feature = ds.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        paths = [join_root(image_root, p) if p else None for p in column_values(ds, column)]
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


def check_hf_images_exist(images: HFImages, need: list[str | None], name: str, image_root: Any) -> None:
    check_images_exist([need[r] for r in images.rows if need[r] is not None], name, image_root)
