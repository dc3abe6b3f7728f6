"""VQAv2 accuracy exactly as the official evaluation code (``vqaEval.py`` of
github.com/GT-Vision-Lab/VQA, PythonEvaluationTools), in plain Python.

Per question, with the (normally 10) human answers ``h_1..h_n`` and the model's
answer ``a`` (both normalized, see below)::

    acc = mean over i of min(1, #{j != i : h_j == a} / 3)

i.e. the average over the n leave-one-out subsets of "min(#humans that said it /
3, 1)"; reported x100.  Overall, per answer type ("yes/no", "number", "other")
and per question type are means of the per-question accuracies, rounded to
``ndigits`` (2, like the official code; ``None`` keeps all digits).  The official
code is Python 2, whose ``round`` goes half away from zero; so does this.

Answer normalization (the official tables are reproduced below as data):

1. ``\\n`` and ``\\t`` become spaces, then ``strip()``;
2. ``process_punctuation``: each character of ``PUNCTUATION`` is deleted when it
   is next to a space in the answer or the answer has a digit-comma-digit group,
   and replaced by a space otherwise; then periods not followed by a digit are
   deleted (at most 32 of them: the official code passes ``re.UNICODE``, 32, as
   ``re.sub``'s count);
3. ``process_digit_article``: lower-case, split on blanks, number words
   ``none``/``zero``..``ten`` -> digits (``MANUAL_MAP``), articles ``a an the``
   dropped, then the ``CONTRACTIONS`` map (``dont`` -> ``don't``), joined by single
   spaces.

``variant`` picks which version of the official code to follow, since they differ
in when steps 2-3 apply:

* ``"official"`` (default): the current code (since commit a013f00, 2021-03-11):
  step 1 on the human answers and on the prediction; steps 2-3 on both only when
  the human answers are not unanimous (so if all humans wrote ``two``, the
  prediction ``2`` scores 0, while with 3 ``two`` among other answers it matches);
* ``"legacy"``: the 2016-2021 code (commit 458a8b2), as vendored by BLIP, LAVIS
  and other VQA repositories: steps 1-3 always on the prediction; step 2 only on
  the human answers, only when they are not unanimous, and no step 1 on them.

Known deviations from the official code, all outside its intended use:

* leave-one-out is by position; the official code drops every human answer record
  equal to the left-out one (``item != gtAnsDatum``), which is the same thing on
  the official files because every record carries a distinct ``answer_id``;
* digits in the regexes are ASCII ``[0-9]``, as Python 2's ``re`` without
  ``re.UNICODE``; Python 3 ports (``\\d``) also match other decimal digits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from crossget_cli.errors import CrossGetError

__all__ = [
    "ANSWER_TYPES",
    "ARTICLES",
    "CONTRACTIONS",
    "MANUAL_MAP",
    "PUNCTUATION",
    "load_vqa_annotations",
    "load_vqa_questions",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "question_accuracy",
    "vqa_accuracy",
]

ANSWER_TYPES = ("yes/no", "number", "other")

#: Contractions written without apostrophe -> with (official table, verbatim: keys
#: with capitals never match, answers are lower-cased first).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

#: Number words -> digits (official ``manualMap``).
MANUAL_MAP: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES = ("a", "an", "the")

#: Characters process_punctuation removes (official ``punct``; no apostrophe, colon or period).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

_COMMA_IN_NUMBER = re.compile(r"[0-9],[0-9]")
# Official: re.compile("(?!<=\\d)(\\.)(?!\\d)"); "(?!<=\\d)" is a (typo) lookahead that
# always holds in front of a period, leaving "a period not followed by a digit".
_PERIOD = re.compile(r"\.(?![0-9])")
_PERIOD_MAX = 32  # re.UNICODE, passed by the official code as re.sub's count


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation``."""
    out = text
    has_number_comma = _COMMA_IN_NUMBER.search(text) is not None
    for p in PUNCTUATION:
        if has_number_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX)


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """The full normalization of an answer (steps 1-3 of the module docstring)."""
    return process_digit_article(process_punctuation(_clean(text)))


def question_accuracy(prediction: str, answers: list[str], variant: str = "official") -> float:
    """Accuracy (0..1) of one predicted answer against the human answers."""
    if variant == "official":
        humans = [_clean(a) for a in answers]
        pred = _clean(prediction)
        if len(set(humans)) > 1:
            humans = [process_digit_article(process_punctuation(a)) for a in humans]
            pred = process_digit_article(process_punctuation(pred))
    elif variant == "legacy":
        pred = normalize_answer(prediction)
        humans = list(answers)
        if len(set(humans)) > 1:
            humans = [process_punctuation(a) for a in humans]
    else:
        raise CrossGetError(f"unknown VQA evaluation variant {variant!r}", "use 'official' or 'legacy'")
    matches = sum(h == pred for h in humans)
    per_subset = [min(1, float(matches - (h == pred)) / 3) for h in humans]
    return float(sum(per_subset)) / len(per_subset)


def _round(value: float, ndigits: int | None) -> float:
    if ndigits is None:
        return value
    return float(Decimal(value).quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP))


def _mean100(values: list[float], ndigits: int | None) -> float:
    return _round(100 * float(sum(values)) / len(values), ndigits)


def _predictions(predictions: Any) -> dict[Hashable, str]:
    if isinstance(predictions, Mapping):
        items = list(predictions.items())
    elif isinstance(predictions, (list, tuple)):
        items = []
        for rec in predictions:
            if not isinstance(rec, Mapping) or "question_id" not in rec or "answer" not in rec:
                raise CrossGetError(
                    "a prediction record must be a dict with 'question_id' and 'answer'",
                    "pass {question_id: answer} or the official results format [{'question_id': ..., 'answer': ...}]",
                )
            items.append((rec["question_id"], rec["answer"]))
    else:
        raise CrossGetError(
            f"predictions must be a dict or a list of records, got {type(predictions).__name__}",
            "pass {question_id: answer}",
        )
    if not items:
        raise CrossGetError("no predictions to score", "pass at least one {question_id: answer}")
    out: dict[Hashable, str] = {}
    for qid, ans in items:
        if not isinstance(ans, str):
            raise CrossGetError(
                f"the prediction for question {qid!r} is a {type(ans).__name__}, not a string", "answers must be strings"
            )
        if qid in out:
            raise CrossGetError(f"question {qid!r} has more than one prediction", "give one answer per question")
        out[qid] = ans
    return out


def _check_record(rec: Any, where: str) -> None:
    if not isinstance(rec, Mapping) or "question_id" not in rec:
        raise CrossGetError(
            f"{where}: an annotation record without 'question_id'",
            "VQAv2 records look like {'question_id': ..., 'answers': [{'answer': ...}, ...], 'answer_type': ...}",
        )
    answers = rec.get("answers")
    if not isinstance(answers, list) or not answers:
        raise CrossGetError(
            f"{where}: question {rec['question_id']!r} has no 'answers' list",
            "each record needs its human answers: 'answers': [{'answer': ...}, ...] (10 in VQAv2)",
        )
    for a in answers:
        text = a.get("answer") if isinstance(a, Mapping) else a
        if not isinstance(text, str):
            raise CrossGetError(
                f"{where}: question {rec['question_id']!r} has an answer that is not a string",
                "answers are {'answer': str, ...} records (or plain strings)",
            )


def _annotations(annotations: Any) -> dict[Hashable, Mapping]:
    if isinstance(annotations, Mapping) and "annotations" in annotations:  # the raw official JSON
        annotations = annotations["annotations"]
    if isinstance(annotations, Mapping):
        records = list(annotations.values())
    elif isinstance(annotations, (list, tuple)):
        records = list(annotations)
    else:
        raise CrossGetError(
            f"annotations must be a list or dict of records, got {type(annotations).__name__}",
            "use load_vqa_annotations(path) on the official annotation file",
        )
    if not records:
        raise CrossGetError("no VQA annotations", "use load_vqa_annotations(path) on the official annotation file")
    out: dict[Hashable, Mapping] = {}
    for rec in records:
        _check_record(rec, "annotations")
        out[rec["question_id"]] = rec
    return out


def vqa_accuracy(
    predictions: Mapping[Hashable, str] | list[Mapping[str, Any]],
    annotations: Mapping[Hashable, Mapping] | list[Mapping],
    *,
    variant: str = "official",
    ndigits: int | None = 2,
    require_all: bool = False,
) -> dict[str, Any]:
    """VQAv2 accuracy of ``predictions`` ({question_id: answer}, or the official
    results list) against ``annotations`` (records with ``question_id``,
    ``answers`` and ``answer_type``, as a list, a dict keyed by question id, or the
    whole official annotation JSON).

    Scores the predicted questions; ``require_all=True`` also demands a prediction
    for every annotated question (as the official ``loadRes`` does).  Returns
    ``overall``, ``per_answer_type``, ``per_question_type`` (when the records have
    ``question_type``), ``per_question`` (all x100, rounded to ``ndigits``),
    ``n_questions`` and ``n_unanswered`` (annotated questions without prediction).
    """
    if variant not in ("official", "legacy"):
        raise CrossGetError(f"unknown VQA evaluation variant {variant!r}", "use 'official' or 'legacy'")
    preds = _predictions(predictions)
    gts = _annotations(annotations)
    missing = [qid for qid in preds if qid not in gts]
    if missing:
        qid = missing[0]
        by_str = {str(k): k for k in gts}
        hint = (
            f"the annotations have {by_str[str(qid)]!r} ({type(by_str[str(qid)]).__name__}) but the prediction key is "
            f"{type(qid).__name__}: use the same id type (JSON object keys are strings)"
            if str(qid) in by_str
            else "predict only questions of the annotated split (e.g. val2014 annotations for val2014 questions)"
        )
        raise CrossGetError(f"{len(missing)} predicted question(s) have no annotation, e.g. {qid!r}", hint)
    unanswered = len(gts) - len(preds)
    if require_all and unanswered:
        raise CrossGetError(
            f"{unanswered} annotated question(s) have no prediction",
            "answer every question, or call with require_all=False to score the predicted subset",
        )
    per_question: dict[Hashable, float] = {}
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    with_question_type = True
    for qid, pred in preds.items():
        rec = gts[qid]
        if "answer_type" not in rec:
            raise CrossGetError(
                f"question {qid!r} has no 'answer_type'", "VQAv2 records carry 'answer_type' ('yes/no', 'number' or 'other')"
            )
        answers = [a["answer"] if isinstance(a, Mapping) else a for a in rec["answers"]]
        acc = question_accuracy(pred, answers, variant)
        per_question[qid] = acc
        by_answer_type.setdefault(rec["answer_type"], []).append(acc)
        if "question_type" in rec:
            by_question_type.setdefault(rec["question_type"], []).append(acc)
        else:
            with_question_type = False
    result: dict[str, Any] = {
        "overall": _mean100(list(per_question.values()), ndigits),
        "per_answer_type": {t: _mean100(v, ndigits) for t, v in by_answer_type.items()},
    }
    if with_question_type:
        result["per_question_type"] = {t: _mean100(v, ndigits) for t, v in by_question_type.items()}
    result["per_question"] = {qid: _round(100 * acc, ndigits) for qid, acc in per_question.items()}
    result["n_questions"] = len(per_question)
    result["n_unanswered"] = unanswered
    return result


def _load_json(path: str | Path, what: str, hint: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise CrossGetError(f"{what} not found: {p}", hint)
    try:
        with p.open(encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CrossGetError(f"{what} {p} is not valid JSON: {exc}", hint) from exc


_DOWNLOAD = "download the official VQAv2 files from https://visualqa.org/download.html"


def load_vqa_annotations(path: str | Path) -> dict[Hashable, dict]:
    """The official VQAv2 annotation file (e.g. ``v2_mscoco_val2014_annotations.json``)
    as {question_id: record}; a plain list of records is accepted too."""
    data = _load_json(path, "VQA annotation file", _DOWNLOAD + " (v2_Annotations_*_mscoco.zip)")
    if isinstance(data, dict) and "annotations" not in data and "questions" in data:
        raise CrossGetError(
            f"{path} is a VQA questions file, not an annotation file",
            "load it with load_vqa_questions; annotations are v2_mscoco_*_annotations.json",
        )
    records = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise CrossGetError(f"{path} has no 'annotations' list", "expected the official v2_mscoco_*_annotations.json")
    out: dict[Hashable, dict] = {}
    for rec in records:
        _check_record(rec, str(path))
        if rec["question_id"] in out:
            raise CrossGetError(f"{path}: question {rec['question_id']!r} is annotated twice", "use the official file unchanged")
        out[rec["question_id"]] = rec
    if not out:
        raise CrossGetError(f"{path} holds no annotations", "expected the official v2_mscoco_*_annotations.json")
    return out


def load_vqa_questions(path: str | Path) -> dict[Hashable, dict]:
    """The official VQAv2 questions file (e.g.
    ``v2_OpenEnded_mscoco_val2014_questions.json``) as {question_id: record}
    (``image_id``, ``question``, ``question_id``); a plain list is accepted too."""
    data = _load_json(path, "VQA questions file", _DOWNLOAD + " (v2_Questions_*_mscoco.zip)")
    if isinstance(data, dict) and "questions" not in data and "annotations" in data:
        raise CrossGetError(
            f"{path} is a VQA annotation file, not a questions file",
            "load it with load_vqa_annotations; questions are v2_OpenEnded_mscoco_*_questions.json",
        )
    records = data.get("questions") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise CrossGetError(f"{path} has no 'questions' list", "expected the official v2_OpenEnded_mscoco_*_questions.json")
    out: dict[Hashable, dict] = {}
    for rec in records:
        if not isinstance(rec, Mapping) or not {"question_id", "question", "image_id"} <= rec.keys():
            raise CrossGetError(
                f"{path}: a question record without 'question_id', 'question' and 'image_id'",
                "expected the official v2_OpenEnded_mscoco_*_questions.json",
            )
        if not isinstance(rec["question"], str):
            raise CrossGetError(f"{path}: question {rec['question_id']!r} is not a string", "use the official file unchanged")
        if rec["question_id"] in out:
            raise CrossGetError(f"{path}: question {rec['question_id']!r} appears twice", "use the official file unchanged")
        out[rec["question_id"]] = dict(rec)
    if not out:
        raise CrossGetError(f"{path} holds no questions", "expected the official v2_OpenEnded_mscoco_*_questions.json")
    return out
