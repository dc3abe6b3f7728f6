"""The shipped model ``crossget-shapes-tiny``: it loads offline through ``--model``
with its preprocessing and tokenizer and scores exactly what was recorded when it
was trained (so any change to loading, preprocessing or tokenization shows)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crossget_cli.cli.app import app
from crossget_cli.data import builtin, shapes
from crossget_cli.loading.models import BUILTIN_MODELS

runner = CliRunner()
N = 200  # the first 200 composites of builtin:shapes-test
#: Correct items among them, recorded with `crossget eval -m crossget-shapes-tiny` when the weights were made.
RECORDED = {"txt_r1": 198, "img_r1": 197, "hard_neg_acc": 100}


@pytest.fixture(scope="module")
def first_test_composites(tmp_path_factory):
    """The first N composites of the shipped test split: composite i depends only on
    (seed, split, i), so these are the same pixels as in builtin:shapes-test."""
    folder = tmp_path_factory.mktemp("shapes") / "data"
    return builtin.write_dataset(folder, shapes.DEFAULT, {"test": N})


def test_shipped_model_gives_the_recorded_accuracy(first_test_composites):
    assert (BUILTIN_MODELS["crossget-shapes-tiny"] / "open_clip_model.safetensors").stat().st_size < 25 * 2**20
    args = ["eval", "-m", "crossget-shapes-tiny", "-t", "retrieval", "-d", str(first_test_composites), "--split", "test"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["results"]["retrieval"]["crossget-shapes-tiny"]
    correct = {metric: round(scores[metric] * N / 100) for metric in RECORDED}
    assert correct == RECORDED


def test_builtin_model_errors_are_one_line():
    result = runner.invoke(app, ["profile", "-m", "crossget-shapes-tiny", "--pretrained", "laion", "--json"])
    assert result.exit_code == 2 and "--pretrained" in result.stderr
