"""The ``crossget`` command through Typer's CliRunner: thin, JSON on stdout,
one stderr line and exit 2 on bad input, nothing half-written."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from crossget_cli import __version__
from crossget_cli.cli.app import app
from test_export import OPENAI_TINY
from tiny_models import openclip_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "clip.safetensors"
    save_file(openclip_tiny(OPENAI_TINY).state_dict(), str(path))
    return path


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"crossget {__version__}"
    for command in ([], ["compress"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_compress_json(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", "-m", str(checkpoint), "--vision-r", "4", "--text-r", "3", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output"] == str(out)
    assert data["report"]["tokens_per_layer"]["vision"] == [18, 14, 10, 6, 4]
    assert data["recipe"]["reduction"] == {"method": "crossget", "vision_r": 4, "text_r": 3}
    exported = yaml.safe_load((out / "crossget.yaml").read_text())
    assert exported["provenance"]["effective_r"]["vision"] == [4, 4, 4, 2]
    assert exported["model"]["source"] == str(checkpoint)


def test_compress_table_and_recipe(checkpoint, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"source": str(checkpoint)}, "reduction": {"vision_r": [1, 2, 3, 4]}}))
    result = runner.invoke(app, ["compress", "--recipe", str(recipe), "--text-r", "2", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "pair GMACs" in result.stdout
    exported = yaml.safe_load((tmp_path / "out" / "crossget.yaml").read_text())
    assert exported["reduction"] == {"method": "crossget", "vision_r": [1, 2, 3, 4], "text_r": 2}
    # The exported recipe feeds back into compress.
    again = runner.invoke(app, ["compress", "--recipe", str(tmp_path / "out" / "crossget.yaml"), "-o", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output


def _bad(tmp_path, checkpoint):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(checkpoint.read_bytes()[:200])
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text("reduction:\n  vision_r: 4\n  visoin_r: 3\n")
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("reduction:\n  vision_r: many\n")
    exists = tmp_path / "exists"
    exists.mkdir()
    return {
        "missing file": (["-m", str(tmp_path / "nope.pt")], "not found"),
        "unknown model": (["-m", "ViT-Nonexistent-99"], "unknown model"),
        "open_clip name without --pretrained": (["-m", "ViT-B-16"], "needs --pretrained"),
        "negative r": (["-m", str(checkpoint), "--vision-r", "-3"], "--vision-r"),
        "r not an int": (["-m", str(checkpoint), "--text-r", "six"], "--text-r"),
        "r list of wrong length": (["-m", str(checkpoint), "--vision-r", "1,2"], "layers"),
        "recipe with unknown key": (["-m", str(checkpoint), "--recipe", str(unknown_key)], "reduction.visoin_r"),
        "recipe with bad value": (["-m", str(checkpoint), "--recipe", str(bad_value)], "reduction.vision_r"),
        "missing recipe": (["-m", str(checkpoint), "--recipe", str(tmp_path / "none.yaml")], "recipe file not found"),
        "corrupt safetensors": (["-m", str(corrupt)], "cannot read checkpoint"),
        "output exists": (["-m", str(checkpoint), "-o", str(exists)], "--overwrite"),
    }


CASES = [
    "missing file",
    "unknown model",
    "open_clip name without --pretrained",
    "negative r",
    "r not an int",
    "r list of wrong length",
    "recipe with unknown key",
    "recipe with bad value",
    "missing recipe",
    "corrupt safetensors",
    "output exists",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, checkpoint):
    args, expected = _bad(tmp_path, checkpoint)[case]
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "out")]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["compress", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert result.stdout == ""


def test_debug_shows_traceback(tmp_path):
    result = runner.invoke(app, ["compress", "-m", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "o"), "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


FAST_PROFILE = ["--batch-sizes", "1,2", "--warmup", "0", "--repeats", "1", "--threads", "1"]


def test_profile_sweep_json_plot_and_report_file(checkpoint, tmp_path):
    plot, report = tmp_path / "sweep.png", tmp_path / "report.json"
    args = ["profile", "-m", str(checkpoint), "--vision-r", "0,4", "--text-r", "0,3", *FAST_PROFILE]
    result = runner.invoke(app, [*args, "--plot", str(plot), "-o", str(report), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [run["label"] for run in data["runs"]] == ["original", "rv0_rl0", "rv0_rl3", "rv4_rl0", "rv4_rl3"]
    for run in data["runs"]:
        for key in (
            "vision_r",
            "text_r",
            "image_gmacs",
            "text_gmacs",
            "gmacs",
            "throughput",
            "latency_ms",
            "peak_memory_mb",
            "ratios",
        ):
            assert key in run
        assert run["ratios"]["gmacs"] == pytest.approx(run["gmacs"] / data["runs"][0]["gmacs"])
    assert data["runs"][3]["tokens_per_layer"]["vision"] == [18, 14, 10, 6, 4]
    assert json.loads(report.read_text()) == data
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_table(checkpoint):
    result = runner.invoke(app, ["profile", "-m", str(checkpoint), "--vision-r", "4", "--towers", "image", *FAST_PROFILE])
    assert result.exit_code == 0, result.output
    assert "original" in result.stdout and "rv4_rl0" in result.stdout and "image items/s @2" in result.stdout


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--device", "tpu"], "unknown device"),
        (["--batch-sizes", "0"], "--batch-sizes"),
        (["--vision-r", "4,x"], "--vision-r"),
        (["--vision-r", "4,-1"], "--vision-r"),
        (["--dtype", "int8"], "unknown dtype"),
        (["--towers", "audio"], "unknown towers"),
        (["--accuracy", "missing.json"], "--accuracy"),
    ]
    + ([] if __import__("torch").cuda.is_available() else [(["--device", "cuda"], "CUDA is not available")]),
)
def test_profile_bad_input(checkpoint, tmp_path, args, expected):
    result = runner.invoke(app, ["profile", "-m", str(checkpoint), *FAST_PROFILE, *args, "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "r.json").exists()


def test_compress_report_holds_a_speed_profile(checkpoint, tmp_path):
    result = runner.invoke(app, ["compress", "-m", str(checkpoint), "--vision-r", "4", "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    profile = json.loads((tmp_path / "out" / "report.json").read_text())["profile"]
    assert [run["label"] for run in profile["runs"]] == ["original", "rv4_rl0"]
    assert profile["runs"][1]["latency_ms"]["image"] > 0
    quiet = runner.invoke(
        app, ["compress", "-m", str(checkpoint), "--vision-r", "4", "-o", str(tmp_path / "o2"), "--no-speed", "--json"]
    )
    assert "profile" not in json.loads(quiet.stdout)["report"]
