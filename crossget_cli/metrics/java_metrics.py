"""METEOR and SPICE, the COCO caption metrics with no pure-Python equivalent,
through pycocoevalcap's Java scorers: what they need (:func:`java_requirements_missing`)
and running each on its own (:func:`java_scores`), whatever the scorers print sent to
stderr."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys

from crossget_cli.errors import CrossGetError, first_line

__all__ = ["JAVA_METRICS", "java_requirements_missing", "java_scores"]


#: The metrics computed by pycocoevalcap's Java scorers, and what each needs
#: beyond Java (the hint of its error).
JAVA_METRICS = {
    "METEOR": "check that `java -jar` works and has 2 GB of heap",
    "SPICE": "SPICE downloads Stanford CoreNLP 3.6.0 into pycocoevalcap/spice/lib on first use "
    "(needs internet) and 8 GB of Java heap",
}


def java_requirements_missing() -> list[str]:
    """What the Java scorers need and this environment lacks (empty: all there)."""
    missing = []
    if importlib.util.find_spec("pycocoevalcap") is None:
        missing.append("the pycocoevalcap package")
    if shutil.which("java") is None:
        missing.append("a Java runtime (`java` on PATH)")
    return missing


def java_scores(refs: dict, hyps: dict, names=tuple(JAVA_METRICS)) -> tuple[dict[str, float], dict[str, CrossGetError]]:
    """METEOR and SPICE through pycocoevalcap, each on its own: ``(scores, failed)``
    with ``failed[name]`` the error of a metric that could not be computed (SPICE
    offline, say), so the other is still reported. Whatever the scorers print goes
    to stderr: stdout may be a ``--json`` document."""
    missing = java_requirements_missing()
    if missing:
        error = CrossGetError(
            " and ".join(names) + " need " + " and ".join(missing),
            "`pip install pycocoevalcap` and install Java 8+ (e.g. `apt-get install default-jre`), "
            "or leave METEOR/SPICE out (meteor_spice=False)",
        )
        return {}, {name: error for name in names}
    gts = {k: list(v) for k, v in refs.items()}
    res = {k: [v] for k, v in hyps.items()}
    scores, failed = {}, {}
    for name in names:
        try:
            with _stdout_to_stderr():
                scores[name] = float(_java_scorer(name).compute_score(gts, res)[0])
        except Exception as exc:  # the Java process died, a download failed, ...
            failed[name] = CrossGetError(f"{name} (pycocoevalcap, Java) failed: {first_line(exc)[:200]}", JAVA_METRICS[name])
    return scores, failed


def _java_scorer(name: str):
    if name == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor

        return Meteor()
    from pycocoevalcap.spice.spice import Spice

    return Spice()


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send ``print`` and child processes' output (SPICE's "Downloading
    stanford-corenlp...", Java's progress) to stderr for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
