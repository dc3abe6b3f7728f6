"""Every registered adapter, swept over tiny random models of its family:
unpatch is exact, patching is idempotent, r = 0 semantics (SPEC §5), token
schedule, backward, inference modes, batch independence."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import crossget_cli
from crossget_cli.adapters.registry import find_adapter, list_adapters
from crossget_cli.core import token_schedule, trace_reduction
from crossget_cli.errors import CrossGetError
from tiny_models import TINY_MODELS

CASES = [(adapter, name) for adapter in list_adapters() for name in TINY_MODELS.get(adapter, {})]
#: families whose encode_text passes a padding mask (CLIP's, like the official
#: code, pads every caption to the full context and passes none)
PADDING_AWARE = {"blip"}


def test_every_adapter_has_tiny_models():
    assert set(list_adapters()) <= set(TINY_MODELS)


def _patch(model, vision_r, text_r=0):
    """Patch with the given r for the towers the model's family reduces (LLaVA: vision only)."""
    reduces = find_adapter(model).reduces
    return crossget_cli.patch(model, vision_r=vision_r if "vision" in reduces else 0, text_r=text_r if "text" in reduces else 0)


def _build(adapter_name, model_name) -> nn.Module:
    torch.manual_seed(0)
    model = TINY_MODELS[adapter_name][model_name]()
    # Non-zero cross tokens, so tests can tell whether they take effect.
    return model


def _inputs(model):
    spec = find_adapter(model).inputs(model)
    images = spec.example_images(3, seed=1) if spec.image_size else None
    texts = spec.example_texts(3, seed=2) if spec.context_length else None
    if texts is not None:
        texts[1, 6:] = 0  # shorter caption: EOT earlier, padding after
        texts[1, 5] = spec.eot_id
    return images, texts


def _features(model, images, texts):
    adapter = find_adapter(model)
    out = {}
    with torch.no_grad():
        if images is not None:
            out["image"] = adapter.encode_image(model, images)
        if texts is not None:
            out["text"] = adapter.encode_text(model, texts)
    return out


def _randomise_cross(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("cross_image", "cross_text")):  # not BLIP's "crossattention" weights
                param.normal_(0, 0.5)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_adapter_found_by_structure(adapter_name, model_name):
    assert find_adapter(_build(adapter_name, model_name)).name == adapter_name


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_unpatch_restores_everything_bit_for_bit(adapter_name, model_name):
    model = _build(adapter_name, model_name)
    pristine = copy.deepcopy(model)
    images, texts = _inputs(model)
    before = _features(pristine, images, texts)
    classes = {name: type(m) for name, m in model.named_modules()}
    keys = set(model.state_dict())

    _patch(model, vision_r=2, text_r=2)
    _randomise_cross(model)
    assert {k for k in model.state_dict() if k not in keys} and all("cross" in k for k in set(model.state_dict()) - keys)
    patched = _features(model, images, texts)
    assert any(not torch.equal(patched[k], before[k]) for k in before)

    crossget_cli.unpatch(model)
    assert set(model.state_dict()) == keys
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert not crossget_cli.is_patched(model)
    after = _features(model, images, texts)
    for key in before:
        assert torch.equal(after[key], before[key])


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_patching_twice_reconfigures_instead_of_stacking(adapter_name, model_name):
    model = _build(adapter_name, model_name)
    images, texts = _inputs(model)
    _patch(model, vision_r=3, text_r=3)
    _randomise_cross(model)
    cross = {k: v.clone() for k, v in model.state_dict().items() if "cross" in k}
    _patch(model, vision_r=2, text_r=2)
    _patch(model, vision_r=2, text_r=2)
    assert {k: v for k, v in model.state_dict().items() if "cross" in k}.keys() == cross.keys()
    for key, value in cross.items():
        assert torch.equal(model.state_dict()[key], value)  # trained cross tokens survive

    once = copy.deepcopy(model)
    crossget_cli.unpatch(once)
    _patch(once, vision_r=2, text_r=2)
    once.load_state_dict(model.state_dict())
    ours, reference = _features(model, images, texts), _features(once, images, texts)
    for key in ours:
        assert torch.equal(ours[key], reference[key])
    assert crossget_cli.reduction_config(model).vision_r == 2


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_r_zero_semantics(adapter_name, model_name):
    """SPEC §5: with r = 0 the text output is the original's; the vision output
    differs only because patches attend to the cross token."""
    model = _build(adapter_name, model_name)
    images, texts = _inputs(model)
    original = _features(model, images, texts)
    _patch(model, vision_r=0, text_r=0)
    zero_cross = _features(model, images, texts)
    _randomise_cross(model)
    nonzero_cross = _features(model, images, texts)
    if texts is not None:
        assert torch.equal(nonzero_cross["text"], original["text"])
    if images is not None:
        # Even zero cross tokens change the image features: the slot (a copy of
        # CLS) is one more key every patch attends to.
        assert not torch.equal(zero_cross["image"], original["image"])
        assert not torch.equal(nonzero_cross["image"], zero_cross["image"])


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_token_counts_follow_the_schedule(adapter_name, model_name):
    model = _build(adapter_name, model_name)
    images, texts = _inputs(model)
    schedule = {"vision": [5, 0, 3, 9], "text": [2, 2, 0, 9]}
    _patch(model, vision_r=schedule["vision"], text_r=schedule["text"])
    with trace_reduction() as trace:
        _features(model, images, texts)
    for tower in find_adapter(model).towers(model):
        if tower.modality not in find_adapter(model).reduces:
            continue
        counts = token_schedule(tower.num_tokens, schedule[tower.modality], tower.num_protected)
        seen = [r["x"].shape[1] for r in trace if r["modality"] == tower.modality]
        assert seen == counts[1:]
        sizes = [r["sizes"] for r in trace if r["modality"] == tower.modality][-1]
        expected = torch.full((sizes.shape[0],), float(tower.num_tokens))
        if tower.modality == "text" and adapter_name in PADDING_AWARE:
            expected[1] -= tower.num_tokens - 1 - 6  # caption 1's padding has size 0 (the cross slot is last)
        assert torch.equal(sizes.sum(dim=1)[:, 0], expected)  # every real token accounted for


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_backward_reaches_cross_tokens(adapter_name, model_name):
    model = _build(adapter_name, model_name)
    images, texts = _inputs(model)
    _patch(model, vision_r=2, text_r=2)
    _randomise_cross(model)
    model.train()
    adapter = find_adapter(model)
    loss = 0
    if images is not None:
        loss = loss + adapter.encode_image(model, images).square().sum()
    if texts is not None:
        loss = loss + adapter.encode_text(model, texts).square().sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "cross" in n}
    assert grads
    for name, grad in grads.items():
        if "image" in name:  # the vision cross token is attended to; the text one is not (SPEC §3)
            assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_no_grad_and_inference_mode_agree(adapter_name, model_name):
    model = _build(adapter_name, model_name)
    images, texts = _inputs(model)
    _patch(model, vision_r=3, text_r=2)
    adapter = find_adapter(model)
    with torch.no_grad():
        reference = adapter.encode_image(model, images) if images is not None else adapter.encode_text(model, texts)
    with torch.inference_mode():
        fast = adapter.encode_image(model, images) if images is not None else adapter.encode_text(model, texts)
    assert torch.equal(reference, fast)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_results_do_not_depend_on_the_batch(adapter_name, model_name):
    model = _build(adapter_name, model_name)
    images, texts = _inputs(model)
    _patch(model, vision_r=3, text_r=2)
    _randomise_cross(model)
    whole = _features(model, images, texts)
    for i in range(3):
        alone = _features(
            model,
            None if images is None else images[i : i + 1],
            None if texts is None else texts[i : i + 1],
        )
        for key in alone:
            assert torch.allclose(alone[key][0], whole[key][i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_per_layer_list_must_match_depth(adapter_name, model_name):
    model = _build(adapter_name, model_name)
    with pytest.raises(CrossGetError, match="layers"):
        _patch(model, vision_r=[1, 2], text_r=[1, 2])


def test_unsupported_model_names_what_is_supported():
    with pytest.raises(CrossGetError) as err:
        crossget_cli.patch(nn.Sequential(nn.Linear(2, 2)), vision_r=4)
    assert "unsupported model type Sequential" in str(err.value)
    for name in list_adapters():
        assert name in str(err.value)


@pytest.mark.parametrize("bad", [-1, 1.5, "4", True, [2, -1]])
def test_bad_r_is_rejected(bad):
    model = TINY_MODELS["openclip"]["openclip-CLIP"]()
    with pytest.raises(CrossGetError):
        crossget_cli.patch(model, vision_r=bad)


@pytest.mark.parametrize("adapter_name", list_adapters())
def test_torch_compile_matches_eager(adapter_name):
    model_name = next(iter(TINY_MODELS[adapter_name]))
    model = _build(adapter_name, model_name)
    _patch(model, vision_r=3, text_r=2)
    _randomise_cross(model)
    adapter = find_adapter(model)
    images, _ = _inputs(model)
    with torch.no_grad():
        eager = adapter.encode_image(model, images)
        compiled = torch.compile(lambda x: adapter.encode_image(model, x))(images)
    assert torch.allclose(compiled, eager, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "adapter_name,model_name", [c for c in CASES if "Vision" not in c[1] and c[0] not in ("blip", "blip2", "llava")]
)
def test_token_embeddings_replace_the_lookup(adapter_name, model_name):
    """Prompt learning feeds embeddings instead of ids: the lookup's own
    embeddings must give the ids' features."""
    model = _build(adapter_name, model_name)
    _patch(model, vision_r=2, text_r=2)
    _, texts = _inputs(model)
    lookup = next(m for n, m in model.named_modules() if n.endswith("token_embedding"))
    adapter = find_adapter(model)
    with torch.no_grad():
        assert torch.equal(adapter.encode_text(model, texts, token_embeddings=lookup(texts)), adapter.encode_text(model, texts))
