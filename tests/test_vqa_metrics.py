"""VQAv2 accuracy: hand-computed cases, the official normalization tables, and
agreement with the official vqaEval.py (fixture made by
tests/data/metrics/make_vqa_fixture.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossget_cli.errors import CrossGetError
from crossget_cli.metrics.vqa import (
    CONTRACTIONS,
    MANUAL_MAP,
    load_vqa_annotations,
    load_vqa_questions,
    normalize_answer,
    process_punctuation,
    question_accuracy,
    vqa_accuracy,
)

DATA = Path(__file__).parent / "data" / "metrics"


def record(qid, answers, answer_type="other", question_type=None):
    rec = {
        "question_id": qid,
        "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
        "answer_type": answer_type,
    }
    if question_type:
        rec["question_type"] = question_type
    return rec


# --- per-question accuracy by hand --------------------------------------------------


def test_three_of_ten_say_two_and_the_model_says_2():
    # Humans disagree, so both sides are normalized: "two" -> "2" (3 matches).
    # Leaving out one of the 3 "two": 2 matches -> 2/3 (3 subsets); leaving out any
    # other answer: 3 matches -> 1 (7 subsets).  (3 * 2/3 + 7 * 1) / 10 = 0.9.
    answers = ["two", "two", "two", "three", "three", "3", "three", "four", "three", "3"]
    assert question_accuracy("2", answers) == pytest.approx(0.9)
    assert vqa_accuracy({1: "2"}, [record(1, answers, "number")])["overall"] == 90.0
    # The 2016-2021 code (BLIP/LAVIS) only strips punctuation from human answers: no match.
    assert question_accuracy("2", answers, variant="legacy") == 0.0
    assert question_accuracy("two", answers, variant="legacy") == 0.0  # the prediction becomes "2"
    # "three" becomes "3", which only the two humans who wrote "3" match.
    assert question_accuracy("three", answers, variant="legacy") == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)


@pytest.mark.parametrize(
    "matches, expected",
    [
        (0, 0.0),
        (1, 9 * (1 / 3) / 10),  # the 9 subsets that keep it: 1/3 each
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),
        (3, (3 * (2 / 3) + 7 * 1) / 10),
        (4, 1.0),  # at least 3 matches in every subset
        (10, 1.0),
    ],
)
def test_leave_one_out_average(matches, expected):
    answers = ["cat"] * matches + [f"other{i}" for i in range(10 - matches)]
    assert question_accuracy("cat", answers) == pytest.approx(expected)


def test_unanimous_humans_are_not_normalized_in_the_official_code():
    # All ten wrote "two": no normalization on either side, so "2" and "Two" miss.
    answers = ["two"] * 10
    assert question_accuracy("two", answers) == 1.0
    assert question_accuracy(" two\n", answers) == 1.0  # whitespace is still cleaned
    assert question_accuracy("2", answers) == 0.0
    assert question_accuracy("Two", answers) == 0.0
    # The legacy code always normalizes the prediction, never unanimous human answers:
    # even "two" itself becomes "2" and misses (the bug fixed in 2021).
    assert question_accuracy("two", answers, variant="legacy") == 0.0
    assert question_accuracy("Yes.", ["yes"] * 10, variant="legacy") == 1.0


# --- normalization tables -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Two dogs", "2 dogs"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # manualMap stops at ten
        ("the dog", "dog"),
        ("A red apple", "red apple"),
        ("an owl", "owl"),
        ("dont", "don't"),
        ("whats up", "what's up"),
        ("yall", "y'all"),
        ("twas", "'twas"),
        ("somebody'd", "somebodyd"),  # sic, in the official table
        ("yes!", "yes"),
        ("Yes.", "yes"),
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted, not spaced
        ("red, white", "red white"),  # ", " -> deleted
        ("red,white", "red white"),  # no space around it -> replaced by a space
        ("t-shirt", "t shirt"),
        ("x/y", "x y"),
        ("(blue)", "blue"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("a.m.", "am"),
        ("Dr. Who", "dr who"),
        ("it's", "it's"),  # the apostrophe is not in the punctuation list
        ("\tyes\n", "yes"),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_tables_are_the_official_ones():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["youll"] == "you'll" and CONTRACTIONS["oclock"] == "o'clock"
    assert MANUAL_MAP == {
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


def test_only_32_periods_are_stripped():
    # The official code passes re.UNICODE (32) as re.sub's count.
    assert process_punctuation("a." * 40) == "a" * 32 + "a." * 8


# --- aggregate ------------------------------------------------------------------------


def test_per_answer_and_question_type_breakdown():
    anns = [
        record(1, ["yes"] * 10, "yes/no", "is the"),
        record(2, ["no"] * 10, "yes/no", "is the"),
        record(3, ["2"] * 3 + ["3"] * 7, "number", "how many"),
        record(4, ["red"] * 2 + ["blue"] * 8, "other", "what color"),
    ]
    preds = {1: "yes", 2: "yes", 3: "2", 4: "red"}
    out = vqa_accuracy(preds, anns)
    q3 = (3 * (2 / 3) + 7) / 10
    q4 = (2 * (1 / 3) + 8 * (2 / 3)) / 10
    assert out["per_question"] == {1: 100.0, 2: 0.0, 3: round(100 * q3, 2), 4: round(100 * q4, 2)}
    assert out["per_answer_type"] == {"yes/no": 50.0, "number": 90.0, "other": 60.0}
    assert out["per_question_type"] == {"is the": 50.0, "how many": 90.0, "what color": 60.0}
    assert out["overall"] == round(100 * (1 + 0 + q3 + q4) / 4, 2)
    assert out["n_questions"] == 4 and out["n_unanswered"] == 0


def test_rounding_is_python2_half_away_from_zero():
    anns = [record(i, ["yes"] * 10, "yes/no") for i in range(16)]
    preds = {i: ("yes" if i == 0 else "no") for i in range(16)}
    assert vqa_accuracy(preds, anns, ndigits=None)["overall"] == 6.25
    assert vqa_accuracy(preds, anns, ndigits=1)["overall"] == 6.3  # Python 3's round() would give 6.2


def test_matches_the_official_code():
    data = json.loads((DATA / "vqa_official_expected.json").read_text())
    preds = {int(k): v for k, v in data["predictions"].items()}
    for variant in ("official", "legacy"):
        ours = vqa_accuracy(preds, data["annotations"], variant=variant)
        official = data[variant]
        assert ours["overall"] == official["accuracy"]["overall"]
        assert ours["per_answer_type"] == official["accuracy"]["perAnswerType"]
        assert ours["per_question_type"] == official["accuracy"]["perQuestionType"]
        assert {str(k): v for k, v in ours["per_question"].items()} == official["evalQA"]


def test_input_forms_and_subsets():
    anns = [record(1, ["yes"] * 10, "yes/no"), record(2, ["no"] * 10, "yes/no")]
    as_list = vqa_accuracy([{"question_id": 1, "answer": "yes"}], anns)
    assert as_list["overall"] == 100.0 and as_list["n_unanswered"] == 1
    assert "per_question_type" not in as_list  # the records have no question_type
    assert vqa_accuracy({1: "yes"}, {"annotations": anns})["overall"] == 100.0  # the raw official JSON
    assert vqa_accuracy({1: "yes"}, {a["question_id"]: a for a in anns})["overall"] == 100.0
    assert vqa_accuracy({1: "yes"}, [{"question_id": 1, "answers": ["yes"] * 10, "answer_type": "yes/no"}])["overall"] == 100.0
    with pytest.raises(CrossGetError, match="1 annotated question"):
        vqa_accuracy({1: "yes"}, anns, require_all=True)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preds, anns, message",
    [
        ({}, [record(1, ["a"] * 10)], "no predictions"),
        ({5: "yes"}, [record(1, ["a"] * 10)], "have no annotation"),
        ({"1": "yes"}, [record(1, ["a"] * 10)], "have no annotation"),
        ({1: 3}, [record(1, ["a"] * 10)], "not a string"),
        (
            [{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}],
            [record(1, ["a"] * 10)],
            "more than one prediction",
        ),
        ([{"question_id": 1}], [record(1, ["a"] * 10)], "'question_id' and 'answer'"),
        ("yes", [record(1, ["a"] * 10)], "dict or a list"),
        ({1: "yes"}, [], "no VQA annotations"),
        ({1: "yes"}, [{"question_id": 1, "answer_type": "other"}], "no 'answers' list"),
        ({1: "yes"}, [{"question_id": 1, "answers": [], "answer_type": "other"}], "no 'answers' list"),
        ({1: "yes"}, [{"answers": ["a"]}], "without 'question_id'"),
        ({1: "yes"}, [{"question_id": 1, "answers": [{"answer": None}], "answer_type": "other"}], "not a string"),
        ({1: "yes"}, [{"question_id": 1, "answers": ["a"] * 10}], "no 'answer_type'"),
    ],
)
def test_bad_inputs(preds, anns, message):
    with pytest.raises(CrossGetError, match=message) as e:
        vqa_accuracy(preds, anns)
    assert e.value.hint


def test_string_keys_get_a_hint():
    with pytest.raises(CrossGetError) as e:
        vqa_accuracy({"1": "yes"}, [record(1, ["a"] * 10)])
    assert "same id type" in e.value.hint


def test_unknown_variant():
    with pytest.raises(CrossGetError, match="variant"):
        vqa_accuracy({1: "yes"}, [record(1, ["yes"] * 10)], variant="v1")


# --- loaders ----------------------------------------------------------------------------


def write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_load_official_files(tmp_path):
    anns = {"info": {}, "data_subtype": "val2014", "annotations": [record(11, ["yes"] * 10, "yes/no", "is the")]}
    questions = {"info": {}, "task_type": "Open-Ended", "questions": [{"image_id": 9, "question": "Is it?", "question_id": 11}]}
    loaded = load_vqa_annotations(write(tmp_path / "a.json", anns))
    assert list(loaded) == [11] and loaded[11]["answer_type"] == "yes/no"
    assert load_vqa_questions(write(tmp_path / "q.json", questions)) == {
        11: {"image_id": 9, "question": "Is it?", "question_id": 11}
    }
    assert vqa_accuracy({11: "yes"}, loaded)["overall"] == 100.0


def test_loader_errors(tmp_path):
    with pytest.raises(CrossGetError, match="not found") as e:
        load_vqa_annotations(tmp_path / "missing.json")
    assert "visualqa.org" in e.value.hint
    with pytest.raises(CrossGetError, match="not found"):
        load_vqa_questions(tmp_path / "missing.json")
    with pytest.raises(CrossGetError, match="not valid JSON"):
        load_vqa_annotations(write(tmp_path / "bad.json", "{not json"))
    with pytest.raises(CrossGetError, match="questions file"):
        load_vqa_annotations(write(tmp_path / "q.json", {"questions": []}))
    with pytest.raises(CrossGetError, match="annotation file"):
        load_vqa_questions(write(tmp_path / "a.json", {"annotations": []}))
    with pytest.raises(CrossGetError, match="no 'annotations' list"):
        load_vqa_annotations(write(tmp_path / "x.json", {"foo": 1}))
    with pytest.raises(CrossGetError, match="holds no annotations"):
        load_vqa_annotations(write(tmp_path / "e.json", {"annotations": []}))
    with pytest.raises(CrossGetError, match="annotated twice"):
        load_vqa_annotations(write(tmp_path / "d.json", [record(1, ["a"]), record(1, ["b"])]))
    with pytest.raises(CrossGetError, match="no 'answers' list"):
        load_vqa_annotations(write(tmp_path / "n.json", [{"question_id": 1}]))
    with pytest.raises(CrossGetError, match="'question_id', 'question' and 'image_id'"):
        load_vqa_questions(write(tmp_path / "qq.json", {"questions": [{"question_id": 1}]}))
