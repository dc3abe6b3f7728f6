"""The shapes benchmark on disk: :func:`write_dataset` writes composites as PNGs and a
Karpathy-style JSON; :func:`resolve_builtin` generates a preset once into the cache for
``builtin:shapes-test`` style data strings."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from crossget_cli.data.easy_vqa import EASY_VQA_VERSION, cache_root, easy_vqa_wheel
from crossget_cli.data.shapes import DEFAULT, FORMAT_VERSION, PRESETS, SPLITS, ShapesConfig, check_int, generate
from crossget_cli.errors import CrossGetError
from crossget_cli.files import replace_folder

JSON_NAME = "dataset_shapes.json"
CONFIG_NAME = "shapes_config.json"


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
        check_int(f"the size of split {split}", n, 1, 10**7, "e.g. 1000")
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
            "easy_vqa": EASY_VQA_VERSION,
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
    image order :func:`~crossget_cli.data.retrieval.load_retrieval` gives for the same ``split``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    wanted = None if split is None else set(split.replace(",", "+").split("+"))
    return [list(e.get("hard_negatives", [])) for e in data["images"] if wanted is None or e.get("split") in wanted]


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


__all__ = [
    "available_builtins",
    "builtin_split",
    "load_hard_negatives",
    "resolve_builtin",
    "write_dataset",
]
