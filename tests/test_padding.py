"""A caption's reduced text features do not depend on the padding its batch
gives it: padding is neither merged into real tokens nor attended (#17).

The reference: each caption encoded alone, without padding, by the same
patched model."""

from __future__ import annotations

import pytest
import torch

import crossget_cli
import tiny_blip
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.loading.preprocessing import model_io
from crossget_cli.loading.models import load_model
from tiny_models import save_hf_folder

CAPTIONS = [  # 4 to 14 tokens with SOT and EOT; the tiny model's context is 16
    "a dog",
    "a red square on a blue background next to a circle",
    "two cats sleeping now",
    "a small bird on a branch",
    "a yellow triangle",
]


def _text_features(model, batch) -> torch.Tensor:
    out = model.get_text_features(**batch)
    return getattr(out, "pooler_output", out)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_clip")
    save_hf_folder(folder)
    return folder


@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_hf_clip_text_features_do_not_depend_on_padding(hf_folder, method):
    loaded = load_model(str(hf_folder))
    model = crossget_cli.patch(loaded.model.eval(), text_r=3, method=method)
    tokenizer = loaded.tokenizer
    with torch.no_grad():
        padded = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
        assert padded["attention_mask"].sum(dim=1).unique().numel() == len(CAPTIONS)  # all lengths differ
        batch = _text_features(model, padded)
        alone = torch.cat([_text_features(model, tokenizer([c], return_tensors="pt")) for c in CAPTIONS])
        to_context = _text_features(model, tokenizer(CAPTIONS, padding="max_length", max_length=16, return_tensors="pt"))
    # The features differ from the unpatched ones (the reduction ran) ...
    with torch.no_grad():
        unpatched = _text_features(crossget_cli.unpatch(model), padded)
    assert (unpatched - batch).abs().max() > 1e-3
    # ... but not with the padding.
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(to_context, alone, rtol=0, atol=1e-5)


def test_hf_clip_eval_path_does_not_depend_on_batch_size(hf_folder):
    """The CLI's encoder pads every caption to the full context and passes no
    mask, as the official code (so its scores are the official ones): a
    caption's features do not depend on the captions batched with it."""
    loaded = load_model(str(hf_folder))
    crossget_cli.patch(loaded.model, text_r=[2, 4, 4, 2])
    io = model_io(loaded)
    one_by_one = io.encode_texts(CAPTIONS, batch_size=1)
    together = io.encode_texts(CAPTIONS[::-1], batch_size=3).flip(0)
    torch.testing.assert_close(together, one_by_one, rtol=0, atol=1e-5)


def test_hf_clip_all_real_mask_matches_no_mask(hf_folder):
    """The padding-aware path takes the same decisions as the plain one when
    nothing is padding."""
    loaded = load_model(str(hf_folder))
    model = crossget_cli.patch(loaded.model.eval(), text_r=3)
    batch = loaded.tokenizer(["a small red circle", "a big blue square"], return_tensors="pt")
    with torch.no_grad():
        masked = _text_features(model, batch)
        plain = _text_features(model, {"input_ids": batch["input_ids"]})
    torch.testing.assert_close(masked, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_blip_text_features_do_not_depend_on_padding(method):
    model = crossget_cli.patch(tiny_blip.blip("retrieval"), text_r=3, method=method)
    adapter = find_adapter(model)
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 12, 8, 20]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)  # BLIP pads with 0
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(8, tiny_blip.VOCAB_SIZE, (length,), generator=generator)
    with torch.no_grad():
        batch = adapter.encode_text(model, ids)
        alone = torch.cat([adapter.encode_text(model, ids[row : row + 1, :length]) for row, length in enumerate(lengths)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5)
