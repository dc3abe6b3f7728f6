"""VQA data (:func:`load_vqa`): the official VQAv2 question/annotation JSON files with
COCO image naming, or JSONL/JSON records."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from crossget_cli.data.images import ImageDataset, ImageRef, check_images_exist, join_root
from crossget_cli.data.records import read_json, read_records, records_root, required_field, shortens
from crossget_cli.data.sources import resolve_source
from crossget_cli.errors import CrossGetError

VQA_SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test2015", "test-dev2015": "test2015"}


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
    kind, path = resolve_source(questions)
    if kind != "file":
        raise CrossGetError(f"VQA questions must be a file, got {questions}", "pass a VQAv2 question JSON or a JSONL file")
    suffix = path.suffix.lower()
    data = read_json(path) if suffix == ".json" else None
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
    ann = read_json(ann_path)
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
    "VQAData",
    "load_vqa",
]
