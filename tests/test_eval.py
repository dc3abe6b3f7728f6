"""``crossget eval`` end to end on small real files, against features computed
independently with each library's own preprocessing and tokenizer."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import crossget_cli
from crossget_cli.adapters.base import Adapter
from crossget_cli.cli.app import app
from crossget_cli.metrics.retrieval import retrieval_recall
from reference_metrics import brute_force_recall
from tiny_models import BPE_TINY, RGB, save_hf_folder, save_openclip_folder

runner = CliRunner()
COLOURS = list(RGB)[:6]


@pytest.fixture(scope="module")
def flickr(tmp_path_factory):
    """Six images (JPEG and PNG) with two captions each, Karpathy-style JSON."""
    root = tmp_path_factory.mktemp("flickr")
    images = []
    for i, colour in enumerate(COLOURS):
        name = f"{colour}.{'jpg' if i % 2 == 0 else 'png'}"
        picture = Image.new("RGB", (40, 48), RGB[colour])
        picture.paste((255, 255, 255), (5 * i, 5, 5 * i + 10, 20))
        picture.save(root / name)
        images.append(
            {
                "filename": name,
                "split": "test",
                "sentences": [{"raw": f"a {colour} square."}, {"raw": f"a picture that is mostly {colour}"}],
            }
        )
    images.append({"filename": "red.jpg", "split": "train", "sentences": [{"raw": "ignored"}]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))
    return root


def _independent_openclip_recall(model, root):
    preprocess = open_clip.image_transform(BPE_TINY["image_resolution"], is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=BPE_TINY["context_length"])
    names = [f"{c}.{'jpg' if i % 2 == 0 else 'png'}" for i, c in enumerate(COLOURS)]
    captions = [t for c in COLOURS for t in (f"a {c} square.", f"a picture that is mostly {c}")]
    owner = [i for i in range(len(COLOURS)) for _ in range(2)]
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(root / n).convert("RGB")) for n in names])
        image_features = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    return image_features, text_features, owner


def test_retrieval_openclip_original_and_compressed(flickr, tmp_path):
    model = save_openclip_folder(tmp_path / "tiny")
    compressed = runner.invoke(
        app,
        [
            "compress",
            "-m",
            str(tmp_path / "tiny"),
            "--vision-r",
            "4",
            "--text-r",
            "3",
            "-o",
            str(tmp_path / "small"),
            "--no-speed",
        ],
    )
    assert compressed.exit_code == 0, compressed.output
    args = ["eval", "-m", str(tmp_path / "tiny"), "-m", str(tmp_path / "small"), "--task", "retrieval"]
    result = runner.invoke(
        app, [*args, "--data", str(flickr / "dataset_flickr30k.json"), "--image-root", str(flickr), "--batch-size", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    original, small = (report["results"]["retrieval"][str(tmp_path / name)] for name in ("tiny", "small"))

    image_features, text_features, owner = _independent_openclip_recall(model, flickr)
    for k in (1, 5, 10):
        txt, img = brute_force_recall(image_features, text_features, owner, k)
        assert original[f"txt_r{k}"] == pytest.approx(txt)
        assert original[f"img_r{k}"] == pytest.approx(img)

    patched = crossget_cli.load(str(tmp_path / "small"))
    image_features, text_features, owner = _independent_openclip_recall(patched, flickr)
    assert small == pytest.approx(retrieval_recall(image_features, text_features, owner))
    delta = report["deltas"]["retrieval"][str(tmp_path / "small")]
    assert delta["r_mean"] == pytest.approx(small["r_mean"] - original["r_mean"])
    assert report["num_items"] == len(COLOURS)


def test_retrieval_hf_uses_its_processor_and_tokenizer(flickr, tmp_path):
    model = save_hf_folder(tmp_path / "hf")
    result = runner.invoke(
        app,
        [
            "eval",
            "-m",
            str(tmp_path / "hf"),
            "-t",
            "retrieval",
            "-d",
            str(flickr / "dataset_flickr30k.json"),
            "--image-root",
            str(flickr),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["results"]["retrieval"][str(tmp_path / "hf")]

    from transformers import CLIPImageProcessor, CLIPTokenizer

    processor = CLIPImageProcessor.from_pretrained(str(tmp_path / "hf"))
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "hf"))
    names = [f"{c}.{'jpg' if i % 2 == 0 else 'png'}" for i, c in enumerate(COLOURS)]
    captions = [t for c in COLOURS for t in (f"a {c} square.", f"a picture that is mostly {c}")]
    with torch.no_grad():
        pixels = processor(images=[Image.open(flickr / n).convert("RGB") for n in names], return_tensors="pt")["pixel_values"]
        ids = tokenizer(captions, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
        image_features = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text_features = torch.nn.functional.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
    assert scores == pytest.approx(retrieval_recall(image_features, text_features, [i for i in range(6) for _ in range(2)]))


def test_zeroshot_imagefolder(tmp_path):
    model = save_openclip_folder(tmp_path / "tiny")
    root = tmp_path / "folder"
    for colour in COLOURS[:3]:
        (root / colour).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (32, 32), tuple(max(0, v - 40 * j) for v in RGB[colour])).save(root / colour / f"{j}.png")
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\na {} thing.\n")
    result = runner.invoke(
        app, ["eval", "-m", str(tmp_path / "tiny"), "-t", "zeroshot", "-d", str(root), "--templates", str(templates), "--json"]
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["results"]["zeroshot"][str(tmp_path / "tiny")]

    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        classes = []
        for colour in COLOURS[:3]:
            emb = torch.nn.functional.normalize(
                model.encode_text(tokenizer([f"a photo of a {colour}.", f"a {colour} thing."])), dim=-1
            )
            mean = emb.mean(0)
            classes.append(mean / mean.norm())
        images = torch.stack(
            [preprocess(Image.open(root / c / f"{j}.png").convert("RGB")) for c in COLOURS[:3] for j in range(2)]
        )
        logits = torch.nn.functional.normalize(model.encode_image(images), dim=-1) @ torch.stack(classes).t()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert scores["top1"] == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item())


@pytest.mark.parametrize(
    "args,expected",
    [
        (["-t", "translation"], "unknown task"),
        (["-t", "retrieval", "-d", "missing.json"], "missing.json"),
        (["-t", "captioning"], "generates text"),
        (["-t", "retrieval", "--batch-size", "0"], "batch_size"),
    ],
)
def test_eval_bad_input(flickr, tmp_path, args, expected):
    save_openclip_folder(tmp_path / "tiny")
    base = ["eval", "-m", str(tmp_path / "tiny"), "--image-root", str(flickr)]
    if "-d" not in args:
        args = [*args, "-d", str(flickr / "dataset_flickr30k.json")]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


METRICS = __import__("pathlib").Path(__file__).parent / "data" / "metrics"


def test_captioning_predictions_match_the_coco_caption_code(tmp_path):
    """Scores of a COCO results file against Karpathy-style references equal
    pycocoevalcap's on the same captions (recorded in tests/data/metrics). The
    images are not on disk: scoring reads JSON only, as the official code does."""
    expected = json.loads((METRICS / "coco_captions_expected.json").read_text())["scores"]
    args, label = _caption_predictions(tmp_path)
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    scores = report["results"]["captioning"][label]
    for metric in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert scores[metric] == pytest.approx(expected[metric], abs=1e-9), metric
    if "METEOR" not in scores:
        assert any("METEOR and SPICE skipped" in note for note in report["notes"])
        assert "note: METEOR and SPICE skipped" in result.stderr


def test_vqa_predictions_match_the_official_code(tmp_path):
    """Overall, per answer type and per question type equal the official
    vqaEval.py's on VQAv2-format files, with no COCO image on disk."""
    fixture = json.loads((METRICS / "vqa_official_expected.json").read_text())
    annotations = fixture["annotations"]
    records = annotations["annotations"] if isinstance(annotations, dict) else annotations
    questions = {
        "data_subtype": "val2014",
        "questions": [{"question_id": r["question_id"], "image_id": r["image_id"], "question": "what?"} for r in records],
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": records}))
    predictions = fixture["predictions"]
    (tmp_path / "results.json").write_text(json.dumps(predictions))
    args = [
        "eval",
        "-t",
        "vqa",
        "-d",
        str(tmp_path / "q.json"),
        "--annotations",
        str(tmp_path / "a.json"),
        "--image-root",
        str(tmp_path),
    ]
    result = runner.invoke(app, [*args, "--predictions", str(tmp_path / "results.json"), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["results"]["vqa"][str(tmp_path / "results.json")]
    official = fixture["official"]["accuracy"]
    assert scores["overall"] == pytest.approx(official["overall"])
    for kind, value in official["perAnswerType"].items():
        assert scores[kind] == pytest.approx(value)
    report = json.loads(result.stdout)
    per_type = report["breakdowns"]["vqa"][str(tmp_path / "results.json")]["per_question_type"]
    assert per_type == official["perQuestionType"] and len(per_type) > 1
    table = runner.invoke(app, [*args, "--predictions", str(tmp_path / "results.json"), "--verbose"])
    assert table.exit_code == 0, table.output
    for question_type, value in official["perQuestionType"].items():
        assert any(question_type in line and f"{value:.2f}" in line for line in table.stdout.splitlines()), question_type


class _EchoGenerator(Adapter):
    """A generating adapter stand-in: answers with the image's mean red value
    bucket, so the test can tell that images and questions stay aligned."""

    name, description = "echo", "test generator"

    def __init__(self):
        self.questions = []

    def tasks(self, model):
        return ("captioning", "vqa")

    def answer_questions(self, model, images, questions, **generation):
        self.questions += questions
        return ["yes" if img[0].mean() > img[2].mean() else "no" for img in images]

    def generate_captions(self, model, images, **generation):
        return ["a red square" if img[0].mean() > img[2].mean() else "a blue square" for img in images]


def test_vqa_and_captioning_run_a_generating_adapter(tmp_path, monkeypatch):
    from crossget_cli.evaluation import runner as evaluation

    save_openclip_folder(tmp_path / "tiny")
    echo = _EchoGenerator()
    monkeypatch.setattr(evaluation, "find_adapter", lambda model: echo)
    questions, records = [], []
    for qid, (image_id, colour) in enumerate([(1, "red"), (2, "blue"), (3, "red")]):
        Image.new("RGB", (32, 32), RGB[colour]).save(tmp_path / f"COCO_val2014_{image_id:012d}.jpg")
        questions.append({"question_id": qid, "image_id": image_id, "question": f"is it red? ({qid})"})
        truth = "yes" if colour == "red" else "no"
        records.append({"question_id": qid, "image_id": image_id, "answer_type": "yes/no", "answers": [{"answer": truth}] * 10})
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": records}))
    config = evaluation.EvalConfig(
        task="vqa", data=str(tmp_path / "q.json"), annotations=str(tmp_path / "a.json"), image_root=str(tmp_path), batch_size=2
    )
    report = evaluation.evaluate([str(tmp_path / "tiny")], config)
    assert report["results"]["vqa"][str(tmp_path / "tiny")]["overall"] == 100.0
    assert echo.questions == [q["question"] for q in questions]


def test_retrieval_from_a_saved_hf_dataset_with_column_mapping(flickr, tmp_path):
    from datasets import Dataset, Features, Image as ImageFeature, Sequence, Value

    model = save_openclip_folder(tmp_path / "tiny")
    names = [f"{c}.{'jpg' if i % 2 == 0 else 'png'}" for i, c in enumerate(COLOURS)]
    rows = {
        "picture": [str(flickr / n) for n in names],
        "texts": [[f"a {c} square.", f"a picture that is mostly {c}"] for c in COLOURS],
    }
    features = Features({"picture": ImageFeature(), "texts": Sequence(Value("string"))})
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hfdata"))
    args = ["eval", "-m", str(tmp_path / "tiny"), "-t", "retrieval", "-d", str(tmp_path / "hfdata")]
    result = runner.invoke(app, [*args, "--image-column", "picture", "--caption-column", "texts", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["results"]["retrieval"][str(tmp_path / "tiny")]
    assert scores == pytest.approx(retrieval_recall(*_independent_openclip_recall(model, flickr)))


def test_builtin_shapes_benchmark_through_eval(tmp_path, monkeypatch):
    """``--data builtin:shapes-test`` generates the seeded benchmark once (a small
    preset here) and evaluates on its test split."""
    from crossget_cli.data import shapes

    monkeypatch.setenv("CROSSGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(shapes.PRESETS, "shapes", shapes.ShapesConfig(grid=2, n_train=4, n_test=6))
    save_openclip_folder(tmp_path / "tiny")
    args = ["eval", "-m", str(tmp_path / "tiny"), "-t", "retrieval", "-d", "builtin:shapes-test", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["num_items"] == 6
    again = runner.invoke(app, args)  # served from the cache
    assert json.loads(again.stdout)["results"] == json.loads(first.stdout)["results"]

    # Hard-negative accuracy, recomputed image by image with open_clip's own transform and tokenizer.
    folder = next((tmp_path / "cache").iterdir())
    entries = [e for e in json.loads((folder / "dataset_shapes.json").read_text())["images"] if e["split"] == "test"]
    model = open_clip.create_model("local-dir:" + str(tmp_path / "tiny")).eval()
    preprocess = open_clip.image_transform(BPE_TINY["image_resolution"], is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=BPE_TINY["context_length"])
    wins = 0
    with torch.no_grad():
        for e in entries:
            image = model.encode_image(preprocess(Image.open(folder / e["filepath"] / e["filename"]).convert("RGB"))[None])
            captions = [e["sentences"][0]["raw"], *e["hard_negatives"]]
            scores = torch.cosine_similarity(image, model.encode_text(tokenizer(captions)))
            wins += bool((scores[0] > scores[1:]).all())
    assert len(entries[0]["hard_negatives"]) == 8
    got = json.loads(first.stdout)["results"]["retrieval"][str(tmp_path / "tiny")]["hard_neg_acc"]
    assert got == pytest.approx(100.0 * wins / len(entries))

    seeded = runner.invoke(app, [*args[:-3], "-d", "builtin:shapes-test@1", "--json"])
    assert seeded.exit_code == 0, seeded.output
    assert json.loads(seeded.stdout)["results"] != json.loads(first.stdout)["results"]  # other composites
    assert len(list((tmp_path / "cache").iterdir())) == 2
    bad = runner.invoke(app, ["eval", "-m", str(tmp_path / "tiny"), "-t", "retrieval", "-d", "builtin:nope"])
    assert bad.exit_code == 2 and "builtin:shapes" in bad.stderr


def _caption_predictions(tmp_path):
    """Karpathy references and a COCO results file (no images) from the recorded fixture."""
    fixture = json.loads((METRICS / "coco_captions_input.json").read_text())
    images = [
        {"filename": f"{image_id}.jpg", "cocoid": int(image_id), "split": "test", "sentences": [{"raw": r} for r in refs]}
        for image_id, refs in fixture["refs"].items()
    ]
    (tmp_path / "karpathy.json").write_text(json.dumps({"images": images}))
    results = [{"image_id": int(i), "caption": c} for i, c in fixture["hyps"].items()]
    (tmp_path / "results.json").write_text(json.dumps(results))
    args = ["eval", "-t", "captioning", "-d", str(tmp_path / "karpathy.json"), "--predictions", str(tmp_path / "results.json")]
    return args, str(tmp_path / "results.json")


def _spice_offline(self, gts, res):
    """SPICE on a machine without network: its downloader prints to stdout (from
    Python and from a child process), then fails."""
    import os

    print("Downloading stanford-corenlp-3.6.0 for SPICE ...")
    os.system("echo Downloading from a child process")
    raise RuntimeError("could not download stanford-corenlp-full-2015-12-09.zip")


@pytest.mark.skipif(
    __import__("crossget_cli.metrics.java_metrics", fromlist=["x"]).java_requirements_missing() != [],
    reason="METEOR needs pycocoevalcap and Java",
)
def test_meteor_is_reported_when_spice_fails(tmp_path, monkeypatch, capfd):
    """Only SPICE is mocked; METEOR is pycocoevalcap's, run in Java."""
    from pycocoevalcap.spice.spice import Spice

    monkeypatch.setattr(Spice, "compute_score", _spice_offline)
    args, label = _caption_predictions(tmp_path)
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing but the document on stdout
    scores = report["results"]["captioning"][label]
    expected = json.loads((METRICS / "coco_captions_expected.json").read_text())["scores"]
    assert scores["METEOR"] == pytest.approx(expected["METEOR"], abs=1e-6)
    assert "SPICE" not in scores
    assert [n for n in report["notes"] if n.startswith("SPICE skipped:")] and not any("METEOR" in n for n in report["notes"])
    assert "Downloading" not in capfd.readouterr().out  # the child's output went to stderr too


def test_each_java_metric_stands_alone_and_stdout_stays_json(tmp_path, monkeypatch, capfd):
    """Without Java here, the same contract with both scorers stood in for: a
    scorer that prints and one that fails."""
    from crossget_cli.metrics import java_metrics

    class Meteor:
        def compute_score(self, gts, res):
            print("METEOR: loading paraphrase table")
            return 0.25, []

    class Spice:
        compute_score = _spice_offline

    monkeypatch.setattr(java_metrics, "java_requirements_missing", lambda: [])
    monkeypatch.setattr(java_metrics, "_java_scorer", lambda name: {"METEOR": Meteor, "SPICE": Spice}[name]())
    args, label = _caption_predictions(tmp_path)
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["results"]["captioning"][label]["METEOR"] == 0.25
    assert "SPICE" not in report["results"]["captioning"][label]
    notes = report["notes"]
    assert len(notes) == 1 and notes[0].startswith("SPICE skipped: SPICE (pycocoevalcap, Java) failed: could not download")
    assert "note: SPICE skipped" in result.stderr
    assert "Downloading" not in capfd.readouterr().out


def test_install_hint_keeps_its_extra(tmp_path, monkeypatch):
    """Notes are printed as written: ``[coco]`` is not read as Rich markup."""
    from crossget_cli.metrics import java_metrics

    monkeypatch.setattr(java_metrics, "java_requirements_missing", lambda: ["a Java runtime"])
    args, _ = _caption_predictions(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "note: METEOR and SPICE skipped: they need pycocoevalcap (pip install 'crossget[coco]')" in result.stderr
