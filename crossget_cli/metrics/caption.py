"""COCO captioning metrics in plain Python: BLEU-1..4, CIDEr (CIDEr-D), ROUGE-L,
on captions PTB-tokenized first as the COCO caption evaluation does
(:mod:`.ptb_tokenizer`).

The numbers match the COCO caption evaluation code (``pycocoevalcap``, the code
behind the COCO server): :func:`bleu` is ``Bleu(4)`` (corpus BLEU, "closest"
reference length, its 1e-9 / 1e-15 smoothing constants), :func:`cider_d` is
``Cider()`` (CIDEr-D: n = 1..4, sigma = 6, clipped tf-idf, Gaussian length
penalty, x10, document frequencies over the references of the evaluated images;
the COCO server calls it "CIDEr"), :func:`rouge_l` is ``Rouge()`` (LCS F-measure
with beta = 1.2, the best precision and recall over the references, mean over
images).  METEOR and SPICE have no pure-Python equivalent: :func:`caption_scores`
runs them through ``pycocoevalcap`` and Java when asked to (:mod:`.java_metrics`).

Which images are scored: those of ``hyps``.  Every one must have references;
references of images without a hypothesis are ignored (as with the usual
``COCOEvalCap.params['image_id'] = cocoRes.getImgIds()``), and CIDEr's document
frequencies come from the references of the scored images only, as in
pycocoevalcap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

from crossget_cli.errors import CrossGetError
from crossget_cli.metrics.java_metrics import java_scores
from crossget_cli.metrics.ptb_tokenizer import tokenize_captions

__all__ = ["bleu", "caption_scores", "cider_d", "rouge_l"]

# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _checked(refs: Mapping[Hashable, Sequence[str]], hyps: Mapping[Hashable, str]) -> tuple[dict, dict]:
    """Validated ``(refs, hyps)`` restricted to the hypotheses' images, in the
    hypotheses' order."""
    if not isinstance(refs, Mapping) or not isinstance(hyps, Mapping):
        raise CrossGetError(
            "references and hypotheses must be dicts keyed by image id",
            "refs: {image_id: [caption, ...]}, hyps: {image_id: caption}",
        )
    if not hyps:
        raise CrossGetError("no hypotheses to score", "pass at least one generated caption: {image_id: caption}")
    if not refs:
        raise CrossGetError("no reference captions", "pass the ground-truth captions: {image_id: [caption, ...]}")
    out_refs, out_hyps = {}, {}
    for key, hyp in hyps.items():
        if key not in refs:
            by_str = {str(k): k for k in refs}
            hint = (
                f"the references have {by_str[str(key)]!r} ({type(by_str[str(key)]).__name__}) but the hypothesis id is "
                f"{type(key).__name__}: use the same id type on both sides (JSON object keys are strings)"
                if str(key) in by_str
                else "every captioned image needs its ground-truth captions (COCO: about 5 per image)"
            )
            raise CrossGetError(f"hypothesis for image {key!r} has no references", hint)
        if not isinstance(hyp, str):
            hint = "give one caption string per image" if isinstance(hyp, (list, tuple)) else "captions must be strings"
            raise CrossGetError(f"hypothesis for image {key!r} is a {type(hyp).__name__}, not a string", hint)
        rs = refs[key]
        if isinstance(rs, str) or not isinstance(rs, Iterable):
            raise CrossGetError(f"references of image {key!r} must be a list of strings", "refs: {image_id: [caption, ...]}")
        rs = list(rs)
        if not rs:
            raise CrossGetError(f"image {key!r} has an empty list of references", "give at least one reference caption per image")
        for r in rs:
            if not isinstance(r, str):
                raise CrossGetError(
                    f"a reference of image {key!r} is a {type(r).__name__}, not a string", "captions must be strings"
                )
        out_refs[key] = rs
        out_hyps[key] = hyp
    return out_refs, out_hyps


def _prepared(refs, hyps, tokenize: bool) -> tuple[dict, dict]:
    refs, hyps = _checked(refs, hyps)
    if tokenize:
        refs = tokenize_captions(refs)
        hyps = {k: v[0] for k, v in tokenize_captions({k: [h] for k, h in hyps.items()}).items()}
    return refs, hyps


# --------------------------------------------------------------------------------------
# Scorers (on tokenized text)
# --------------------------------------------------------------------------------------


def _ngrams(words: list[str], n: int) -> dict[tuple[str, ...], int]:
    """n-gram counts for orders 1..n, in order of order, then position."""
    counts: dict[tuple[str, ...], int] = {}
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            gram = tuple(words[i : i + k])
            counts[gram] = counts.get(gram, 0) + 1
    return counts


def _bleu(refs: dict, hyps: dict, n: int = 4) -> list[float]:
    small, tiny = 1e-9, 1e-15  # pycocoevalcap's smoothing constants
    testlen = reflen = 0
    guess, correct = [0] * n, [0] * n
    for key, hyp in hyps.items():
        words = hyp.split()
        length = len(words)
        max_ref: dict[tuple[str, ...], int] = {}
        ref_lens = []
        for ref in refs[key]:
            ref_words = ref.split()
            ref_lens.append(len(ref_words))
            for gram, c in _ngrams(ref_words, n).items():
                if c > max_ref.get(gram, 0):
                    max_ref[gram] = c
        testlen += length
        reflen += min((abs(rl - length), rl) for rl in ref_lens)[1]  # closest, ties to the shorter
        for k in range(n):
            guess[k] += max(0, length - k)
        for gram, c in _ngrams(words, n).items():
            correct[len(gram) - 1] += min(max_ref.get(gram, 0), c)
    scores, prod = [], 1.0
    for k in range(n):
        prod *= float(correct[k] + tiny) / (guess[k] + small)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def _cider_d(refs: dict, hyps: dict, n: int = 4, sigma: float = 6.0) -> float:
    ref_counts = {key: [_ngrams(r.split(), n) for r in refs[key]] for key in hyps}
    doc_freq: dict[tuple[str, ...], int] = {}
    for counts in ref_counts.values():
        for gram in {g for c in counts for g in c}:
            doc_freq[gram] = doc_freq.get(gram, 0) + 1
    log_n = math.log(float(len(hyps)))

    def vectorize(counts):
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (log_n - math.log(max(1.0, doc_freq.get(gram, 0.0))))
            vec[k][gram] = w
            norm[k] += w**2
            if k == 1:  # pycocoevalcap's "length" counts bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    penalty_den = 2 * sigma**2
    scores = []
    for key, hyp in hyps.items():
        vec, norm, length = vectorize(_ngrams(hyp.split(), n))
        total = [0.0] * n
        for counts in ref_counts[key]:
            rvec, rnorm, rlength = vectorize(counts)
            delta = float(length - rlength)
            for k in range(n):
                val = 0.0
                for gram, w in vec[k].items():
                    r = rvec[k].get(gram, 0.0)
                    val += min(w, r) * r
                if norm[k] != 0 and rnorm[k] != 0:
                    val /= norm[k] * rnorm[k]
                val *= math.e ** (-(delta**2) / penalty_den)
                total[k] += val
        # mean over n (summed left to right, as numpy does for so few values), then
        # over the references, x10
        scores.append(sum(total) / n / len(ref_counts[key]) * 10.0)
    return math.fsum(scores) / len(scores)


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def _rouge_l(refs: dict, hyps: dict, beta: float = 1.2) -> float:
    scores = []
    for key, hyp in hyps.items():
        cand = hyp.split(" ")  # " ", not any blank, as pycocoevalcap: "" is one (empty) token
        best_p = best_r = 0.0
        for ref in refs[key]:
            tokens = ref.split(" ")
            lcs = _lcs(tokens, cand)
            best_p = max(best_p, lcs / float(len(cand)))
            best_r = max(best_r, lcs / float(len(tokens)))
        if best_p != 0 and best_r != 0:
            scores.append(((1 + beta**2) * best_p * best_r) / float(best_r + beta**2 * best_p))
        else:
            scores.append(0.0)
    return math.fsum(scores) / len(scores)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def bleu(refs: Mapping[Hashable, Sequence[str]], hyps: Mapping[Hashable, str], tokenize: bool = True) -> list[float]:
    """Corpus BLEU-1..4 as pycocoevalcap's ``Bleu(4)`` ("closest" reference
    length, 1e-9/1e-15 smoothing), on 0..1.  ``tokenize=False`` takes the
    captions as already PTB-tokenized (space-separated)."""
    refs, hyps = _prepared(refs, hyps, tokenize)
    return _bleu(refs, hyps)


def cider_d(refs: Mapping[Hashable, Sequence[str]], hyps: Mapping[Hashable, str], tokenize: bool = True) -> float:
    """CIDEr-D as pycocoevalcap's ``Cider()`` (reported as "CIDEr" by the COCO
    server): mean over images, x10 scale (1.0 = 100 "CIDEr points" / 100)."""
    refs, hyps = _prepared(refs, hyps, tokenize)
    return _cider_d(refs, hyps)


def rouge_l(refs: Mapping[Hashable, Sequence[str]], hyps: Mapping[Hashable, str], tokenize: bool = True) -> float:
    """ROUGE-L as pycocoevalcap's ``Rouge()``: LCS F-measure (beta = 1.2) with
    the best precision and recall over the references, mean over images."""
    refs, hyps = _prepared(refs, hyps, tokenize)
    return _rouge_l(refs, hyps)


def caption_scores(
    refs: Mapping[Hashable, Sequence[str]],
    hyps: Mapping[Hashable, str],
    meteor_spice: bool = False,
    tokenize: bool = True,
    on_skip: Callable[[str, CrossGetError], None] | None = None,
) -> dict[str, float]:
    """The COCO caption metrics under their COCO names: ``Bleu_1`` .. ``Bleu_4``,
    ``CIDEr``, ``ROUGE_L`` (0..1 scale, CIDEr x10 as the COCO server), plus
    ``METEOR`` and ``SPICE`` through pycocoevalcap and Java with
    ``meteor_spice=True``: a failing one raises, or with ``on_skip`` is left out
    and handed to ``on_skip(name, error)`` (each stands alone).

    ``refs``: {image_id: [reference caption, ...]}; ``hyps``: {image_id: caption}.
    Raw strings are PTB-tokenized as pycocoevalcap does (``tokenize=False`` for
    captions that already are)."""
    refs, hyps = _prepared(refs, hyps, tokenize)
    b = _bleu(refs, hyps)
    scores = {f"Bleu_{i + 1}": b[i] for i in range(4)}
    extra: dict[str, float] = {}
    if meteor_spice:
        extra, failed = java_scores(refs, hyps)
        for name, error in failed.items():
            if on_skip is None:
                raise error
            on_skip(name, error)
    if "METEOR" in extra:
        scores["METEOR"] = extra["METEOR"]
    scores["ROUGE_L"] = _rouge_l(refs, hyps)
    scores["CIDEr"] = _cider_d(refs, hyps)
    if "SPICE" in extra:
        scores["SPICE"] = extra["SPICE"]
    return scores
