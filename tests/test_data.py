"""The evaluation data layer reads real files (written here into tmp_path) into exact records."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossget_cli.data.captions import load_captions
from crossget_cli.data.classification import load_classification, load_templates
from crossget_cli.data.images import HFImages, open_image
from crossget_cli.data.retrieval import load_retrieval
from crossget_cli.data.vqa import load_vqa
from crossget_cli.errors import CrossGetError

datasets = pytest.importorskip("datasets")

RED, GREEN, BLUE, YELLOW, WHITE = (220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 230, 20), (250, 250, 250)


@pytest.fixture(autouse=True)
def _quiet_datasets(monkeypatch, tmp_path):
    """No progress bars, and load_dataset caches under tmp_path (not ~/.cache)."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    yield
    if was_enabled:
        datasets.enable_progress_bars()


def make_image(path: Path, color, size=(12, 10), mode="RGB") -> Path:
    """A solid-colour image, saved as JPEG or PNG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def probe(img: Image.Image):
    """What a transform sees: mode, size and the centre colour."""
    return img.mode, img.size, img.getpixel((img.size[0] // 2, img.size[1] // 2))


def close(a, b, tol=12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def colors(images) -> list:
    """The palette colour nearest to each image's centre (JPEG is lossy)."""
    palette = (RED, GREEN, BLUE, YELLOW, WHITE)
    out = []
    for ref in images:
        pixel = probe(open_image(ref))[2]
        out.append(min(palette, key=lambda c: sum((a - b) ** 2 for a, b in zip(c, pixel))))
    return out


# --------------------------------------------------------------------------- fixtures on disk


@pytest.fixture
def flickr(tmp_path):
    """A Karpathy flickr-style JSON, images flat under images/ (JPEG and PNG)."""
    root = tmp_path / "flickr"
    make_image(root / "images" / "100.jpg", RED)
    make_image(root / "images" / "200.png", GREEN)
    make_image(root / "images" / "300.jpg", BLUE)
    make_image(root / "images" / "400.png", YELLOW)
    spec = {
        "dataset": "flickr30k",
        "images": [
            {"filename": "100.jpg", "split": "train", "imgid": 0, "sentences": [{"raw": "a red train image.", "tokens": []}]},
            {
                "filename": "200.png",
                "split": "test",
                "imgid": 1,
                "sentences": [{"raw": "green one "}, {"raw": "green two"}, {"tokens": ["green", "three"]}],
            },
            {"filename": "300.jpg", "split": "val", "imgid": 2, "sentences": [{"raw": "blue val"}]},
            {"filename": "400.png", "split": "test", "imgid": 3, "sentences": [{"raw": "yellow one"}, {"raw": "yellow two"}]},
        ],
    }
    ann = root / "dataset_flickr30k.json"
    ann.write_text(json.dumps(spec))
    return ann, root / "images"


# --------------------------------------------------------------------------- retrieval


def test_karpathy_flickr_split_and_exact_records(flickr):
    ann, images = flickr
    r = load_retrieval(ann, image_root=images)
    assert r.image_paths == [str(images / "200.png"), str(images / "400.png")]
    assert r.captions == ["green one", "green two", "green three", "yellow one", "yellow two"]
    assert r.caption_to_image == [0, 0, 0, 1, 1]
    assert r.image_to_captions == [[0, 1, 2], [3, 4]]
    assert r.image_ids == [1, 3]
    assert len(r) == 2

    train = load_retrieval(ann, image_root=images, split="train")
    assert train.captions == ["a red train image."] and train.image_paths == [str(images / "100.jpg")]
    both = load_retrieval(ann, image_root=images, split="train+val")
    assert both.image_ids == [0, 2]
    assert len(load_retrieval(ann, image_root=images, split=None)) == 4


def test_transform_receives_rgb_pil_of_the_right_file(flickr):
    ann, images = flickr
    r = load_retrieval(ann, image_root=images)
    seen = [probe_item for _, probe_item in r.image_dataset(probe)]
    assert [s[0] for s in seen] == ["RGB", "RGB"]
    assert seen[0][1] == (12, 10)
    assert close(seen[0][2], GREEN) and close(seen[1][2], YELLOW)
    index, img = r.image_dataset()[1]
    assert index == 1 and isinstance(img, Image.Image) and img.mode == "RGB"

    def to_tensor(img):
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255

    loader = torch.utils.data.DataLoader(r.image_dataset(to_tensor), batch_size=2)
    idx, batch = next(iter(loader))
    assert idx.tolist() == [0, 1] and batch.shape == (2, 3, 10, 12)
    assert batch[0, 1].mean() > 0.7 and batch[0, 0].mean() < 0.2  # green


def test_non_rgb_images_become_rgb(tmp_path):
    make_image(tmp_path / "gray.png", (128, 128, 128), mode="L")
    make_image(tmp_path / "alpha.png", BLUE, mode="RGBA")
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 200, 30] * 256)
    pal.info["transparency"] = 5
    pal.save(tmp_path / "pal.png", transparency=5)
    for name, want in [("gray.png", (128, 128, 128)), ("alpha.png", BLUE), ("pal.png", (10, 200, 30))]:
        img = open_image(str(tmp_path / name))
        assert img.mode == "RGB" and img.getpixel((1, 1)) == want
    assert open_image(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_limit_keeps_first_images_and_their_captions(flickr):
    ann, images = flickr
    r = load_retrieval(ann, image_root=images, split=None, limit=2)
    assert r.image_ids == [0, 1]
    assert r.captions == ["a red train image.", "green one", "green two", "green three"]
    assert r.caption_to_image == [0, 1, 1, 1]
    assert r.image_to_captions == [[0], [1, 2, 3]]
    assert r.limit(None) is r and r.limit(10) is r


def test_limit_renumbers_interleaved_captions(tmp_path):
    for name, c in [("a.png", RED), ("b.png", GREEN), ("c.png", BLUE)]:
        make_image(tmp_path / name, c)
    (tmp_path / "pairs.csv").write_text("image,caption\nc.png,c1\na.png,a1\nb.png,b1\nc.png,c2\na.png,a2\n")
    r = load_retrieval(tmp_path / "pairs.csv")
    assert r.image_paths == [str(tmp_path / n) for n in ("c.png", "a.png", "b.png")]
    assert r.caption_to_image == [0, 1, 2, 0, 1]
    small = r.limit(2)
    assert small.captions == ["c1", "a1", "c2", "a2"]
    assert small.caption_to_image == [0, 1, 0, 1]
    assert small.image_to_captions == [[0, 2], [1, 3]]
    assert colors(small.image_paths) == [BLUE, RED]


def test_karpathy_coco_filepath_joins_under_image_root(tmp_path):
    coco = tmp_path / "coco"
    make_image(coco / "val2014" / "COCO_val2014_000000000042.jpg", RED)
    make_image(coco / "train2014" / "COCO_train2014_000000000007.png", GREEN)
    spec = {
        "images": [
            {
                "filepath": "val2014",
                "filename": "COCO_val2014_000000000042.jpg",
                "split": "test",
                "cocoid": 42,
                "imgid": 0,
                "sentences": [{"raw": "red coco"}],
            },
            {
                "filepath": "train2014",
                "filename": "COCO_train2014_000000000007.png",
                "split": "restval",
                "cocoid": 7,
                "imgid": 1,
                "sentences": [{"raw": "green coco"}],
            },
        ]
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(spec))
    r = load_retrieval(tmp_path / "dataset_coco.json", image_root=coco)
    assert r.image_paths == [str(coco / "val2014" / "COCO_val2014_000000000042.jpg")]
    assert r.image_ids == [42] and r.captions == ["red coco"]
    rest = load_retrieval(tmp_path / "dataset_coco.json", image_root=coco, split="restval")
    assert colors(rest.image_paths) == [GREEN]


def test_blip_list_json_test_and_train_shapes(tmp_path):
    make_image(tmp_path / "imgs" / "flickr30k-images" / "1.jpg", RED)
    make_image(tmp_path / "imgs" / "flickr30k-images" / "2.png", BLUE)
    test = [
        {"image": "flickr30k-images/1.jpg", "caption": ["red a", "red b"]},
        {"image": "flickr30k-images/2.png", "caption": ["blue a"]},
    ]
    (tmp_path / "flickr30k_test.json").write_text(json.dumps(test))
    r = load_retrieval(tmp_path / "flickr30k_test.json", image_root=tmp_path / "imgs")
    assert r.image_paths == [str(tmp_path / "imgs" / "flickr30k-images" / n) for n in ("1.jpg", "2.png")]
    assert r.captions == ["red a", "red b", "blue a"] and r.caption_to_image == [0, 0, 1]
    assert r.image_ids == ["flickr30k-images/1.jpg", "flickr30k-images/2.png"]

    train = [  # BLIP's train files: one caption per entry, images repeated, an image_id key
        {"image": "flickr30k-images/1.jpg", "caption": "red a", "image_id": "1"},
        {"image": "flickr30k-images/2.png", "caption": "blue a", "image_id": "2"},
        {"image": "flickr30k-images/1.jpg", "caption": "red b", "image_id": "1"},
    ]
    (tmp_path / "flickr30k_train.json").write_text(json.dumps(train))
    t = load_retrieval(tmp_path / "flickr30k_train.json", image_root=tmp_path / "imgs")
    assert t.image_ids == ["1", "2"] and t.image_to_captions == [[0, 2], [1]]
    assert colors(t.image_paths) == [RED, BLUE]


def test_csv_tsv_and_jsonl_with_custom_columns(tmp_path):
    make_image(tmp_path / "pics" / "r.jpg", RED)
    make_image(tmp_path / "pics" / "g.png", GREEN)
    (tmp_path / "pairs.csv").write_text(
        'filepath,title,extra\npics/r.jpg,"a red, square",x\npics/g.png,green,y\npics/r.jpg,red again,z\n'
    )
    r = load_retrieval(tmp_path / "pairs.csv", image_column="filepath", caption_column="title")
    assert r.image_paths == [str(tmp_path / "pics" / "r.jpg"), str(tmp_path / "pics" / "g.png")]
    assert r.captions == ["a red, square", "green", "red again"]
    assert r.image_to_captions == [[0, 2], [1]]

    (tmp_path / "pairs.tsv").write_text("image\tcaption\npics/g.png\tgreen tab\n")
    assert load_retrieval(tmp_path / "pairs.tsv").captions == ["green tab"]

    lines = [{"image": "g.png", "caption": ["g1", "g2"]}, {"image": "r.jpg", "caption": "r1"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    j = load_retrieval(tmp_path / "pairs.jsonl", image_root=tmp_path / "pics")
    assert j.captions == ["g1", "g2", "r1"] and j.caption_to_image == [0, 0, 1]
    assert colors(j.image_paths) == [GREEN, RED]


def test_images_are_opened_lazily(tmp_path):
    (tmp_path / "broken.jpg").write_text("not an image")
    (tmp_path / "pairs.csv").write_text("image,caption\nbroken.jpg,nothing\n")
    r = load_retrieval(tmp_path / "pairs.csv")  # loading reads no image
    with pytest.raises(CrossGetError, match="cannot read image .*broken.jpg"):
        r.image_dataset(probe)[0]


def _hf_retrieval_dataset(tmp_path) -> datasets.Dataset:
    make_image(tmp_path / "src" / "red.jpg", RED)
    make_image(tmp_path / "src" / "green.png", GREEN)
    make_image(tmp_path / "src" / "blue.png", BLUE)
    features = datasets.Features(
        {"image": datasets.Image(), "caption": datasets.Value("string"), "image_id": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [str(tmp_path / "src" / n) for n in ("red.jpg", "green.png", "red.jpg", "blue.png")],
            "caption": ["red 1", "green 1", "red 2", "blue 1"],
            "image_id": [10, 20, 10, 30],
        },
        features=features,
    )


def test_hf_save_to_disk_image_feature_groups_rows(tmp_path):
    in_memory = load_retrieval(_hf_retrieval_dataset(tmp_path))  # Image feature holding paths only
    assert in_memory.image_to_captions == [[0, 2], [1], [3]] and colors(in_memory.image_paths) == [RED, GREEN, BLUE]
    _hf_retrieval_dataset(tmp_path).save_to_disk(tmp_path / "saved")
    (tmp_path / "src" / "red.jpg").unlink()  # bytes were embedded on save: no source file needed
    r = load_retrieval(str(tmp_path / "saved"))
    assert isinstance(r.image_paths, HFImages) and len(r.image_paths) == 3
    assert r.captions == ["red 1", "green 1", "red 2", "blue 1"]
    assert r.image_to_captions == [[0, 2], [1], [3]]
    assert r.image_ids == [10, 20, 30]
    seen = [p for _, p in r.image_dataset(probe)]
    assert [s[0] for s in seen] == ["RGB"] * 3
    assert [close(s[2], c) for s, c in zip(seen, (RED, GREEN, BLUE))] == [True] * 3

    small = r.limit(2)
    assert isinstance(small.image_paths, HFImages) and small.captions == ["red 1", "green 1", "red 2"]
    clone = pickle.loads(pickle.dumps(small.image_dataset(probe)))  # DataLoader workers pickle it
    assert close(clone[1][1][2], GREEN)


def test_hf_dataset_dict_splits_and_list_captions(tmp_path):
    for name, c in [("a.png", RED), ("b.jpg", GREEN), ("c.png", BLUE)]:
        make_image(tmp_path / "img" / name, c)
    features = datasets.Features({"picture": datasets.Image(), "texts": datasets.List(datasets.Value("string"))})
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"picture": [str(tmp_path / "img" / "a.png")], "texts": [["train red"]]}, features=features
            ),
            "test": datasets.Dataset.from_dict(
                {"picture": [str(tmp_path / "img" / "b.jpg"), str(tmp_path / "img" / "c.png")], "texts": [["g1", "g2"], ["b1"]]},
                features=features,
            ),
        }
    )
    dd.save_to_disk(tmp_path / "dd")
    r = load_retrieval(tmp_path / "dd", image_column="picture", caption_column="texts")
    assert r.captions == ["g1", "g2", "b1"] and r.caption_to_image == [0, 0, 1]
    assert r.image_ids is None
    assert colors(r.image_paths) == [GREEN, BLUE]
    t = load_retrieval(tmp_path / "dd", split="train", image_column="picture", caption_column="texts")
    assert t.captions == ["train red"] and colors(t.image_paths) == [RED]
    with pytest.raises(CrossGetError, match="no split 'validation'") as err:
        load_retrieval(tmp_path / "dd", split="validation", image_column="picture", caption_column="texts")
    assert "train, test" in err.value.hint


def test_hf_path_column_and_karpathy_split_column(tmp_path):
    for name, c in [("a.png", RED), ("b.png", GREEN), ("c.png", BLUE)]:
        make_image(tmp_path / "img" / name, c)
    ds = datasets.Dataset.from_dict(
        {
            "image": ["a.png", "b.png", "c.png"],
            "caption": [["ra", "rb"], ["ga"], ["ba"]],
            "split": ["train", "test", "test"],
            "img_id": [0, 1, 2],
        }
    )
    r = load_retrieval(ds, image_root=tmp_path / "img")  # an in-memory Dataset object works too
    assert r.captions == ["ga", "ba"] and r.image_ids == [1, 2]
    assert r.image_paths[0] == str(tmp_path / "img" / "b.png")
    assert colors(r.image_paths) == [GREEN, BLUE]
    with pytest.raises(CrossGetError, match="no rows with split 'dev'"):
        load_retrieval(ds, image_root=tmp_path / "img", split="dev")
    with pytest.raises(CrossGetError, match=r"2 of 2 images .* not found") as err:
        load_retrieval(ds, image_root=tmp_path / "elsewhere")
    assert "--image-root" in err.value.hint


def test_hf_load_dataset_on_a_parquet_folder(tmp_path):
    _hf_retrieval_dataset(tmp_path).select([1, 3]).to_parquet(str(tmp_path / "pq" / "test.parquet"))
    r = load_retrieval(tmp_path / "pq")
    assert r.captions == ["green 1", "blue 1"] and r.image_ids == [20, 30]
    assert colors(r.image_paths) == [GREEN, BLUE]


def test_captions_reuse_retrieval_formats(flickr):
    ann, images = flickr
    c = load_captions(ann, image_root=images, limit=1)
    assert c.references == [["green one", "green two", "green three"]]
    assert c.image_paths == [str(images / "200.png")] and c.image_ids == [1]
    assert close(c.image_dataset(probe)[0][1][2], GREEN)
    assert load_captions(ann, image_root=images).limit(1).references == c.references


# --------------------------------------------------------------------------- classification


def test_image_folder(tmp_path):
    root = tmp_path / "pets"
    make_image(root / "tabby_cat" / "b.png", GREEN)
    make_image(root / "tabby_cat" / "a.jpg", RED)
    make_image(root / "golden_retriever" / "nested" / "x.JPEG", BLUE)
    (root / "golden_retriever" / "notes.txt").write_text("not an image")
    (root / "zebra").mkdir()  # an empty class keeps its index
    c = load_classification(root)
    assert c.classnames == ["golden retriever", "tabby cat", "zebra"]
    assert c.images == [
        str(root / "golden_retriever" / "nested" / "x.JPEG"),
        str(root / "tabby_cat" / "a.jpg"),
        str(root / "tabby_cat" / "b.png"),
    ]
    assert c.labels == [0, 1, 1]
    assert colors(c.images) == [BLUE, RED, GREEN]
    assert [close(p[2], col) for (_, p), col in zip(c.image_dataset(probe), (BLUE, RED, GREEN))] == [True] * 3
    assert c.limit(2).labels == [0, 1] and c.limit(2).classnames == c.classnames

    named = load_classification(root, classnames=["dog", "cat", "horse"])
    assert named.classnames == ["dog", "cat", "horse"]


def test_image_folder_split_subfolders(tmp_path):
    make_image(tmp_path / "ds" / "train" / "ant" / "1.png", RED)
    make_image(tmp_path / "ds" / "val" / "ant" / "2.png", GREEN)
    make_image(tmp_path / "ds" / "val" / "bee" / "3.png", BLUE)
    c = load_classification(tmp_path / "ds", split="val")
    assert c.classnames == ["ant", "bee"] and c.labels == [0, 1]
    assert colors(c.images) == [GREEN, BLUE]
    with pytest.raises(CrossGetError, match="no split folder 'test'") as err:
        load_classification(tmp_path / "ds", split="test")
    assert "train, val" in err.value.hint


def test_classification_csv_indices_and_names(tmp_path):
    make_image(tmp_path / "i" / "0.png", RED)
    make_image(tmp_path / "i" / "1.jpg", GREEN)
    (tmp_path / "names.txt").write_text("red thing\ngreen thing\n\n")
    (tmp_path / "idx.csv").write_text("path,y\ni/1.jpg,1\ni/0.png,0\n")
    c = load_classification(tmp_path / "idx.csv", image_column="path", label_column="y", classnames=tmp_path / "names.txt")
    assert c.labels == [1, 0] and c.classnames == ["red thing", "green thing"]
    assert colors(c.images) == [GREEN, RED]

    rows = [{"image": "i/0.png", "label": "red"}, {"image": "i/1.jpg", "label": "green"}, {"image": "i/0.png", "label": "red"}]
    (tmp_path / "names.jsonl").write_text("\n".join(map(json.dumps, rows)))
    n = load_classification(tmp_path / "names.jsonl")
    assert n.classnames == ["green", "red"] and n.labels == [1, 0, 1]
    given = load_classification(tmp_path / "names.jsonl", classnames=["red", "green"])
    assert given.labels == [0, 1, 0]
    with pytest.raises(CrossGetError, match="'red' .* not one of the 2 class names"):
        load_classification(tmp_path / "names.jsonl", classnames=["blue", "green"])
    with pytest.raises(CrossGetError, match="class indices but no class names") as err:
        load_classification(tmp_path / "idx.csv", image_column="path", label_column="y")
    assert "--classnames" in err.value.hint
    with pytest.raises(CrossGetError, match="label 1 .* out of range for 1 classes"):
        load_classification(tmp_path / "idx.csv", image_column="path", label_column="y", classnames=["only"])


def test_classification_hf_class_label(tmp_path):
    make_image(tmp_path / "a.png", RED)
    make_image(tmp_path / "b.jpg", GREEN)
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["apple", "bee", "cup"])})
    dd = datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_dict(
                {"img": [str(tmp_path / "b.jpg"), str(tmp_path / "a.png")], "fine_label": [2, 0]}, features=features
            ),
            "train": datasets.Dataset.from_dict({"img": [str(tmp_path / "a.png")], "fine_label": [1]}, features=features),
        }
    )
    dd.save_to_disk(tmp_path / "cifar")
    c = load_classification(tmp_path / "cifar", split="test", image_column="img", label_column="fine_label")
    assert c.classnames == ["apple", "bee", "cup"] and c.labels == [2, 0]
    assert [close(p[2], col) for (_, p), col in zip(c.image_dataset(probe), (GREEN, RED))] == [True, True]
    with pytest.raises(CrossGetError, match="several splits: test, train"):
        load_classification(tmp_path / "cifar", image_column="img", label_column="fine_label")
    with pytest.raises(CrossGetError, match="no column 'label'") as err:
        load_classification(tmp_path / "cifar", split="test", image_column="img")
    assert "--label-column" in err.value.hint and "fine_label" in err.value.message


def test_templates(tmp_path):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    t = load_templates("openai-imagenet")
    assert len(t) == 80 and t == [f("{}") for f in OPENAI_IMAGENET_TEMPLATES]
    assert t[0] == "a bad photo of a {}." and t[-1] == "a tattoo of the {}."
    assert load_templates("simple") == ["a photo of a {}."]
    (tmp_path / "t.txt").write_text("# mine\na photo of a {}.\n\n  itap of my {}.  \n")
    assert load_templates(tmp_path / "t.txt") == ["a photo of a {}.", "itap of my {}."]
    (tmp_path / "bad.txt").write_text("a photo of a {}.\na photo of a cat.\n")
    with pytest.raises(CrossGetError, match="line 2: template 'a photo of a cat.' must contain exactly one {}"):
        load_templates(tmp_path / "bad.txt")
    with pytest.raises(CrossGetError, match="template file .*nope.txt not found") as err:
        load_templates(tmp_path / "nope.txt")
    assert "openai-imagenet" in err.value.hint


# --------------------------------------------------------------------------- VQA


@pytest.fixture
def vqav2(tmp_path):
    root = tmp_path / "coco"
    make_image(root / "val2014" / "COCO_val2014_000000000042.jpg", RED)
    make_image(root / "val2014" / "COCO_val2014_000000000007.jpg", BLUE)
    questions = {
        "data_type": "mscoco",
        "data_subtype": "val2014",
        "task_type": "Open-Ended",
        "questions": [
            {"question_id": 420, "image_id": 42, "question": "What color is it?"},
            {"question_id": 70, "image_id": 7, "question": "Is it blue?"},
            {"question_id": 421, "image_id": 42, "question": "Is it red?"},
        ],
    }
    annotations = {
        "data_subtype": "val2014",
        "annotations": [
            {
                "question_id": 70,
                "image_id": 7,
                "answer_type": "yes/no",
                "multiple_choice_answer": "yes",
                "answers": [{"answer": "yes", "answer_id": i + 1, "answer_confidence": "yes"} for i in range(10)],
            },
            {
                "question_id": 420,
                "image_id": 42,
                "answer_type": "other",
                "multiple_choice_answer": "red",
                "answers": [{"answer": a} for a in ["red"] * 9 + ["orange"]],
            },
            {
                "question_id": 421,
                "image_id": 42,
                "answer_type": "yes/no",
                "multiple_choice_answer": "yes",
                "answers": [{"answer": "yes"}],
            },
        ],
    }
    q = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    a = tmp_path / "v2_mscoco_val2014_annotations.json"
    q.write_text(json.dumps(questions))
    a.write_text(json.dumps(annotations))
    return q, a, root


def test_vqav2_questions_and_annotations(vqav2):
    q, a, root = vqav2
    v = load_vqa(q, annotations=a, image_root=root)
    img42 = str(root / "val2014" / "COCO_val2014_000000000042.jpg")
    assert v.question_ids == [420, 70, 421]
    assert v.image_paths == [img42, str(root / "val2014" / "COCO_val2014_000000000007.jpg"), img42]
    assert v.questions == ["What color is it?", "Is it blue?", "Is it red?"]
    assert v.image_ids == [42, 7, 42]
    assert v.answers[0] == ["red"] * 9 + ["orange"] and v.answers[1] == ["yes"] * 10
    assert v.multiple_choice_answers == ["red", "yes", "yes"]
    assert v.answer_types == ["other", "yes/no", "yes/no"]
    assert [close(p[2], c) for (_, p), c in zip(v.image_dataset(probe), (RED, BLUE, RED))] == [True] * 3
    short = v.limit(2)
    assert short.question_ids == [420, 70] and short.answers == v.answers[:2]

    flat = load_vqa(q, image_root=root / "val2014", split="val")  # flat image folder, split given
    assert flat.image_paths[0] == img42 and flat.answers is None


def test_vqav2_bad_inputs(vqav2, tmp_path):
    q, a, root = vqav2
    with pytest.raises(CrossGetError, match=r"2 of 2 images .* not found, e.g. .*COCO_test2015_000000000042.jpg"):
        load_vqa(q, image_root=root, split="test-dev")
    partial = json.loads(a.read_text())
    partial["annotations"] = partial["annotations"][:1]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(CrossGetError, match="2 of 3 questions have no annotation .* question_id 420"):
        load_vqa(q, annotations=tmp_path / "partial.json", image_root=root)
    with pytest.raises(CrossGetError, match="is a VQA annotation file"):
        load_vqa(a, image_root=root)
    with pytest.raises(CrossGetError, match="annotation file .*missing.json not found"):
        load_vqa(q, annotations=tmp_path / "missing.json", image_root=root)


def test_vqa_jsonl(tmp_path):
    make_image(tmp_path / "im" / "x.png", GREEN)
    rows = [
        {"question_id": "q1", "image": "im/x.png", "question": "What color?", "answers": ["green", "lime"]},
        {"image": "im/x.png", "question": "Is it red?", "answers": "no", "image_id": 5},
    ]
    (tmp_path / "vqa.jsonl").write_text("\n".join(map(json.dumps, rows)))
    v = load_vqa(tmp_path / "vqa.jsonl")
    assert v.question_ids == ["q1", 1] and v.questions == ["What color?", "Is it red?"]
    assert v.answers == [["green", "lime"], ["no"]] and v.image_ids == [None, 5]
    assert v.image_paths == [str(tmp_path / "im" / "x.png")] * 2
    assert close(v.image_dataset(probe)[1][1][2], GREEN)
    rows[1].pop("answers")
    (tmp_path / "vqa2.jsonl").write_text("\n".join(map(json.dumps, rows)))
    with pytest.raises(CrossGetError, match="record 2 has no 'answers'") as err:
        load_vqa(tmp_path / "vqa2.jsonl")
    assert "--answers-column" in err.value.hint


# --------------------------------------------------------------------------- bad inputs


def test_missing_data_file(tmp_path):
    with pytest.raises(CrossGetError, match="data file .*dataset_flickr30k.json not found"):
        load_retrieval(tmp_path / "dataset_flickr30k.json")
    with pytest.raises(CrossGetError, match="data file .*labels.csv not found"):
        load_classification(str(tmp_path / "labels.csv"))


def test_missing_image(flickr):
    ann, images = flickr
    (images / "400.png").unlink()
    with pytest.raises(CrossGetError, match=r"1 of 2 images of .*dataset_flickr30k.json not found, e.g. .*400.png") as err:
        load_retrieval(ann, image_root=images)
    assert "--image-root" in err.value.hint
    with pytest.raises(CrossGetError, match="not found") as err:  # no image_root: paths are relative to the JSON's folder
        load_retrieval(ann)
    assert "pass --image-root" in err.value.hint
    with pytest.raises(CrossGetError, match=r"image .*gone.png not found"):
        open_image(str(images / "gone.png"))


def test_unknown_split(flickr):
    ann, images = flickr
    with pytest.raises(CrossGetError, match="no images with split 'tset'") as err:
        load_retrieval(ann, image_root=images, split="tset")
    assert err.value.hint == "choose --split from: test, train, val"


def test_malformed_json(tmp_path):
    (tmp_path / "dataset_coco.json").write_text('{"images": [{"filename": "a.jpg",, }]}')
    with pytest.raises(CrossGetError, match=r"dataset_coco.json is not valid JSON: .* line 1 column"):
        load_retrieval(tmp_path / "dataset_coco.json")
    (tmp_path / "bad.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n{"image": \n')
    with pytest.raises(CrossGetError, match="bad.jsonl line 2 is not valid JSON"):
        load_retrieval(tmp_path / "bad.jsonl")
    (tmp_path / "odd.json").write_text('{"annotations": []}')
    with pytest.raises(CrossGetError, match="neither a Karpathy split JSON"):
        load_retrieval(tmp_path / "odd.json")
    (tmp_path / "nosent.json").write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "test"}]}))
    with pytest.raises(CrossGetError, match="image a.jpg has no 'sentences' list"):
        load_retrieval(tmp_path / "nosent.json")


def test_missing_column(tmp_path):
    make_image(tmp_path / "a.png", RED)
    (tmp_path / "pairs.csv").write_text("image,text\na.png,hello\n")
    with pytest.raises(CrossGetError, match=r"pairs.csv record 1 has no 'caption' \(its keys: image, text\)") as err:
        load_retrieval(tmp_path / "pairs.csv")
    assert "--caption-column" in err.value.hint
    assert load_retrieval(tmp_path / "pairs.csv", caption_column="text").captions == ["hello"]
    ds = datasets.Dataset.from_dict({"img": [str(tmp_path / "a.png")], "caption": ["x"]})
    with pytest.raises(CrossGetError, match=r"has no column 'image' \(columns: img, caption\)") as err:
        load_retrieval(ds)
    assert "--image-column" in err.value.hint
    numbers = datasets.Dataset.from_dict({"image": [3], "caption": ["x"]})
    with pytest.raises(CrossGetError, match="column 'image' .* holds Value.*int64.*not images or image paths"):
        load_retrieval(numbers)


def test_empty_dataset(tmp_path):
    (tmp_path / "empty.csv").write_text("image,caption\n")
    with pytest.raises(CrossGetError, match="empty.csv holds no images"):
        load_retrieval(tmp_path / "empty.csv")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(CrossGetError, match="empty.json holds no images"):
        load_retrieval(tmp_path / "empty.json")
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    with pytest.raises(CrossGetError, match="folder holds no images"):
        load_classification(tmp_path / "folder")
    empty = datasets.Dataset.from_dict({"image": [], "caption": []})
    with pytest.raises(CrossGetError, match="the given dataset is empty"):
        load_retrieval(empty)
    datasets.DatasetDict({"test": empty}).save_to_disk(tmp_path / "saved")
    with pytest.raises(CrossGetError, match="saved"):
        load_retrieval(tmp_path / "saved")
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": []}))
    with pytest.raises(CrossGetError, match="q.json holds no questions"):
        load_vqa(tmp_path / "q.json")


def test_hub_failure_is_one_clear_error(monkeypatch):
    def offline(name, split=None, **kwargs):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CrossGetError, match="cannot load dataset 'nlphuji/flickr30k' \\(split 'test'\\): Couldn't reach") as err:
        load_retrieval("nlphuji/flickr30k")
    assert "Hugging Face cache" in err.value.hint
    with pytest.raises(CrossGetError, match="cannot load dataset 'some/imagenet': Couldn't reach"):
        load_classification("hf:some/imagenet")


def test_bad_limit(flickr):
    ann, images = flickr
    with pytest.raises(CrossGetError, match="limit must be at least 1"):
        load_retrieval(ann, image_root=images, limit=0)
