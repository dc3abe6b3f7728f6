"""``crossget train``: training without compressing, saved in the model's own format."""

from __future__ import annotations

import json
import os

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from crossget_cli.cli.app import app
from crossget_cli.loading.models import load_model

runner = CliRunner()


def _train(model, data, output, *extra):
    args = ["train", "-m", str(model), "--train-data", str(data), "-o", str(output), "--batch-size", "4", "--seed", "1"]
    return runner.invoke(app, [*args, *extra, "--json"])


def test_train_lowers_the_loss_and_saves_an_open_clip_folder(shapes, tiny, tmp_path):
    result = _train(tiny, shapes / "data.json", tmp_path / "out", "--epochs", "6", "--lr", "2e-3")
    assert result.exit_code == 0, result.output
    training = json.loads((tmp_path / "out" / "training.json").read_text())
    losses = [r["loss"] for r in training["history"]]
    assert len(losses) == 6 * 4 and sum(losses[-4:]) < sum(losses[:4])
    assert json.loads(result.stdout)["steps"] == 24
    # open_clip itself reads the folder, and it is the trained model, not the original.
    trained = open_clip.create_model("local-dir:" + str(tmp_path / "out")).eval()
    ours = load_model(str(tmp_path / "out")).model
    original = load_model(str(tiny)).model
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trained.encode_image(images), ours.encode_image(images))
        assert not torch.allclose(trained.encode_image(images), original.encode_image(images))
    assert not hasattr(ours.visual.transformer, "cross_image")  # saved unpatched
    # Written through a private temporary folder, but finished with the modes the umask gives.
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "out" / "open_clip_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_training_from_scratch_is_reproducible(shapes, tmp_path):
    """``--pretrained none`` of the built-in architecture: the seed fixes the
    initialisation and the data order, so two runs save identical weights."""
    runs = []
    for name in ("a", "b"):
        extra = ["--pretrained", "none", "--max-steps", "1", "--save-dtype", "fp16", "--lr", "1e-3"]
        result = _train("crossget-shapes-tiny", shapes / "data.json", tmp_path / name, *extra)
        assert result.exit_code == 0, result.output
        runs.append(load_file(str(tmp_path / name / "open_clip_model.safetensors")))
    assert runs[0].keys() == runs[1].keys() and all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert runs[0]["visual.conv1.weight"].dtype == torch.float16
    extra = ["--pretrained", "none", "--max-steps", "1", "--save-dtype", "fp16", "--lr", "1e-3", "--seed", "2"]
    assert _train("crossget-shapes-tiny", shapes / "data.json", tmp_path / "c", *extra).exit_code == 0
    other = load_file(str(tmp_path / "c" / "open_clip_model.safetensors"))
    assert not torch.equal(other["visual.conv1.weight"], runs[0]["visual.conv1.weight"])  # another seed


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--output", "{tmp}/o"], "--train-data"),
        (["--train-data", "{data}", "--save-dtype", "fp8", "--output", "{tmp}/o"], "--save-dtype"),
        (["--train-data", "{data}"], "--output"),
    ],
)
def test_train_bad_input(shapes, tiny, tmp_path, args, expected):
    args = [a.format(tmp=tmp_path, data=shapes / "data.json") for a in args]
    result = runner.invoke(app, ["train", "-m", str(tiny), *args])
    assert result.exit_code == 2 and expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_train_refuses_a_compressed_model(shapes, tiny, tmp_path):
    compressed = runner.invoke(app, ["compress", "-m", str(tiny), "--vision-r", "2", "-o", str(tmp_path / "c"), "--no-speed"])
    assert compressed.exit_code == 0, compressed.output
    result = _train(tmp_path / "c", shapes / "data.json", tmp_path / "o")
    assert result.exit_code == 2 and "compress --finetune" in result.stderr
