"""Caption metrics against pycocoevalcap 1.2 (fixtures made by
tests/data/metrics/make_caption_fixture.py with the real Java PTBTokenizer) and
against hand-worked cases."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest

from crossget_cli.errors import CrossGetError
from crossget_cli.metrics import java_metrics
from crossget_cli.metrics.caption import bleu, caption_scores, cider_d, rouge_l
from crossget_cli.metrics.ptb_tokenizer import ptb_tokenize, tokenize_caption, tokenize_captions

DATA = Path(__file__).parent / "data" / "metrics"
COCO_NAMES = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]


@pytest.fixture(scope="module")
def coco():
    return json.loads((DATA / "coco_captions_input.json").read_text())


@pytest.fixture(scope="module")
def expected():
    return json.loads((DATA / "coco_captions_expected.json").read_text())


@pytest.fixture(scope="module")
def ptb_cases():
    return json.loads((DATA / "ptb_tokenizer_cases.json").read_text(encoding="utf-8"))["cases"]


# --- tokenizer vs the Java PTBTokenizer -------------------------------------------------


def test_tokenization_matches_java_on_the_caption_fixture(coco, expected):
    assert tokenize_captions(coco["refs"]) == expected["tokenized_refs"]
    hyps = tokenize_captions({k: [h] for k, h in coco["hyps"].items()})
    assert {k: v[0] for k, v in hyps.items()} == expected["tokenized_hyps"]
    # One hypothesis at a time gives the same here (no caption depends on the next one).
    assert {k: tokenize_caption(h) for k, h in coco["hyps"].items()} == expected["tokenized_hyps"]


def test_raw_ptb_tokens_match_java_on_hard_cases(ptb_cases):
    lines = ptb_tokenize("\n".join(c["text"] for c in ptb_cases))
    assert len(lines) == len(ptb_cases)
    for case, line in zip(ptb_cases, lines):
        assert " ".join(line) == case["raw"], case["text"]


def test_final_tokenization_matches_pycocoevalcap_on_hard_cases(ptb_cases):
    out = tokenize_captions({i: [c["text"]] for i, c in enumerate(ptb_cases)})
    for i, case in enumerate(ptb_cases):
        assert out[i] == [case["final"]], case["text"]


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("A man's dog doesn't like the \"big\" (red) ball.", "a man 's dog does n't like the big -lrb- red -rrb- ball"),
        ("Two dogs play in the snow-covered yard, don't they?", "two dogs play in the snow-covered yard do n't they"),
        ("The kids' toys -- a 10-year-old's -- cost $5.", "the kids toys a 10-year-old 's cost $ 5"),
        ("I can't... I cannot; we're gonna win!", "i ca n't i can not we 're gon na win"),
        ("A sign on St. Mark's Ave. in the U.S. reads 'STOP'.", "a sign on st. mark 's ave. in the u.s. reads stop"),
        ("“Curly” quotes — and an en–dash", "curly quotes and an en dash"),
        ("", ""),
    ],
)
def test_tokenize_caption_examples(text, tokens):
    assert tokenize_caption(text) == tokens


def test_newlines_inside_a_caption_are_spaces():
    assert tokenize_caption("a dog\non a\r\nbeach.") == "a dog on a beach"
    assert tokenize_captions({1: ["a dog\nrunning", "a cat"]}) == {1: ["a dog running", "a cat"]}


# --- scores vs pycocoevalcap ------------------------------------------------------------


def test_scores_match_pycocoevalcap_end_to_end(coco, expected):
    ours = caption_scores(coco["refs"], coco["hyps"])
    assert list(ours) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    for name in COCO_NAMES:
        assert ours[name] == pytest.approx(expected["scores"][name], abs=1e-6), name


def test_scores_match_pycocoevalcap_on_java_tokenized_text(expected):
    refs, hyps = expected["tokenized_refs"], expected["tokenized_hyps"]
    ours = caption_scores(refs, hyps, tokenize=False)
    for name in COCO_NAMES:
        assert ours[name] == pytest.approx(expected["scores"][name], abs=1e-12), name
    b = bleu(refs, hyps, tokenize=False)
    assert b == pytest.approx([expected["scores"][f"Bleu_{i}"] for i in range(1, 5)], abs=1e-12)
    assert cider_d(refs, hyps, tokenize=False) == pytest.approx(expected["scores"]["CIDEr"], abs=1e-12)
    assert rouge_l(refs, hyps, tokenize=False) == pytest.approx(expected["scores"]["ROUGE_L"], abs=1e-12)


def test_stress_set_matches_pycocoevalcap(expected):
    # Identical, very short (brevity penalty), repeated-word (clipping) and empty
    # hypotheses, 1 to 6 references per image.
    stress = expected["stress"]
    ours = caption_scores(stress["refs"], stress["hyps"], tokenize=False)
    for name in COCO_NAMES:
        assert ours[name] == pytest.approx(stress["scores"][name], abs=1e-12), name


def test_only_hypothesis_images_are_scored(expected):
    refs, hyps = dict(expected["tokenized_refs"]), expected["tokenized_hyps"]
    refs["extra-image"] = ["a reference nobody captioned"]
    assert caption_scores(refs, hyps, tokenize=False) == caption_scores(expected["tokenized_refs"], hyps, tokenize=False)


# --- hand-worked cases ------------------------------------------------------------------


def test_bleu_of_an_identical_hypothesis_is_one():
    b = bleu({1: ["a man riding a red bike"]}, {1: "a man riding a red bike"}, tokenize=False)
    assert b == pytest.approx([1.0] * 4, abs=1e-9)


def test_bleu_clipping_and_brevity_penalty_by_hand():
    # "the" x4 against one reference with "the" x2: clipped unigram precision 2/4;
    # hypothesis 4 words, reference 6 -> BP = exp(1 - 6/4).
    b = bleu({1: ["the cat is on the mat"]}, {1: "the the the the"}, tokenize=False)
    assert b[0] == pytest.approx(0.5 * math.exp(1 - 6 / 4), rel=1e-9)
    assert b[1] < 1e-7  # no bigram matches: only the 1e-15 smoothing is left


def test_bleu_closest_reference_length_prefers_the_shorter_on_a_tie():
    # Hypothesis of 4 words, references of 3 and 5 words: both 1 away, pycocoevalcap
    # takes 3, so there is no brevity penalty and BLEU-1 is the plain precision 3/4.
    b = bleu({1: ["a b c", "a b x y z"]}, {1: "a b c d"}, tokenize=False)
    assert b[0] == pytest.approx(3 / 4, rel=1e-9)


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5: P = R = 5/6 -> F = 5/6.
    assert rouge_l({1: ["the cat is on the mat"]}, {1: "the cat sat on the mat"}, tokenize=False) == pytest.approx(5 / 6)
    # LCS = "police the gunman" = 3: P = 3/5, R = 3/4, F = (1 + b^2) P R / (R + b^2 P), b = 1.2.
    p, r, b2 = 3 / 5, 3 / 4, 1.2**2
    got = rouge_l({1: ["police kill the gunman"]}, {1: "police killed the gunman yesterday"}, tokenize=False)
    assert got == pytest.approx((1 + b2) * p * r / (r + b2 * p))
    # Best precision and best recall are taken over the references separately.
    # Precision 3/3 comes from the long reference, recall 2/2 from the short one.
    assert rouge_l({1: ["a b", "a b c d e f"]}, {1: "a b c"}, tokenize=False) == pytest.approx(1.0)


def test_cider_by_hand():
    # One image: every n-gram is in all (1) documents, idf = log(1/1) = 0.
    assert cider_d({1: ["a red car"]}, {1: "a red car"}, tokenize=False) == 0.0
    # Two images, each hypothesis equal to its only reference: cosine 1 for n = 1..3
    # (n = 4 has no 4-gram: 0), no length penalty -> 10 * (1 + 1 + 1 + 0) / 4.
    refs = {1: ["a red car"], 2: ["a blue boat"]}
    assert cider_d(refs, {1: "a red car", 2: "a blue boat"}, tokenize=False) == pytest.approx(7.5)


def test_tokenize_flag():
    refs = {1: ["A dog."]}
    assert bleu(refs, {1: "a dog"})[0] == pytest.approx(1.0, abs=1e-9)
    assert bleu(refs, {1: "a dog"}, tokenize=False)[0] == pytest.approx(0.0, abs=1e-9)  # "A" != "a", "dog." != "dog"


# --- errors -----------------------------------------------------------------------------


def test_hypothesis_without_references_is_an_error():
    with pytest.raises(CrossGetError, match="hypothesis for image 7 has no references") as e:
        caption_scores({1: ["a dog"]}, {7: "a dog"})
    assert e.value.hint
    with pytest.raises(CrossGetError, match="same id type") as e:
        caption_scores({"1": ["a dog"]}, {1: "a dog"})


@pytest.mark.parametrize(
    "refs, hyps, message",
    [
        ({1: ["a dog"]}, {}, "no hypotheses"),
        ({}, {1: "a dog"}, "no reference captions"),
        ([["a dog"]], {1: "a dog"}, "dicts keyed by image id"),
        ({1: []}, {1: "a dog"}, "empty list of references"),
        ({1: "a dog"}, {1: "a dog"}, "must be a list of strings"),
        ({1: ["a dog", 3]}, {1: "a dog"}, "not a string"),
        ({1: ["a dog"]}, {1: ["a dog"]}, "not a string"),
        ({1: ["a dog"]}, {1: None}, "not a string"),
    ],
)
def test_bad_inputs(refs, hyps, message):
    with pytest.raises(CrossGetError, match=message):
        caption_scores(refs, hyps)


def test_tokenize_caption_rejects_non_strings():
    with pytest.raises(CrossGetError, match="must be a string"):
        tokenize_caption(None)


def test_meteor_spice_without_pycocoevalcap(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        java_metrics.importlib.util, "find_spec", lambda name, *a: None if name == "pycocoevalcap" else real(name, *a)
    )
    with pytest.raises(CrossGetError, match="pycocoevalcap") as e:
        caption_scores({1: ["a dog"]}, {1: "a dog"}, meteor_spice=True)
    assert "pip install pycocoevalcap" in e.value.hint and "Java" in e.value.hint


def test_meteor_spice_without_java(monkeypatch):
    monkeypatch.setattr(java_metrics.shutil, "which", lambda name: None)
    with pytest.raises(CrossGetError, match="Java runtime") as e:
        caption_scores({1: ["a dog"]}, {1: "a dog"}, meteor_spice=True)
    assert "java" in e.value.hint.lower()


@pytest.mark.skipif(
    importlib.util.find_spec("pycocoevalcap") is None or shutil.which("java") is None,
    reason="METEOR needs pycocoevalcap and Java",
)
def test_meteor_through_pycocoevalcap(coco, expected, monkeypatch):
    from pycocoevalcap.spice import spice

    class NoSpice:  # SPICE downloads CoreNLP models on first use; not in a unit test
        def compute_score(self, gts, res):
            return 0.0, []

    monkeypatch.setattr(spice, "Spice", NoSpice)
    ours = caption_scores(coco["refs"], coco["hyps"], meteor_spice=True)
    assert ours["METEOR"] == pytest.approx(expected["scores"]["METEOR"], abs=1e-6)
    assert set(ours) == set(COCO_NAMES) | {"METEOR", "SPICE"}
