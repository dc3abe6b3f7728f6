"""Multiple-choice visual questions (ScienceQA-IMG / MMBench style): data, the
prompt's option list, the parser of the chosen letter, and accuracy.

A data file is JSONL, a JSON list or CSV/TSV, one record per question, with
``image`` (a path, relative to the file or ``--image-root``), ``question``,
the options as a list (``options`` or ``choices``) or MMBench's ``A``, ``B``,
... columns, and ``answer``: the letter, the 0-based index, or the option text.
``question_id`` is optional.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from crossget_cli.data.images import ImageDataset, check_images_exist, join_root
from crossget_cli.data.records import read_records, records_root, required_field, shortens
from crossget_cli.errors import CrossGetError

LETTERS = string.ascii_uppercase


@dataclass
class ChoiceData:
    """One record per question; ``answers`` are 0-based option indices."""

    question_ids: list[Any]
    image_paths: list[str]
    questions: list[str]
    options: list[list[str]]
    answers: list[int]

    def __len__(self) -> int:
        return len(self.questions)

    def image_dataset(self, transform: Callable | None = None) -> ImageDataset:
        return ImageDataset(self.image_paths, transform)

    def limit(self, n: int | None) -> "ChoiceData":
        if not shortens(n, len(self)):
            return self
        return ChoiceData(self.question_ids[:n], self.image_paths[:n], self.questions[:n], self.options[:n], self.answers[:n])


def load_multiple_choice(path: str | os.PathLike, *, image_root: str | None = None, limit: int | None = None) -> ChoiceData:
    file = Path(path)
    if not file.is_file():
        raise CrossGetError(f"multiple-choice data not found: {path}", "pass a JSONL/JSON/CSV file of questions with options")
    rows = read_records(file)
    if not rows:
        raise CrossGetError(f"{file} holds no questions", "pass a file with at least one record")
    root = records_root(image_root, file)
    data = ChoiceData([], [], [], [], [])
    for n, row in enumerate(rows, 1):
        where = f"{file} record {n}"
        options = _options(row, where)
        data.question_ids.append(row.get("question_id", row.get("index", n - 1)))
        data.image_paths.append(join_root(root, str(required_field(row, "image", file, n, "an 'image' field"))))
        data.questions.append(str(required_field(row, "question", file, n, "a 'question' field")))
        data.options.append(options)
        data.answers.append(_answer_index(required_field(row, "answer", file, n, "an 'answer' field"), options, where))
    data = data.limit(limit)
    check_images_exist(data.image_paths, os.fspath(file), image_root)
    return data


def _options(row: dict, where: str) -> list[str]:
    listed = row.get("options", row.get("choices"))
    if isinstance(listed, str) and listed.strip().startswith("["):
        import json

        listed = json.loads(listed)
    if listed is None:  # MMBench: one column per letter, empty where a question has fewer options
        listed = []
        for letter in LETTERS:
            value = row.get(letter)
            if value is None or (isinstance(value, str) and not value.strip()):
                break
            listed.append(value)
    if not isinstance(listed, list) or len(listed) < 2:
        raise CrossGetError(f"{where} has fewer than two options", "give 'options' as a list, or columns A, B, ...")
    if len(listed) > len(LETTERS):
        raise CrossGetError(f"{where} has {len(listed)} options", f"at most {len(LETTERS)} are supported")
    return [str(option) for option in listed]


def _answer_index(answer: Any, options: list[str], where: str) -> int:
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return answer
    text = str(answer).strip()
    if len(text) == 1 and text.upper() in LETTERS[: len(options)]:
        return LETTERS.index(text.upper())
    lowered = [option.strip().lower() for option in options]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise CrossGetError(f"{where}: answer {answer!r} is not an option letter, index or option text", "fix the answer field")


def format_options(options: Sequence[str]) -> str:
    """``A. first`` / ``B. second`` ..., one per line, as LLaVA's evaluation prompts."""
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


_LEADING_LETTER = re.compile(r"^\W*\(?([A-Z])(?:[\).:,\s]|$)")
_ANSWER_IS = re.compile(r"answer is\W*\(?([A-Z])\b", re.IGNORECASE)


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """The option a generated answer picks: a leading letter (``B``, ``(B)``,
    ``B. text``), ``the answer is B``, or the exact text of an option; ``None``
    when none matches (scored as wrong)."""
    text = text.strip()
    valid = LETTERS[: len(options)]
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        found = pattern.search(text)
        if found and found.group(1).upper() in valid:
            return valid.index(found.group(1).upper())
    lowered = [option.strip().lower() for option in options]
    cleaned = text.rstrip(".").strip().lower()
    return lowered.index(cleaned) if cleaned in lowered else None


def choice_accuracy(predicted: Sequence[int | None], answers: Sequence[int]) -> dict[str, float]:
    """Accuracy in percent, and the share of answers no option could be read from."""
    if not answers:
        return {"accuracy": 0.0, "unparsed": 0.0}
    correct = sum(p == a for p, a in zip(predicted, answers))
    unparsed = sum(p is None for p in predicted)
    return {"accuracy": 100.0 * correct / len(answers), "unparsed": 100.0 * unparsed / len(answers)}
