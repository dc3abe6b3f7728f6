"""Generation timing (tasks/generation.py) against known costs, and through
``crossget profile`` on a tiny BLIP captioner."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from crossget_cli.cli.app import app
from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.generation import GenerationCalls
from crossget_cli.profile.generation import time_generation

from tiny_blip import blip, save


def _sleeper(encode_s: float, prefill_s: float, per_token_s: float) -> GenerationCalls:
    return GenerationCalls(
        encode=lambda: time.sleep(encode_s),
        generate=lambda n: time.sleep(prefill_s + per_token_s * (n - 1)),
    )


def test_rates_follow_from_the_timed_calls():
    """Costs known by construction: encode 20 ms; generate(n) = 30 ms + 10 ms per
    token after the first (the compressed one: half the encode and prefill)."""
    models = {"original": _sleeper(0.020, 0.030, 0.010), "small": _sleeper(0.010, 0.015, 0.010)}
    original, small = time_generation(models, batch=4, new_tokens=5, warmup=0, repeats=3)
    assert original.label == "original" and small.label == "small"
    assert original.images_per_s == pytest.approx(4 / 0.020, rel=0.25)
    assert original.prefill_ms == pytest.approx(30, rel=0.25)
    assert original.decode_tokens_per_s == pytest.approx(4 * 4 / 0.040, rel=0.25)
    assert original.items_per_s == pytest.approx(4 / 0.070, rel=0.25)
    assert small.ratios["images_per_s"] == pytest.approx(2.0, rel=0.3)
    assert small.ratios["prefill_ms"] == pytest.approx(0.5, rel=0.3)


def test_bad_settings():
    with pytest.raises(CrossGetError, match="new_tokens"):
        time_generation({"a": _sleeper(0, 0, 0)}, batch=1, new_tokens=1)


def test_profile_cli_times_generation_of_a_blip_captioner(tmp_path):
    folder = save(blip("captioning"), tmp_path / "cap")
    args = ["profile", "-m", str(folder), "--vision-r", "4", "--batch-sizes", "2", "--warmup", "0", "--repeats", "1"]
    result = CliRunner().invoke(app, [*args, "--new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["generation"]
    assert [r["label"] for r in rows] == ["original", "rv4_rl0"]
    assert all(r["batch"] == 2 and r["new_tokens"] == 3 and r["images_per_s"] > 0 for r in rows)
