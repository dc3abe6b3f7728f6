"""The accuracy study driver (study) on a tiny model and data."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crossget_cli.cli.app import app
from crossget_cli.data import shapes
from benchmarks import study
from tiny_models import save_openclip_folder

runner = CliRunner()


def test_study_rows_equal_the_cli_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(shapes.PRESETS, "shapes", shapes.ShapesConfig(grid=2, n_train=8, n_test=6))
    monkeypatch.setitem(shapes.PRESETS, "shapes1", shapes.ShapesConfig(grid=2, max_objects=1, n_train=0, n_test=6))
    monkeypatch.setattr(study, "POINTS", {"65%": {"crossget": 3, "tome": 2}})
    save_openclip_folder(tmp_path / "tiny")
    settings = study.StudySettings(base=str(tmp_path / "tiny"), seeds=(1,), steps=2, batch_size=4, lr=1e-3)
    study.run_study(tmp_path / "out", settings, log=lambda *_: None)
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    names = [row["name"] for row in summary["rows"]]
    assert names == ["original", "control", "tome@65%", "tome+ft@65%", "crossget@65%", "crossget+ft@65%"]

    # A row is what `crossget eval` prints for the exported folder.
    model = tmp_path / "out" / "models" / "crossget-ft-65-s1"
    printed = runner.invoke(app, ["eval", "-m", str(model), "-t", "retrieval", "-d", "builtin:shapes-test@1", "--json"])
    expected = json.loads(printed.stdout)["results"]["retrieval"][str(model)]
    row = json.loads((tmp_path / "out" / "rows" / "crossget+ft@65%-s1.json").read_text())
    assert row["scores"]["hard_neg_acc[builtin:shapes-test@1]"] == expected["hard_neg_acc"]
    assert row["scores"]["txt_r1[builtin:shapes-test@1]"] == expected["txt_r1"]
    ft = next(r for r in summary["rows"] if r["name"] == "crossget+ft@65%")
    assert ft["n"] == 1 and ft["image_gmacs"] < summary["rows"][0]["image_gmacs"]

    # Rows are cached: a second run computes nothing and renders the same table.
    monkeypatch.setattr("crossget_cli.export.compress.compress", lambda *a, **k: pytest.fail("recomputed"))
    study.run_study(tmp_path / "out", settings, log=lambda *_: None)
    text = study.table(json.loads((tmp_path / "out" / "study.json").read_text()))
    assert text.count("\n") == 2 + len(names) and "crossget+ft@65%" in text
    study.plot(summary, tmp_path / "study.png")
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"


def test_rows_summarise_seeds_as_mean_and_sample_sd():
    runs = [{m: v for m in study.METRICS} for v in (10.0, 20.0, 30.0)]
    summary = study.Row("x", "crossget+ft", "65%", 3, 1.5, runs).summary()
    assert summary["txt_r1"] == 20.0 and summary["txt_r1_sd"] == pytest.approx(10.0) and summary["n"] == 3
