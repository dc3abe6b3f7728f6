from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

GOLDEN = Path(__file__).parent / "golden" / "clip_tiny.pt"


@pytest.fixture(scope="session")
def golden() -> dict:
    """Outputs of the official CrossGET code on a tiny random CLIP (SPEC §9)."""
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(autouse=True, scope="session")
def _easy_vqa_wheel_once():
    """Tests point CROSSGET_CACHE at temporary folders; the easy-vqa wheel the
    shapes benchmark reads is fetched once (into the default cache) and shared."""
    from crossget_cli.errors import CrossGetError
    from crossget_cli.data.easy_vqa import easy_vqa_wheel

    if "CROSSGET_EASY_VQA_WHEEL" in os.environ:
        yield
        return
    try:
        os.environ["CROSSGET_EASY_VQA_WHEEL"] = str(easy_vqa_wheel())
    except CrossGetError:  # no PyPI: the shapes tests say so themselves
        pass
    yield
    os.environ.pop("CROSSGET_EASY_VQA_WHEEL", None)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Eight coloured images with two captions each (Karpathy JSON, train split),
    for fine-tuning and training runs."""
    import json

    from PIL import Image

    from tiny_models import RGB

    root = tmp_path_factory.mktemp("shapes")
    images = []
    for i, (colour, rgb) in enumerate(RGB.items()):
        picture = Image.new("RGB", (32, 32), rgb)
        picture.paste((128, 128, 128), (4 * (i % 4), 8, 4 * (i % 4) + 8, 16))
        picture.save(root / f"{colour}.png")
        sentences = [{"raw": f"a {colour} picture"}, {"raw": f"something {colour}"}]
        images.append({"filename": f"{colour}.png", "split": "train", "sentences": sentences})
    (root / "data.json").write_text(json.dumps({"images": images}))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny open_clip model with CLIP's BPE vocabulary, saved as open_clip saves one."""
    from tiny_models import save_openclip_folder

    folder = tmp_path_factory.mktemp("model") / "tiny"
    save_openclip_folder(folder)
    return folder


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
