"""The ``crossget`` command through Typer's CliRunner: thin, JSON on stdout,
one stderr line and exit 2 on bad input, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file
from tiny_models import OPENAI_TINY, openclip_tiny, save_hf_folder, save_openclip_folder
from typer.testing import CliRunner

from crossget_cli.cli.app import app
from crossget_cli.version import __version__

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


class _WritesAFile:
    """Unpickling this runs ``open(path, 'w')``: what a crafted weights file does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory, checkpoint):
    """Damaged and hostile weights in the formats users pass: an open_clip folder
    with truncated weights, a transformers folder whose ``pytorch_model.bin`` runs
    code when unpickled, a pickle ``.pt`` that does, a file that is not weights."""
    import torch

    root = tmp_path_factory.mktemp("broken")
    openclip = root / "openclip"
    save_openclip_folder(openclip)
    weights = openclip / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    hf = root / "hf"
    save_hf_folder(hf)
    (hf / "model.safetensors").unlink()
    marker = root / "pwned"
    torch.save({"text_model.embeddings.position_ids": _WritesAFile(str(marker))}, hf / "pytorch_model.bin")
    torch.save({"visual.proj": _WritesAFile(str(marker))}, root / "evil.pt")
    (root / "garbage.bin").write_bytes(b"not a checkpoint at all" * 10)
    truncated = root / "truncated.pt"
    torch.save(openclip_tiny(OPENAI_TINY).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    (root / "a-file").write_text("")
    yield root
    assert not marker.exists(), "a crafted pickle ran code"


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
        "missing recipe": (["-m", str(checkpoint), "--recipe", str(tmp_path / "none.yaml")], "recipe not found"),
        "corrupt safetensors": (["-m", str(corrupt)], "cannot read checkpoint"),
        "output exists": (["-m", str(checkpoint), "-o", str(exists)], "--overwrite"),
    }


def _broken(root):
    """Cases whose input lives in the ``broken`` fixture; ``-o`` cases are checked
    before the model is read (the model given is missing)."""
    long_name = "x" * 300
    return {
        "truncated open_clip folder": (["-m", str(root / "openclip")], "cannot load the weights in"),
        "HF .bin that would run code": (["-m", str(root / "hf")], "could run code"),
        "pickle .pt that would run code": (["-m", str(root / "evil.pt")], "could run code"),
        "truncated .pt": (["-m", str(root / "truncated.pt")], "cannot read checkpoint"),
        "--pretrained not a weights file": (
            ["-m", "ViT-B-32", "--pretrained", str(root / "garbage.bin")],
            "not a PyTorch checkpoint",
        ),
        "output under a file": (["-m", str(root / "missing.pt"), "-o", str(root / "a-file" / "out")], "is not a folder"),
        "output name too long": (["-m", str(root / "missing.pt"), "-o", str(root / long_name)], "longer than"),
        "output is a file": (["-m", str(root / "missing.pt"), "-o", str(root / "a-file"), "--overwrite"], "is a file"),
    } | (
        {"output not writable": (["-m", str(root / "missing.pt"), "-o", "/proc/crossget-out"], "cannot write --output")}
        if Path("/proc/self").is_dir()
        else {}
    )


@pytest.mark.parametrize("case", list(_broken(Path("."))))
def test_broken_weights_and_outputs_exit_2_before_work(case, broken, tmp_path):
    args, expected = _broken(broken)[case]
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "out")]
    result = runner.invoke(app, ["compress", *args, "--no-speed"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert list(tmp_path.iterdir()) == []


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


@pytest.mark.parametrize("command", ["eval", "profile"])
def test_eval_and_profile_check_outputs_before_loading_the_model(command, tmp_path):
    (tmp_path / "a-file").write_text("")
    args = ["-m", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "a-file" / "report.json")]
    if command == "eval":
        args += ["-t", "retrieval", "-d", str(tmp_path)]
    result = runner.invoke(app, [command, *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--output" in lines[0] and "is not a folder" in lines[0], result.stderr
    plot = runner.invoke(app, ["profile", "-m", str(tmp_path / "missing.pt"), "--plot", str(tmp_path / "a-file" / "p.png")])
    assert plot.exit_code == 2 and "--plot" in plot.stderr


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """No network and an empty HF cache, as on an air-gapped machine."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


@pytest.mark.parametrize(
    "model",
    [
        ["-m", "hf:crossget-tests/not-cached-clip"],
        ["-m", "crossget-tests/not-cached-clip"],
        ["-m", "ViT-B-16", "--pretrained", "openai"],
    ],
)
def test_offline_hub_model_fails_fast_with_one_line(model, unreachable_hub, tmp_path):
    import time

    start = time.perf_counter()
    result = runner.invoke(app, ["compress", *model, "-o", str(tmp_path / "out"), "--no-speed"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0], result.stderr
    assert elapsed < 2.0, f"offline failure took {elapsed:.1f} s"
    assert not (tmp_path / "out").exists()


def test_cached_open_clip_tag_is_found_without_the_hub(unreachable_hub):
    """The cache lookup that lets a cached tag load offline: open_clip's hub repo
    for ViT-B-16@openai, laid out as huggingface_hub caches it."""
    import open_clip

    from crossget_cli.loading.hub import openclip_tag_cached

    assert not openclip_tag_cached("ViT-B-16", "openai")
    repo = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].strip("/")
    snapshot = unreachable_hub / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"")
    (unreachable_hub / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (unreachable_hub / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0123abcd")
    assert openclip_tag_cached("ViT-B-16", "openai")


def test_model_flag_wins_over_the_recipe_model(checkpoint, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump({"model": {"source": "ViT-B-16", "pretrained": "openai"}, "reduction": {"vision_r": 2, "text_r": 1}})
    )
    result = runner.invoke(
        app, ["compress", "-m", str(checkpoint), "--recipe", str(recipe), "-o", str(tmp_path / "o"), "--no-speed"]
    )
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load((tmp_path / "o" / "crossget.yaml").read_text())
    assert exported["model"]["source"] == str(checkpoint) and exported["model"].get("pretrained") is None
    assert exported["reduction"] == {"method": "crossget", "vision_r": 2, "text_r": 1}
    shipped = runner.invoke(
        app,
        ["compress", "-m", "crossget-shapes-tiny", "--recipe", "recipes/clip_vit_b16_rv16.yaml", "--vision-r", "2"]
        + ["-o", str(tmp_path / "shapes"), "--no-speed"],
    )
    assert shipped.exit_code == 0, shipped.output


def test_recompressing_an_export_keeps_its_other_settings(checkpoint, tmp_path):
    first = runner.invoke(
        app, ["compress", "-m", str(checkpoint), "--vision-r", "4", "--text-r", "3", "-o", str(tmp_path / "a"), "--no-speed"]
    )
    assert first.exit_code == 0, first.output
    again = runner.invoke(
        app, ["compress", "-m", str(tmp_path / "a"), "--vision-r", "2", "-o", str(tmp_path / "b"), "--no-speed"]
    )
    assert again.exit_code == 0, again.output
    exported = yaml.safe_load((tmp_path / "b" / "crossget.yaml").read_text())
    assert exported["reduction"] == {"method": "crossget", "vision_r": 2, "text_r": 3}


def test_recipe_amp_follows_the_flag_rule_on_cpu(tmp_path):
    from crossget_cli.cli.training import finetune_config_from
    from crossget_cli.recipes import load_recipe

    recipe = load_recipe("recipes/clip_vit_b16_rv16.yaml")
    assert recipe.finetune.amp == "fp16"
    flags = {"data": str(tmp_path), "device": "cpu", "amp": None}
    with pytest.raises(Exception, match="needs a CUDA device") as refused:
        finetune_config_from(recipe, flags)
    assert "--amp none" in refused.value.hint
    assert finetune_config_from(recipe, {**flags, "amp": "none"}).amp == "none"
