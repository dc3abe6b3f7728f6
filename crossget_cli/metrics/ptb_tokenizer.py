"""The PTB tokenization that the COCO caption evaluation applies before scoring,
in plain Python: :func:`tokenize_caption`, :func:`tokenize_captions` and the raw
tokens of :func:`ptb_tokenize` (the lexer's rules are in :mod:`.ptb_rules`).

Tokenization
------------
pycocoevalcap's ``PTBTokenizer`` writes all captions of a batch (the references,
then separately the hypotheses), one per line with newlines inside a caption
replaced by spaces, runs Stanford CoreNLP 3.4.1's
``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` in Java on
the file, splits each output line on spaces and drops the tokens in
``PUNCTUATIONS`` (``'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;``).

:func:`tokenize_caption` and :func:`tokenize_captions` re-implement that lexer
(PTBLexer.flex of CoreNLP 3.4.1 with PTBTokenizer's default options: PTB3
escaping, LaTeX quotes, no Americanization, no slash/asterisk escaping, assimilations
split, untokenizable characters deleted) as a longest-match scanner over the same
rules, then apply the same lowercasing and punctuation removal.  Consequences
that carry over exactly, because the Java tokenizer does them too:

* quotes become ````` / ``''`` (``"big"`` -> ``big``), clitics are split
  (``dog's`` -> ``dog 's``, ``don't`` -> ``do n't``, ``can't`` -> ``ca n't``,
  ``cannot`` -> ``can not``, ``gonna`` -> ``gon na``, ``'tis`` -> ``'t is``),
  possessive plurals lose their apostrophe (``dogs'`` -> ``dogs``), a
  sentence-final period is split off and dropped, but periods of abbreviations
  and acronyms stay (``u.s.``, ``st.``, ``mr.``, ``p.m.``) and so do joined words
  (``kite.the``), hyphenated words stay whole (``snow-covered``), dashes (``-``,
  ``--``, en/em dashes) are dropped;
* brackets are NOT dropped: the tokenizer writes ``-LRB-`` etc. and
  ``-lowerCase`` turns them into ``-lrb-``, ``-rrb-``, ``-lsb-``, ``-rsb-``,
  ``-lcb-``, ``-rcb-``, which are not in pycocoevalcap's upper-case
  ``PUNCTUATIONS`` list; ``$5`` -> ``$ 5``, ``50%`` -> ``50 %``, ``£`` -> ``#``,
  ``¢`` -> ``cents``, ``€`` -> ``$``, ``½`` -> ``1/2``, ``...`` and ``…`` are dropped.

Checked against the jar: identical raw tokens and final output on every BMP
character (each alone, raw and lower-cased), on 15,000 random caption-like
lines and 9,000 random-character lines, and on the hand-picked cases of
``tests/data/metrics/ptb_tokenizer_cases.json`` (contractions, quotes, URLs,
e-mails, abbreviations, acronyms, numbers, fractions, currencies, brackets,
smileys, markup, non-Latin scripts).  Where it can still differ from the Java
tokenizer (none of these matters for COCO captions as far as we know):

1. [:uppercase:] (only used to decide whether an abbreviation such as ``etc.``
   ends a sentence, in which case the lexer emits an extra ``.`` token) is Latin-1
   upper case only.  This can change the raw tokens of :func:`ptb_tokenize`, never
   the final output, because that extra ``.`` is dropped as punctuation.
2. The scanner takes the longest match over all rules like JFlex, but each rule's
   own match is the one Python's backtracking regex engine finds first (greedy):
   the longest for these rules in all cases tried, though not guaranteed like
   JFlex's DFA; trailing-context rules (``r1/r2``) split r1 and r2 the way the
   greedy engine does.
3. Line ends: pycocoevalcap replaces only ``\\n`` inside a caption; a ``\\r``,
   ``\\u2028``, ``\\u2029``, ``\\x0b`` or ``\\x0c`` inside a caption makes the
   Java tokenizer start a new line, which shifts every later caption of the batch
   onto the wrong image (a pycocoevalcap bug).  Here they are treated as spaces.
4. Context across captions: as in the Java run, :func:`tokenize_captions` scans
   the whole batch as one text, so rules whose trailing context looks past the end
   of a caption see the next caption; :func:`tokenize_caption` scans one caption
   alone (a batch of one, as pycocoevalcap would with a single caption).  The
   final output can differ between the two only for a caption ending in a
   one-letter acronym (``"... 'n."``, ``"plan B."``: ``n.`` alone, ``n`` when the
   next caption starts with one of PTBLexer's sentence-start words such as
   ``"It"`` or ``"The"``), or for markup-like text (``<a b='...'>``) spanning captions.
5. Characters outside the Basic Multilingual Plane (emoji, ...) are scanned as
   UTF-16 surrogate pairs like JFlex does (so they are deleted as untokenizable
   unless a rule with a negated character class, like a URL or e-mail address,
   swallows them); the "Untokenizable" warning the Java tokenizer logs is not
   reproduced.
6. Lower-casing is Python's ``str.lower()`` where Java has
   ``String.toLowerCase(Locale.ENGLISH)``: the same on every BMP character and on
   final sigma, but either could change with a new Unicode version.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence

from crossget_cli.errors import CrossGetError
from crossget_cli.metrics.ptb_rules import NL, RULES, SPACE, apply_action

__all__ = ["PUNCTUATIONS", "ptb_tokenize", "tokenize_caption", "tokenize_captions"]

#: Tokens pycocoevalcap's PTBTokenizer drops after tokenization (its PUNCTUATIONS list).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
# Fast path: a plain ASCII word followed by a blank or the end.  Every rule that
# can match there yields the word itself, except for the words split above, which
# take the full path.
_FAST_WORD = re.compile(r"[A-Za-z]+(?=[ \n]|\Z)")
_FAST_SPACE = re.compile(SPACE + "+")


def _to_utf16_units(text: str) -> str:
    """Characters outside the BMP as two surrogate code points, as JFlex sees them."""
    if all(ord(ch) <= 0xFFFF for ch in text):
        return text
    out = []
    for ch in text:
        cp = ord(ch)
        if cp <= 0xFFFF:
            out.append(ch)
        else:
            cp -= 0x10000
            out.append(chr(0xD800 + (cp >> 10)) + chr(0xDC00 + (cp & 0x3FF)))
    return "".join(out)


def _from_utf16_units(text: str) -> str:
    if not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _lex(text: str) -> list[list[str]]:
    """Run the PTB lexer over ``text``; the tokens of each line (newline tokens end
    lines, as with ``-preserveLines``)."""
    text = _to_utf16_units(text)
    lines: list[list[str]] = [[]]
    pos, end = 0, len(text)
    while pos < end:
        ch = text[pos]
        if ch == " ":
            pos = _FAST_SPACE.match(text, pos).end()
            continue
        if ch.isascii() and ch.isalpha():
            m = _FAST_WORD.match(text, pos)
            if m is not None and m.group().lower() not in _SPLIT_WORDS:
                lines[-1].append(m.group())
                pos = m.end()
                continue
        best_len, best = 0, None
        for pattern, action, arg in RULES:
            m = pattern.match(text, pos)
            if m is not None and m.end() - pos > best_len:
                best_len, best = m.end() - pos, (m.group("t"), action, arg)
        if best is None:  # unreachable: the last rule matches any character but "\n"
            pos += 1
            continue
        token, consumed = apply_action(best[1], best[0], best[2])
        pos += max(consumed, 1)
        if token == "\n" and best[1] == NL:
            lines.append([])
        elif token is not None:
            lines[-1].append(token)
    return lines


_OTHER_LINE_BREAKS = re.compile("[\r\u2028\u2029\u000b\u000c]")


def _clean_caption(caption: str) -> str:
    # pycocoevalcap replaces "\n"; the other line-break characters would make the
    # Java tokenizer start a new line (see the module docstring, difference 3).
    return _OTHER_LINE_BREAKS.sub(" ", caption.replace("\n", " "))


def _finish(tokens: list[str]) -> str:
    # What pycocoevalcap does with each output line: rstrip, split on " ",
    # drop punctuation tokens, join with " ".
    line = _from_utf16_units(" ".join(tokens).lower()).rstrip()
    return " ".join(w for w in line.split(" ") if w not in PUNCTUATIONS)


def ptb_tokenize(text: str) -> list[list[str]]:
    """The raw PTB tokens (before lower-casing and punctuation removal) of each
    line of ``text``, like ``java edu.stanford.nlp.process.PTBTokenizer
    -preserveLines``."""
    return [[_from_utf16_units(t) for t in line] for line in _lex(text)]


def tokenize_caption(text: str) -> str:
    """One caption as pycocoevalcap's PTBTokenizer leaves it: PTB tokens,
    lower-cased, punctuation tokens dropped, joined by single spaces."""
    if not isinstance(text, str):
        raise CrossGetError(f"a caption must be a string, got {type(text).__name__}", "pass captions as str")
    return _finish(_lex(_clean_caption(text))[0])


def tokenize_captions(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """A batch, exactly as ``PTBTokenizer().tokenize`` takes it (without the
    ``{"caption": ...}`` wrappers): all captions scanned as one text, one line
    each, in the mapping's order."""
    ids, texts = [], []
    for key, caps in captions.items():
        if isinstance(caps, str):
            raise CrossGetError(f"captions of {key!r} must be a list of strings, not one string", "{image_id: [caption, ...]}")
        for cap in caps:
            if not isinstance(cap, str):
                raise CrossGetError(f"caption of {key!r} is {type(cap).__name__}, not a string", "pass captions as str")
            ids.append(key)
            texts.append(_clean_caption(cap))
    out: dict[Hashable, list[str]] = {key: [] for key in captions}
    if not texts:
        return out
    lines = _lex("\n".join(texts))
    for key, line in zip(ids, lines):
        out[key].append(_finish(line))
    return out
