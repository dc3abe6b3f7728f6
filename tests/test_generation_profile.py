"""Generation timing (profile/generation.py) against known costs, and through
``crossget profile`` on a tiny BLIP captioner.

The timing tests replace the clock the module reads with a fake one that only
the timed calls advance, so every duration is known exactly: no sleeping, and
nothing depends on how loaded the machine is."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import crossget_cli.profile.generation as generation
from crossget_cli.cli.app import app
from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.generation import GenerationCalls
from crossget_cli.profile.generation import time_generation

from tiny_blip import blip, save


class FakeClock:
    """Stands in for the ``time`` module of :mod:`crossget_cli.profile.generation`:
    ``perf_counter`` reads a time that only :meth:`spend` moves. ``log`` records
    every call of the fake models, ``(label, what)``, in order."""

    def __init__(self):
        self.now = 0.0
        self.log: list[tuple[str, str]] = []

    def perf_counter(self) -> float:
        return self.now

    def spend(self, label: str, what: str, seconds: float) -> None:
        self.log.append((label, what))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(generation, "time", fake)
    return fake


def _model(clock: FakeClock, label: str, encode_s: float, prefill_s: float, per_token_s: float, extra=None, **facts):
    """Calls with known costs: ``encode()`` takes ``encode_s``; ``generate(n)``
    takes ``prefill_s`` plus ``per_token_s`` per token after the first.
    ``extra(label, what, k)`` adds seconds to the ``k``-th call (from 0) of
    ``what`` (``"encode"`` or ``"generate(n)"``)."""
    counts: dict[str, int] = {}

    def spend(what: str, seconds: float) -> None:
        k = counts.get(what, 0)
        counts[what] = k + 1
        clock.spend(label, what, seconds + (extra(label, what, k) if extra else 0.0))

    return GenerationCalls(
        encode=lambda: spend("encode", encode_s),
        generate=lambda n: spend(f"generate({n})", prefill_s + per_token_s * (n - 1)),
        facts=facts,
    )


def test_rates_follow_from_the_timed_calls(clock):
    """Encode 20 ms; generate(n) = 30 ms + 10 ms per token after the first (the
    compressed model: half the encode and the prefill). Batch 4, 5 new tokens."""
    models = {
        "original": _model(clock, "original", 0.020, 0.030, 0.010, visual_tokens=16),
        "small": _model(clock, "small", 0.010, 0.015, 0.010, visual_tokens=8),
    }
    original, small = time_generation(models, batch=4, new_tokens=5, warmup=0, repeats=3)
    assert (original.label, small.label) == ("original", "small")
    assert (original.batch, original.new_tokens) == (4, 5)
    assert original.encode_ms == pytest.approx(20, rel=1e-9)
    assert original.images_per_s == pytest.approx(4 / 0.020, rel=1e-9)
    assert original.prefill_ms == pytest.approx(30, rel=1e-9)
    assert original.generate_ms == pytest.approx(30 + 4 * 10, rel=1e-9)
    assert original.decode_tokens_per_s == pytest.approx(4 * 4 / 0.040, rel=1e-9)  # 4 tokens after the first, 4 items
    assert original.items_per_s == pytest.approx(4 / 0.070, rel=1e-9)
    assert original.peak_memory_mb is None  # CPU: no allocator statistics
    assert (original.facts, small.facts) == ({"visual_tokens": 16}, {"visual_tokens": 8})
    assert original.ratios == dict.fromkeys(("images_per_s", "prefill_ms", "decode_tokens_per_s", "items_per_s"), 1.0)
    assert small.ratios == pytest.approx(
        {"images_per_s": 2.0, "prefill_ms": 0.5, "decode_tokens_per_s": 1.0, "items_per_s": 70 / 55}, rel=1e-9
    )


def test_medians_of_the_repeats_after_untimed_warmup(clock):
    """Warm-up calls (here: a slow first call, like a compile) are not timed,
    and one slow repeat does not move the median."""

    def extra(label, what, k):
        if k < 2:
            return 1.0  # the two warm-up calls of everything
        return 0.5 if (label, what, k) == ("original", "encode", 3) else 0.0  # the second timed encode

    models = {"original": _model(clock, "original", 0.020, 0.030, 0.010, extra=extra)}
    (timing,) = time_generation(models, batch=2, new_tokens=3, warmup=2, repeats=3)
    assert timing.encode_ms == pytest.approx(20, rel=1e-9)
    assert timing.prefill_ms == pytest.approx(30, rel=1e-9)
    assert timing.generate_ms == pytest.approx(50, rel=1e-9)
    for what in ("encode", "generate(1)", "generate(3)"):
        assert clock.log.count(("original", what)) == 2 + 3  # warm-up + repeats, on the CPU nothing else


def test_models_are_timed_interleaved_in_rotating_order(clock):
    """Each repeat times every model once, starting one model later than the
    last repeat, so drifts in clock and load hit every model alike."""
    models = {label: _model(clock, label, 0.01, 0.01, 0.01) for label in "abc"}
    time_generation(models, batch=1, new_tokens=2, warmup=1, repeats=4)
    encode = [label for label, what in clock.log if what == "encode"]
    assert encode == ["a", "b", "c"] + ["a", "b", "c"] + ["b", "c", "a"] + ["c", "a", "b"] + ["a", "b", "c"]
    phases = [what for _, what in clock.log]
    first = {what: phases.index(what) for what in ("encode", "generate(1)", "generate(2)")}
    last = {what: len(phases) - 1 - phases[::-1].index(what) for what in first}
    assert last["encode"] < first["generate(1)"] and last["generate(1)"] < first["generate(2)"]  # phase by phase


def test_no_decode_rate_when_generation_does_not_grow_with_tokens(clock):
    models = {"flat": _model(clock, "flat", 0.01, 0.03, 0.0), "other": _model(clock, "other", 0.01, 0.03, 0.01)}
    flat, other = time_generation(models, batch=1, new_tokens=4, warmup=0, repeats=1)
    assert flat.decode_tokens_per_s is None
    assert "decode_tokens_per_s" not in other.ratios and other.ratios["prefill_ms"] == pytest.approx(1.0)


def test_bad_settings(clock):
    calls = {"a": _model(clock, "a", 0, 0, 0)}
    with pytest.raises(CrossGetError, match="new_tokens"):
        time_generation(calls, batch=1, new_tokens=1)
    with pytest.raises(CrossGetError, match="repeats"):
        time_generation(calls, batch=1, new_tokens=2, repeats=0)
    with pytest.raises(CrossGetError, match="nothing to time"):
        time_generation({}, batch=1)
    assert clock.log == []  # refused before running anything


def test_profile_cli_times_generation_of_a_blip_captioner(tmp_path):
    folder = save(blip("captioning"), tmp_path / "cap")
    args = ["profile", "-m", str(folder), "--vision-r", "4", "--batch-sizes", "2", "--warmup", "0", "--repeats", "1"]
    result = CliRunner().invoke(app, [*args, "--new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["generation"]
    assert [r["label"] for r in rows] == ["original", "rv4_rl0"]
    assert all(r["batch"] == 2 and r["new_tokens"] == 3 and r["images_per_s"] > 0 for r in rows)
    result = CliRunner().invoke(app, [*args, "--method", "crossget,tome", "--new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    labels = ["original", "rv4_rl0", "tome_rv4_rl0"]
    assert [r["label"] for r in data["generation"]] == labels == [r["label"] for r in data["runs"]]
