"""Patched blocks stay modules: forward hooks fire with the reduced token
counts, and activation checkpointing recomputes a block exactly (SPEC §1, §3)."""

from __future__ import annotations

import copy

import pytest
import torch

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from sweep import CASES, build, example_inputs, randomise_cross
from tiny_models import hf_tiny, openclip_tiny


def _hooked_counts(model, towers):
    """Token counts every block's pre- and post-forward hooks see, per tower."""
    seen = {tower.modality: {"in": [], "out": []} for tower in towers}
    handles = []
    for tower in towers:
        record = seen[tower.modality]
        for block in tower.blocks:

            def before(module, args, kwargs, record=record):
                x = args[0] if args else kwargs["hidden_states"]
                record["in"].append(x.shape[1])

            def after(module, args, output, record=record):
                out = output[0] if isinstance(output, tuple) else output
                record["out"].append(out.shape[1])

            handles.append(block.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(block.register_forward_hook(after))
    return seen, handles


def _run_towers(model, images, texts):
    adapter = find_adapter(model)
    with torch.no_grad():
        if images is not None:
            adapter.encode_image(model, images)
        if texts is not None and "text" in adapter.reduces:
            adapter.encode_text(model, texts)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_block_hooks_see_the_schedule(adapter_name, model_name):
    model = build(adapter_name, model_name)
    images, texts = example_inputs(model)
    adapter = find_adapter(model)
    r = {"vision": [5, 0, 3, 9], "text": [2, 2, 0, 9]}
    crossget_cli.patch(model, vision_r=r["vision"], text_r=r["text"] if "text" in adapter.reduces else 0)
    towers = [t for t in adapter.towers(model) if t.blocks]
    assert towers and all(len(t.blocks) == t.num_layers for t in towers)
    seen, handles = _hooked_counts(model, towers)
    _run_towers(model, images, texts)
    for handle in handles:
        handle.remove()
    for tower in towers:
        if tower.modality == "text" and "text" not in adapter.reduces:
            continue
        counts = tower.token_counts()
        assert seen[tower.modality]["in"] == counts[:-1], tower.modality
        assert seen[tower.modality]["out"] == counts[1:], tower.modality


def test_block_hooks_see_hand_computed_counts():
    """The tiny open_clip ViT: 16 patches + CLS + the cross slot = 18 tokens;
    each block removes r after its attention, at most half of the tokens that
    are not protected (CLS, cross slot). Text: 16 + the cross slot, three
    protected (SOT, EOT, cross slot)."""
    model = openclip_tiny()
    crossget_cli.patch(model, vision_r=[5, 0, 3, 30], text_r=[4, 4, 4, 30])
    towers = find_adapter(model).towers(model)
    seen, _ = _hooked_counts(model, towers)
    images = torch.randn(2, 3, 32, 32)
    texts = torch.zeros(2, 16, dtype=torch.long)
    texts[:, 0], texts[:, 1:15], texts[:, 15] = 62, 5, 63
    with torch.no_grad():
        model.encode_image(images)
        model.encode_text(texts)
    assert seen["vision"] == {"in": [18, 13, 13, 10], "out": [13, 13, 10, 6]}
    assert seen["text"] == {"in": [17, 13, 9, 6], "out": [13, 9, 6, 5]}


def test_hooks_fire_once_per_block_and_unpatch_keeps_them():
    model = hf_tiny()
    crossget_cli.patch(model, vision_r=2, text_r=2)
    calls = []
    layer = model.vision_model.encoder.layers[1]
    layer.register_forward_hook(lambda module, args, output: calls.append(output.shape[1]))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model.get_image_features(pixel_values=images)
    assert calls == [14]  # 18 in (16 patches, CLS, cross slot), 2 merged in block 0 and 2 in block 1
    crossget_cli.unpatch(model)
    with torch.no_grad():
        model.get_image_features(pixel_values=images)
    assert calls == [14, 17]  # the original: 16 patches + CLS, hook still registered


def _enable_checkpointing(model) -> None:
    if hasattr(model, "gradient_checkpointing_enable"):  # transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:  # open_clip
        model.set_grad_checkpointing(True)


def _training_grads(model, images, texts) -> dict[str, torch.Tensor]:
    adapter = find_adapter(model)
    model.train()
    model.zero_grad()
    torch.manual_seed(0)
    loss = 0
    if images is not None:
        loss = adapter.encode_image(model, images).square().sum()
    if texts is not None and any(t.modality == "text" and t.blocks for t in adapter.towers(model)):
        loss = loss + adapter.encode_text(model, texts).square().sum()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_grad_checkpointing_matches_plain_backward(adapter_name, model_name):
    model = build(adapter_name, model_name)
    images, texts = example_inputs(model)
    adapter = find_adapter(model)
    crossget_cli.patch(model, vision_r=[3, 2, 4, 2], text_r=[2, 2, 2, 2] if "text" in adapter.reduces else 0)
    randomise_cross(model)
    plain = _training_grads(model, images, texts)
    checkpointed_model = copy.deepcopy(model)
    _enable_checkpointing(checkpointed_model)
    checkpointed = _training_grads(checkpointed_model, images, texts)
    assert plain.keys() == checkpointed.keys()
    assert any("cross" in name for name in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=1e-6, msg=name)


def test_checkpointing_recomputes_each_block():
    """The checkpointed forward really runs again in backward (so the state
    restore is exercised): each block's forward runs twice per training step."""
    model = openclip_tiny()
    crossget_cli.patch(model, vision_r=3, text_r=0)
    model.set_grad_checkpointing(True)
    model.train()
    runs = []
    for block in model.visual.transformer.resblocks:
        # open_clip checkpoints the block's call, hooks included, so the recompute fires them again
        block.register_forward_pre_hook(lambda module, args, kwargs: runs.append(args[0].shape[1]), with_kwargs=True)
    model.encode_image(torch.randn(2, 3, 32, 32)).sum().backward()
    assert runs == [18, 15, 12, 9] + [9, 12, 15, 18]  # forward, then the recompute in reverse


@pytest.mark.parametrize("towers", ["image", "text"])
def test_inference_memory_does_not_grow_with_depth(towers):
    """At inference a block's input is freed once the next block has run, as in
    the original model: the peak of a patched forward (cross slot written in
    place) is the same for 2 and 8 layers, within a fraction of one layer's
    hidden states. (It grew by one [N, T, D] per layer while each layer's cross
    token was kept as a view of its hidden states.)"""
    from crossget_cli.adapters.openclip.tiny import TINY
    from crossget_cli.profile.cpu_memory import peak_allocated_bytes

    peaks = []
    for layers in (2, 8):
        torch.manual_seed(0)
        model = crossget_cli.patch(openclip_tiny({**TINY, "vision_layers": layers, "transformer_layers": layers}), 0, 0).eval()
        images, texts = torch.randn(16, 3, 32, 32), torch.randint(1, 60, (16, TINY["context_length"]))
        call = model.encode_image if towers == "image" else model.encode_text
        with torch.inference_mode():
            peaks.append(peak_allocated_bytes(call, images if towers == "image" else texts))
    tokens = (TINY["image_resolution"] // TINY["vision_patch_size"]) ** 2 + 2 if towers == "image" else TINY["context_length"] + 1
    width = TINY["vision_width"] if towers == "image" else TINY["transformer_width"]
    one_layer = 16 * tokens * width * 4
    assert peaks[1] - peaks[0] < one_layer / 2, (peaks, one_layer)
