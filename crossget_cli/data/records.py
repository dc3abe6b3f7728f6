"""Annotation files read into records (CSV/TSV, JSONL, a JSON list) and the helpers
every loader shares: required fields, the folder image paths are relative to, ``limit``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from crossget_cli.errors import CrossGetError


def read_json(path: Path) -> Any:
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
    data = read_json(path)
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


def records_root(image_root: Any, path: Path | None) -> str | None:
    if image_root is not None:
        return os.fspath(Path(image_root).expanduser())
    return os.fspath(path.parent) if path is not None else None


def shortens(n: int | None, size: int) -> bool:
    """Whether ``limit(n)`` keeps fewer than ``size`` records (and ``n`` is valid)."""
    if n is not None and n < 1:
        raise CrossGetError(f"limit must be at least 1, got {n}", "pass a positive --limit")
    return n is not None and n < size
