"""The easy-VQA composite benchmark (crossget_cli.data.shapes, .easy_vqa, .builtin)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from crossget_cli.data import builtin, easy_vqa, shapes
from crossget_cli.data.retrieval import load_retrieval
from crossget_cli.errors import CrossGetError

SMALL = shapes.ShapesConfig(n_train=12, n_test=6, seed=3)


def _phrases(caption: str) -> list[str]:
    return caption.split(", ")


def _one_attribute_apart(a: list[str], b: list[str], order: str) -> bool:
    """Whether caption b is caption a with exactly one object's colour or shape changed."""
    if len(a) != len(b):
        return False
    if order == "row-major":
        diff = [(x, y) for x, y in zip(a, b) if x != y]
        if len(diff) != 1:
            return False
        old, new = diff[0]
    else:
        removed, added = Counter(a) - Counter(b), Counter(b) - Counter(a)
        if sum(removed.values()) != 1 or sum(added.values()) != 1:
            return False
        (old,), (new,) = removed, added
    (c1, s1), (c2, s2) = old.split(" "), new.split(" ")
    return (c1 == c2) != (s1 == s2)


def test_same_seed_same_bytes_other_seed_differs():
    a = shapes.generate("test", 4, SMALL)
    b = shapes.generate("test", 4, SMALL)
    assert [c.image.tobytes() for c in a] == [c.image.tobytes() for c in b]
    assert [(c.caption, c.hard_negatives, c.objects) for c in a] == [(c.caption, c.hard_negatives, c.objects) for c in b]
    # composite i does not depend on how many are generated, nor on earlier calls
    assert shapes.generate("test", 1, SMALL, start=2)[0].image.tobytes() == a[2].image.tobytes()
    other = shapes.generate("test", 4, shapes.ShapesConfig(seed=4))
    assert all(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, other))
    assert [c.caption for c in a] != [c.caption for c in other]
    img = a[0].image
    assert img.mode == "RGB" and img.size == (96, 96)


def test_train_and_test_are_disjoint():
    train = shapes.generate("train", 40, SMALL)
    test = shapes.generate("test", 40, SMALL)
    assert not {c.image.tobytes() for c in train} & {c.image.tobytes() for c in test}
    # different source pools: easy-VQA train images for train, its test images for test
    train_records, _ = easy_vqa.source_images("train")
    test_records, _ = easy_vqa.source_images("test")
    assert len(train_records) == 4000 and len(test_records) == 1000
    assert max(o.source for c in test for o in c.objects) < 1000
    # within a composite no source image repeats
    for c in train + test:
        assert len({o.source for o in c.objects}) == len(c.objects)


def test_captions_match_the_drawn_objects():
    palette = np.array(list(easy_vqa.COLORS.values()), dtype=np.float64)
    names = list(easy_vqa.COLORS)
    for config in (SMALL, shapes.ShapesConfig(grid=(2, 3), object_size=40, crop=False, order="row-major", n_test=5)):
        size = config.object_size
        seen = 0
        for comp in shapes.generate("test", 25, config):
            pixels = np.asarray(comp.image, dtype=np.float64)
            assert pixels.shape == (*config.canvas, 3)
            expected = [o.phrase for o in comp.objects]
            assert _phrases(comp.caption) == (sorted(expected) if config.order == "sorted" else expected)
            assert [(o.row, o.col) for o in comp.objects] == sorted((o.row, o.col) for o in comp.objects)
            for o in comp.objects:
                y, x = (round(v - 0.5) for v in o.center)
                assert o.row * size <= y < (o.row + 1) * size and o.col * size <= x < (o.col + 1) * size
                if not config.crop and o.shape == "triangle":
                    continue  # a small uncropped triangle may be blended at its centre pixel
                patch = pixels[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].reshape(-1, 3).mean(0)  # averages noise
                distance = np.abs(palette - patch).max(1)
                assert names[int(distance.argmin())] == o.color, (comp.index, o)
                assert distance.min() < 4 * 12 / 3 + 12  # 4 sigma of a 9-pixel mean, plus a blended rim
                seen += 1
            # empty cells are flat light background: nothing but noise
            taken = {(o.row, o.col) for o in comp.objects}
            for r in range(config.grid[0]):
                for c in range(config.grid[1]):
                    if (r, c) not in taken:
                        cell = pixels[r * size : (r + 1) * size, c * size : (c + 1) * size]
                        assert cell.mean(axis=(0, 1)).min() > 225 and cell.std(axis=(0, 1)).max() < 16
        assert seen > 20


def test_crop_fills_cells_with_the_right_shape():
    """Shapes read back from a noiseless composite's cells: fill of the bounding box."""
    config = shapes.ShapesConfig(noise_sigma=0.0, empty_prob=0.0, object_size=48)
    for comp in shapes.generate("train", 5, config):
        pixels = np.asarray(comp.image).astype(np.int16)
        for o in comp.objects:
            cell = pixels[o.row * 48 : (o.row + 1) * 48, o.col * 48 : (o.col + 1) * 48]
            fg = np.abs(cell - cell[0, 0]).max(-1) > 60
            ys, xs = np.nonzero(fg)
            fill = fg.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
            shape = "rectangle" if fill > 0.9 else "circle" if fill > 0.68 else "triangle"
            assert shape == o.shape and max(np.ptp(ys), np.ptp(xs)) + 1 >= 32, (comp.index, o, fill)  # fills ~77%


def test_hard_negatives_change_exactly_one_attribute():
    for config in (SMALL, shapes.ShapesConfig(order="row-major", hard_negatives=9, empty_prob=0.9)):
        kinds = Counter()
        for comp in shapes.generate("train", 30, config):
            truth = _phrases(comp.caption)
            assert len(comp.hard_negatives) == config.hard_negatives
            assert len(set(comp.hard_negatives)) == len(comp.hard_negatives)
            assert comp.caption not in comp.hard_negatives
            for neg in comp.hard_negatives:
                phrases = _phrases(neg)
                assert _one_attribute_apart(truth, phrases, config.order), (comp.caption, neg)
                if config.order == "sorted":
                    assert phrases == sorted(phrases)
                kinds["shape" if Counter(p.split()[0] for p in phrases) == Counter(p.split()[0] for p in truth) else "color"] += 1
        assert kinds["shape"] >= kinds["color"] / 3 > 0  # both kinds, shape changes not swamped


def test_written_json_loads_through_load_retrieval(tmp_path):
    path = builtin.write_dataset(tmp_path / "shapes", SMALL)
    assert path == tmp_path / "shapes" / "dataset_shapes.json"
    test = load_retrieval(path, split="test")
    train = load_retrieval(path, split="train")
    assert len(test) == 6 and len(train) == 12 and len(test.captions) == 6
    assert test.caption_to_image == list(range(6))
    expected = shapes.generate("test", 6, SMALL)
    assert test.captions == [c.caption for c in expected]
    _, first = test.image_dataset()[0]
    assert first.tobytes() == expected[0].image.tobytes()  # PNG is lossless
    negatives = builtin.load_hard_negatives(path, "test")
    assert negatives == [list(c.hard_negatives) for c in expected]
    data = json.loads(path.read_text())
    entry = data["images"][0]
    assert entry["objects"][0].keys() >= {"color", "shape", "row", "col"} and entry["split"] == "train"
    assert data["config_hash"] == SMALL.hash()
    only_test = load_retrieval(path.parent / "dataset_shapes_test.json", split=None)
    assert only_test.captions == test.captions
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    with pytest.raises(CrossGetError, match="already exists"):
        builtin.write_dataset(tmp_path / "shapes", SMALL)
    builtin.write_dataset(tmp_path / "shapes", SMALL, {"test": 2}, overwrite=True)
    assert len(load_retrieval(path, split=None)) == 2


def test_hard_negative_accuracy_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    captions = torch.tensor([[1.0, 0.1], [0.0, 1.0], [1.0, 0.0]])
    negatives = torch.tensor(
        [
            [[0.0, 1.0], [1.0, 1.0]],  # image 0: true 0.995 beats 0 and 0.707
            [[0.1, 1.0], [5.0, 0.0]],  # image 1: true 1.0 beats 0.995 and 0
            [[0.0, -3.0], [1.0, 1.0]],  # image 2: true 0.707 loses to the negative (1, 1), the image itself
        ]
    )
    assert shapes.hard_negative_accuracy(images, captions, negatives) == pytest.approx(200 / 3)
    assert shapes.hard_negative_accuracy(images.numpy(), captions.numpy(), negatives[:, :1].numpy()) == pytest.approx(100.0)
    tie = shapes.hard_negative_accuracy(images[:1], captions[:1], captions[:1, None])  # a tie is not a win
    assert tie == 0.0
    with pytest.raises(CrossGetError, match="feature shapes"):
        shapes.hard_negative_accuracy(images, captions, negatives[:, 0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"grid": (0, 3)}, "grid"),
        ({"grid": (3, 3, 3)}, "grid"),
        ({"grid": 9}, "grid"),
        ({"object_size": 4}, "object_size"),
        ({"object_size": 32.0}, "object_size"),
        ({"noise_sigma": -0.1}, "noise_sigma"),
        ({"noise_sigma": float("nan")}, "noise_sigma"),
        ({"empty_prob": 1.0}, "empty_prob"),
        ({"crop": "yes"}, "crop"),
        ({"order": "random"}, "order"),
        ({"hard_negatives": 10}, "hard_negatives"),
        ({"hard_negatives": True}, "hard_negatives"),
        ({"seed": -1}, "seed"),
        ({"n_test": -5}, "n_test"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(CrossGetError, match=match):
        shapes.ShapesConfig(**kwargs)


def test_config_forms_and_bad_calls():
    assert shapes.ShapesConfig(grid=2).grid == (2, 2) and shapes.ShapesConfig(grid=[2, 4]).canvas == (64, 128)
    assert shapes.DEFAULT.canvas == (96, 96)
    assert shapes.ShapesConfig().hash() == shapes.DEFAULT.hash() != shapes.ShapesConfig(seed=1).hash()
    assert len(shapes.classnames()) == 24 and "red triangle" in shapes.classnames()
    with pytest.raises(CrossGetError, match="split"):
        shapes.generate("validation", 1)
    with pytest.raises(CrossGetError, match="split"):
        builtin.write_dataset("unused", SMALL, {"dev": 3})


def test_resolve_builtin_caches_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSGET_CACHE", str(tmp_path / "env-cache"))
    calls = []
    real = builtin.write_dataset
    monkeypatch.setattr(builtin, "write_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    small = shapes.ShapesConfig(n_train=3, n_test=2)
    path = builtin.resolve_builtin("builtin:shapes-test", config=small)
    assert path == tmp_path / "env-cache" / f"shapes-{small.hash()}" / "dataset_shapes_test.json"
    assert len(load_retrieval(path, split=None)) == 2 and len(load_retrieval(path, split="test")) == 2
    both = builtin.resolve_builtin("shapes", config=small)
    assert both.name == "dataset_shapes.json" and len(load_retrieval(both, split="train")) == 3
    assert builtin.resolve_builtin("builtin:shapes-train", config=small).parent == path.parent
    assert len(calls) == 1  # generated once, then re-used
    # a stored config that does not match is regenerated; an explicit cache_dir wins over the env
    meta = path.parent / "shapes_config.json"
    meta.write_text(meta.read_text().replace(small.hash(), "0" * 12))
    builtin.resolve_builtin("builtin:shapes-test", config=small)
    assert len(calls) == 2 and json.loads(meta.read_text())["config_hash"] == small.hash()
    other = builtin.resolve_builtin("builtin:shapes2x2-test", cache_dir=tmp_path / "mine", config=small)
    assert other.parent.parent == tmp_path / "mine" and other.parent.name.startswith("shapes2x2-")
    assert builtin.builtin_split("builtin:shapes-test") == "test" and builtin.builtin_split("shapes") is None
    with pytest.raises(CrossGetError, match="builtin:shapes-test"):
        builtin.resolve_builtin("builtin:circles")
    with pytest.raises(CrossGetError, match="no val"):
        builtin.resolve_builtin("builtin:shapes-val", config=small)


def test_max_objects_caps_the_composite_and_keeps_old_hashes():
    single = shapes.ShapesConfig(max_objects=1, n_train=0, n_test=40)
    composites = shapes.generate("test", 40, single)
    assert all(len(c.objects) == 1 and c.caption == c.objects[0].phrase for c in composites)
    assert len({(c.objects[0].row, c.objects[0].col) for c in composites}) > 3  # random cells
    assert all(c.caption in shapes.classnames() for c in composites)
    # Unset, the key neither changes the pixels nor the cache hash of existing configs.
    assert "max_objects" not in shapes.ShapesConfig().to_dict()
    capped = shapes.generate("test", 5, shapes.ShapesConfig(max_objects=9))
    uncapped = shapes.generate("test", 5, shapes.ShapesConfig())
    assert [c.caption for c in capped] == [c.caption for c in uncapped]


def test_single_object_set_reads_as_zero_shot_classification(tmp_path, monkeypatch):
    from crossget_cli.data.classification import load_classification

    monkeypatch.setenv("CROSSGET_CACHE", str(tmp_path))
    monkeypatch.setitem(shapes.PRESETS, "shapes1", shapes.ShapesConfig(max_objects=1, n_train=0, n_test=12))
    data = load_classification("builtin:shapes1-test")
    truth = [c.caption for c in shapes.generate("test", 12, shapes.PRESETS["shapes1"])]
    assert data.classnames == shapes.classnames() and [data.classnames[i] for i in data.labels] == truth
    with pytest.raises(CrossGetError, match="not class names"):
        monkeypatch.setitem(shapes.PRESETS, "shapes", shapes.ShapesConfig(grid=2, empty_prob=0.0, n_train=0, n_test=3))
        load_classification("builtin:shapes-test")


# -- the easy-VQA source: its wheel read as an archive, never installed -------------


def test_easy_vqa_is_not_installed_so_the_standard_test_package_is_not_shadowed():
    """The easy-vqa wheel installs a top-level ``test`` package; crossget reads the
    wheel instead of depending on it."""
    import importlib.metadata
    import importlib.util
    import sysconfig
    from pathlib import Path

    requires = importlib.metadata.requires("crossget") or []
    assert not [r for r in requires if r.lower().startswith("easy-vqa")]
    spec = importlib.util.find_spec("test")
    assert spec is None or Path(spec.origin).parent.parent == Path(sysconfig.get_paths()["stdlib"])


def test_a_wheel_other_than_the_pinned_one_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / easy_vqa.EASY_VQA_WHEEL
    fake.write_bytes(b"PK\x05\x06" + bytes(18))
    monkeypatch.setenv("CROSSGET_EASY_VQA_WHEEL", str(fake))
    with pytest.raises(CrossGetError, match="SHA-256 differs"):
        easy_vqa.easy_vqa_wheel()
    monkeypatch.setenv("CROSSGET_EASY_VQA_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(CrossGetError, match="no such file") as refused:
        easy_vqa.easy_vqa_wheel()
    assert "pip download easy-vqa==1.0 --no-deps" in refused.value.hint


def test_a_failed_fetch_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.delenv("CROSSGET_EASY_VQA_WHEEL", raising=False)
    monkeypatch.setenv("CROSSGET_CACHE", str(tmp_path / "cache"))
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version that satisfies the requirement\n")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(CrossGetError, match="cannot fetch the easy-vqa wheel.*Could not find a version"):
        easy_vqa.easy_vqa_wheel()
    assert list((tmp_path / "cache" / "sources").iterdir()) == []
