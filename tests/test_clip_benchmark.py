"""CLIP_benchmark interop (issue #16): ``crossget eval --format clip-benchmark``
writes CLIP_benchmark's result JSON, which its ``build`` turns into a table, and
:func:`load_crossget` runs a compressed model inside CLIP_benchmark's own
evaluation functions and command line, with the same numbers as ``crossget eval``."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from crossget_cli.cli.app import app
from tiny_models import RGB, save_openclip_folder

clip_benchmark = pytest.importorskip("clip_benchmark")

from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
from sklearn.metrics import balanced_accuracy_score  # a CLIP_benchmark dependency

from crossget_cli.harness.clip_benchmark import load_crossget, main, result_file_name

runner = CliRunner()
COLOURS = list(RGB)[:6]
ITEMS = [(f"{colour}-{side}", colour, side) for colour in COLOURS for side in ("left", "right")]
RETRIEVAL_KEYS = {f"{side}_retrieval_recall@{k}" for side in ("image", "text") for k in (1, 5, 10)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny open_clip model and its compressed export."""
    root = tmp_path_factory.mktemp("cb-models")
    save_openclip_folder(root / "tiny")
    result = runner.invoke(app, ["compress", "-m", str(root / "tiny"), "--vision-r", "4", "--no-speed", "-o", str(root / "cg")])
    assert result.exit_code == 0, result.output
    return root / "tiny", root / "cg"


def _captions(colour: str, side: str) -> list[str]:
    return [f"a {colour} square on the {side}", f"a picture that is mostly {colour}"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Twelve JPEGs (CLIP_benchmark's recall@10 needs ten) with two captions each, as
    Karpathy JSON (for crossget eval) and as CLIP_benchmark's local Flickr30k layout
    (``flickr30k_test_karpathy.txt``)."""
    root = tmp_path_factory.mktemp("cb-data")
    images, lines = [], ["image,caption"]
    for i, (name, colour, side) in enumerate(ITEMS):
        picture = Image.new("RGB", (40, 48), RGB[colour])
        left = 2 + 3 * i if side == "left" else 38 - 3 * i % 20 - 10
        picture.paste((255, 255, 255), (left, 5, left + 10, 20))
        picture.save(root / f"{name}.jpg")
        images.append({"filename": f"{name}.jpg", "split": "test", "sentences": [{"raw": c} for c in _captions(colour, side)]})
        lines += [f"{name}.jpg,{c}" for c in _captions(colour, side)]
    (root / "data.json").write_text(json.dumps({"images": images}))
    (root / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    return root


class _Captioned(torch.utils.data.Dataset):
    """What CLIP_benchmark's retrieval datasets yield: (image tensor, [captions])."""

    def __init__(self, root, transform):
        self.items = [(root / f"{name}.jpg", _captions(colour, side)) for name, colour, side in ITEMS]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, captions = self.items[i]
        return self.transform(Image.open(path).convert("RGB")), captions


def _ours(models, pictures, tmp_path, *extra):
    out = tmp_path / "results"
    args = ["eval", *(a for m in models for a in ("-m", str(m))), "-t", "retrieval", "-d", str(pictures / "data.json")]
    result = runner.invoke(app, [*args, "--format", "clip-benchmark", "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()], out


def test_format_schema_files_and_build(models, pictures, tmp_path):
    documents, out = _ours(models, pictures, tmp_path)
    assert [d["model"] for d in documents] == [str(m) for m in models]
    ours = json.loads(
        runner.invoke(app, ["eval", "-m", str(models[1]), "-t", "retrieval", "-d", str(pictures / "data.json"), "--json"]).stdout
    )["results"]["retrieval"][str(models[1])]
    for document in documents:
        assert set(document) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
        assert document["task"] == "zeroshot_retrieval" and document["language"] == "en" and document["pretrained"] == ""
        assert set(document["metrics"]) == RETRIEVAL_KEYS
        assert all(0.0 <= v <= 1.0 for v in document["metrics"].values())
        assert json.loads((out / result_file_name(document)).read_text()) == document
    metrics = documents[1]["metrics"]
    assert metrics["text_retrieval_recall@1"] == pytest.approx(ours["txt_r1"] / 100)
    assert metrics["image_retrieval_recall@5"] == pytest.approx(ours["img_r5"] / 100)

    table = tmp_path / "benchmark.csv"
    main(["build", str(out), "--output", str(table)])  # CLIP_benchmark's own table builder
    rows = list(csv.DictReader(table.open()))
    assert sorted(r["model"] for r in rows) == sorted(str(m) for m in models)
    assert {"model_fullname", "image_retrieval_recall@1", "text_retrieval_recall@10"} <= set(rows[0])


def test_loader_in_clip_benchmark_evaluate(models, pictures, tmp_path):
    """CLIP_benchmark's retrieval evaluation on the loader's (model, transform,
    tokenizer) gives what `crossget eval --format clip-benchmark` reports."""
    documents, _ = _ours(models[1:], pictures, tmp_path)
    model, transform, tokenizer = load_crossget(str(models[1]), "none", None, "cpu")
    loader = torch.utils.data.DataLoader(_Captioned(pictures, transform), batch_size=4, collate_fn=image_captions_collate_fn)
    metrics = zeroshot_retrieval.evaluate(model, loader, tokenizer, device="cpu", amp=False, recall_k_list=[1, 5, 10])
    assert metrics == pytest.approx(documents[0]["metrics"], abs=1e-6)
    with torch.no_grad():  # bf16 autocast (CLIP_benchmark's default --amp) runs too
        assert zeroshot_retrieval.evaluate(model, loader, tokenizer, device="cpu", amp=True, recall_k_list=[1]).keys()


def test_clip_benchmark_command_line(models, pictures, tmp_path):
    """`python -m crossget_cli.harness.clip_benchmark eval --model_type crossget ...`
    on a local Flickr30k layout writes the numbers crossget eval reports."""
    documents, _ = _ours(models[1:], pictures, tmp_path)
    out = tmp_path / "cb.json"
    args = ["eval", "--model_type", "crossget", "--model", str(models[1]), "--pretrained", "none", "--dataset", "flickr30k"]
    args += ["--dataset_root", str(pictures), "--task", "zeroshot_retrieval", "--recall_k", "1", "5", "10", "--no_amp"]
    main([*args, "--batch_size", "4", "--output", str(out)])
    theirs = json.loads(out.read_text())
    assert theirs["task"] == documents[0]["task"] and theirs["model"] == documents[0]["model"]
    assert theirs["metrics"] == pytest.approx(documents[0]["metrics"], abs=1e-6)


class _Classes(torch.utils.data.Dataset):
    def __init__(self, root, classes, transform):
        self.classes = classes
        self.items = [(root / c / f"{j}.png", i) for i, c in enumerate(classes) for j in range(2)]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return self.transform(Image.open(path).convert("RGB")), label


@pytest.mark.parametrize("num_classes", [6, 3])
def test_zeroshot_format_matches_clip_benchmark(models, tmp_path, num_classes):
    classes = sorted(COLOURS[:num_classes])
    root = tmp_path / "folder"
    for colour in classes:
        (root / colour).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (32, 32), tuple(max(0, v - 40 * j) for v in RGB[colour])).save(root / colour / f"{j}.png")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\na {} thing.\n")
    args = ["eval", "-m", str(models[1]), "-t", "zeroshot", "-d", str(root), "--templates", str(tmp_path / "templates.txt")]
    result = runner.invoke(app, [*args, "--format", "clip-benchmark"])
    assert result.exit_code == 0, result.output
    (document,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert document["task"] == "zeroshot_classification"
    assert set(document["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}

    model, transform, tokenizer = load_crossget(str(models[1]), "", None, "cpu")
    loader = torch.utils.data.DataLoader(_Classes(root, classes, transform), batch_size=4)
    templates = ["a photo of a {c}.", "a {c} thing."]
    # CLIP_benchmark 1.6.2's evaluate() fails under NumPy 2 (its accuracy() calls float() on a
    # 1-element array), so its classifier and logits are used and scored as evaluate() scores them.
    classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, classes, templates, "cpu", amp=False)
    logits, target = zeroshot_classification.run_classification(model, classifier, loader, "cpu", amp=False)
    top = logits.topk(min(5, num_classes), dim=1).indices
    theirs = {
        "acc1": (top[:, 0] == target).float().mean().item(),
        "acc5": (top == target[:, None]).any(dim=1).float().mean().item() if num_classes >= 5 else float("nan"),
        "mean_per_class_recall": balanced_accuracy_score(target, logits.argmax(dim=1)),
    }
    for key, value in theirs.items():
        mine = document["metrics"][key]
        assert (math.isnan(mine) and math.isnan(value)) if math.isnan(value) else mine == pytest.approx(value, abs=1e-6), key


def test_bad_uses_exit_2(models, pictures, tmp_path):
    data = ["-d", str(pictures / "data.json")]
    two = ["-m", str(models[0]), "-m", str(models[1])]
    cases = [
        [*two, "-t", "retrieval", *data, "--format", "clip-benchmark", "-o", str(tmp_path / "one.json")],
        ["-m", str(models[0]), "-t", "captioning", *data, "--format", "clip-benchmark"],
        ["-m", str(models[0]), "-t", "retrieval", *data, "--format", "clip-benchmark", "--json"],
        ["-m", str(models[0]), "-t", "retrieval", *data, "--format", "csv"],
    ]
    for args in cases:
        result = runner.invoke(app, ["eval", *args])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
