"""The wheel users install carries what the package promises: the shipped recipes
(``--recipe NAME``) and the built-in model, and they work from an installed copy.

The wheel is built from a copy of the sources (no build isolation, no index: the
test's environment has setuptools), installed with ``pip --target`` and run through
its own ``crossget`` script with nothing of the checkout on the path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "crossget_cli", "recipes")


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, check=False, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """A wheel of the checkout installed into a folder: (its crossget script, the env to run it in)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(src), "-w", str(root / "dist")])
    (wheel,) = (root / "dist").glob("crossget-*.whl")
    target = root / "site"
    _run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)])
    env = {**os.environ, "PYTHONPATH": str(target)}
    return target / "bin" / "crossget", env


def test_the_installed_package_is_the_wheel(installed, tmp_path):
    _, env = installed
    where = _run([sys.executable, "-c", "import crossget_cli; print(crossget_cli.__file__)"], env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(Path(env["PYTHONPATH"]))


def test_every_repository_recipe_ships(installed, tmp_path):
    script, env = installed
    listing = json.loads(_run([str(script), "recipes", "--json"], env=env, cwd=tmp_path).stdout)
    expected = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
    assert [entry["name"] for entry in listing] == expected
    shipped = _run([str(script), "recipes", expected[0]], env=env, cwd=tmp_path).stdout
    assert shipped == (REPO / "recipes" / f"{expected[0]}.yaml").read_text()


def test_compress_the_builtin_model_with_a_shipped_recipe(installed, tmp_path):
    script, env = installed
    out = tmp_path / "out"
    _run(
        [
            str(script),
            "compress",
            "--model",
            "crossget-shapes-tiny",
            "--recipe",
            "clip_vit_b16_rv16",
            "--no-speed",
            "-o",
            str(out),
        ],
        env=env,
        cwd=tmp_path,
    )
    exported = yaml.safe_load((out / "crossget.yaml").read_text())
    recipe = yaml.safe_load((REPO / "recipes" / "clip_vit_b16_rv16.yaml").read_text())
    assert exported["reduction"] == recipe["reduction"]
    assert exported["model"]["source"] == "crossget-shapes-tiny"
    assert (out / "model.safetensors").is_file()


def test_a_recipe_name_loads_the_same_recipe_as_its_file():
    from crossget_cli.recipes import load_recipe

    for name in ("clip_vit_b16_rv16", "clip_vit_b16_rv16.yaml"):
        assert load_recipe(name) == load_recipe(REPO / "recipes" / "clip_vit_b16_rv16.yaml")


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    from crossget_cli.recipes import load_recipe

    monkeypatch.chdir(tmp_path)
    Path("clip_vit_b16_rv16.yaml").write_text("reduction:\n  vision_r: 3\n")
    assert load_recipe("clip_vit_b16_rv16.yaml").reduction.vision_r == 3
    assert load_recipe("clip_vit_b16_rv16").reduction.vision_r == 16


def test_an_unknown_recipe_is_one_line_naming_the_shipped_ones(tmp_path):
    from typer.testing import CliRunner

    from crossget_cli.cli.app import app

    for args in (["recipes", "nope"], ["compress", "-m", "crossget-shapes-tiny", "--recipe", "nope", "-o", str(tmp_path / "o")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "nope" in lines[0] and "clip_vit_b16_rv16" in lines[0]
    assert not (tmp_path / "o").exists()
