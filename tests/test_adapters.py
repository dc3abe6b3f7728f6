"""Every registered adapter, swept over tiny random models of its family:
unpatch is exact, patching is idempotent, r = 0 semantics (SPEC §5), token
schedule, backward, inference modes, batch independence."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import crossget_cli
from crossget_cli.adapters.registry import find_adapter, get_adapter, list_adapters
from crossget_cli.core import collect_cross_tokens, js_loss, token_schedule, trace_reduction
from crossget_cli.errors import CrossGetError
from sweep import CASES, build, example_inputs, features, is_cross_token, randomise_cross, same_computation_tolerance
from tiny_models import openclip_tiny

#: families whose encode_text passes a padding mask (CLIP's, like the official
#: code, pads every caption to the full context and passes none)
PADDING_AWARE = {"blip"}


def test_every_adapter_has_tiny_models():
    assert not [name for name in list_adapters() if not get_adapter(name).tiny_models()]


def _patch(model, vision_r, text_r=0):
    """Patch with the given r for the towers the model's family reduces (LLaVA: vision only)."""
    reduces = find_adapter(model).reduces
    return crossget_cli.patch(model, vision_r=vision_r if "vision" in reduces else 0, text_r=text_r if "text" in reduces else 0)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_adapter_found_by_structure(adapter_name, model_name):
    assert find_adapter(build(adapter_name, model_name)).name == adapter_name


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_unpatch_restores_everything_bit_for_bit(adapter_name, model_name):
    model = build(adapter_name, model_name)
    pristine = copy.deepcopy(model)
    images, texts = example_inputs(model)
    before = features(pristine, images, texts)
    classes = {name: type(m) for name, m in model.named_modules()}
    keys = set(model.state_dict())

    _patch(model, vision_r=2, text_r=2)
    randomise_cross(model)
    assert {k for k in model.state_dict() if k not in keys} and all("cross" in k for k in set(model.state_dict()) - keys)
    patched = features(model, images, texts)
    assert any(not torch.equal(patched[k], before[k]) for k in before)

    crossget_cli.unpatch(model)
    assert set(model.state_dict()) == keys
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert not crossget_cli.is_patched(model)
    after = features(model, images, texts)
    for key in before:
        assert torch.equal(after[key], before[key])


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_patching_twice_reconfigures_instead_of_stacking(adapter_name, model_name):
    model = build(adapter_name, model_name)
    images, texts = example_inputs(model)
    _patch(model, vision_r=3, text_r=3)
    randomise_cross(model)
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
    ours, reference = features(model, images, texts), features(once, images, texts)
    for key in ours:
        assert torch.equal(ours[key], reference[key])
    assert crossget_cli.reduction_config(model).vision_r == 2


def _vision_tower(model):
    return next(t for t in find_adapter(model).towers(model) if t.modality == "vision")


def _block_paths(model, tower) -> list[str]:
    """The module paths of a tower's blocks, to find them in a copy of ``model``."""
    paths = {id(module): path for path, module in model.named_modules()}
    return [paths[id(block)] for block in tower.blocks]


def _hook_in_the_cross_slot(
    model, block_paths: list[str], cross: torch.Tensor, has_cls: bool = True
) -> tuple[list[int], list]:
    """Turn the *unpatched* ``model``'s vision tower into SPEC §3's CrossGET
    tower with r = 0, by hooks alone: block 0's input gets one more slot, a copy
    of CLS (token 0; without CLS, ``has_cls`` false, the mean of the patch
    tokens, as SigLIP's towers start it); before every block ``l`` that last slot becomes
    ``slot + cross[0, l]`` (the vision guide is the previous cross slot itself);
    the last block's output drops it. Returns the layers the pre-hooks ran for
    (filled as the model runs) and the hook handles, for the caller to remove."""
    modules = dict(model.named_modules())
    blocks = [modules[path] for path in block_paths]
    ran = []

    def before(module, args, kwargs, layer):
        x = args[0] if args else kwargs["hidden_states"]
        if layer == 0:
            x = torch.cat([x, x[:, :1] if has_cls else x.mean(dim=1, keepdim=True)], dim=1)
        # A new tensor, not in place: the model may hold the previous output
        # (LLaVA reads a middle layer's hidden state).
        x = torch.cat([x[:, :-1], (x[:, -1] + cross[0, layer])[:, None]], dim=1)
        ran.append(layer)
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    def after(module, args, output):
        if isinstance(output, tuple):
            return (output[0][:, :-1], *output[1:])
        return output[:, :-1]

    handles = [
        block.register_forward_pre_hook(lambda m, a, k, layer=layer: before(m, a, k, layer), with_kwargs=True)
        for layer, block in enumerate(blocks)
    ]
    handles.append(blocks[-1].register_forward_hook(after))
    return ran, handles


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_r_zero_semantics(adapter_name, model_name):
    """SPEC §5: with r = 0 the text output is the original's, and the vision
    tower is the original tower run with the cross slot (SPEC §3), nothing more:
    the expectation is the unpatched model with that slot added by block hooks,
    for zero and for random cross tokens.

    Every family fits this expectation, bit for bit or, where the patched block
    runs another attention kernel, to rounding (sweep.OTHER_ATTENTION_KERNEL),
    whatever its encode_image reads of the tower: CLIP and BLIP pool CLS of the
    last output; the BLIP-2 Q-Former cross-attends to every output token (the
    slot is dropped before it); LLaVA projects the hidden state of a middle
    layer, which keeps the slot (only the tower's last output drops it), as the
    hooks, which drop it after the last block only, reproduce."""
    model = build(adapter_name, model_name)
    images, texts = example_inputs(model)
    original = features(model, images, texts)
    patched = copy.deepcopy(model)
    _patch(patched, vision_r=0, text_r=0)
    zero_cross = features(patched, images, texts)
    randomise_cross(patched)
    nonzero_cross = features(patched, images, texts)
    if texts is not None:
        assert torch.equal(zero_cross["text"], original["text"])
        assert torch.equal(nonzero_cross["text"], original["text"])
    if images is None:
        return
    tower = _vision_tower(patched)
    assert getattr(tower.holder, "batch_first", True)  # the hooks slice dim 1
    paths = _block_paths(patched, tower)
    tolerance = same_computation_tolerance(adapter_name)
    for cross, ours in ((torch.zeros_like(tower.cross), zero_cross), (tower.cross.detach().clone(), nonzero_cross)):
        ran, handles = _hook_in_the_cross_slot(model, paths, cross, tower.protect_first)
        try:
            expected = features(model, images, None)["image"]
        finally:
            for handle in handles:
                handle.remove()
        assert ran == list(range(tower.num_layers))
        torch.testing.assert_close(ours["image"], expected, **tolerance)
    # The slot is one more key every patch attends to: even zero cross tokens
    # change the features (else the comparison above would prove little).
    assert not torch.allclose(zero_cross["image"], original["image"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(nonzero_cross["image"], zero_cross["image"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_token_counts_follow_the_schedule(adapter_name, model_name):
    model = build(adapter_name, model_name)
    images, texts = example_inputs(model)
    schedule = {"vision": [5, 0, 3, 9], "text": [2, 2, 0, 9]}
    _patch(model, vision_r=schedule["vision"], text_r=schedule["text"])
    with trace_reduction() as trace:
        features(model, images, texts)
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


#: families whose text tower attends to its cross token: BLIP's text encoder is
#: bidirectional BERT (every token attends to the slot). CLIP's text tower is
#: causal with the slot last, and its matching is guided by EOT's query, so no
#: feature depends on the text cross token (SPEC §3); LLaVA's text cross token
#: lives in the LLM, which encode_image does not run.
#: SigLIP's text towers are bidirectional too (their slot is carried forward like vision's).
TEXT_CROSS_ATTENDED = {"blip", "openclip-siglip", "hf-siglip"}


def _feature_loss(values: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed random linear function of ``values``: a sum of squares would be
    nearly constant on LayerNorm outputs (BLIP's, BLIP-2's pooled features) and
    leave only rounding noise as gradient."""
    weights = torch.randn(values.shape, generator=torch.Generator().manual_seed(seed))
    return (values * weights).sum()


def _grads(loss, params: dict) -> dict:
    grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)
    return dict(zip(params, grads))


def _nonzero(grad) -> bool:
    return grad is not None and bool(grad.abs().sum() > 0)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_backward_reaches_cross_tokens(adapter_name, model_name):
    """The features train the vision cross token (every patch attends to it);
    CLIP's text cross token gets no gradient from the features (see
    TEXT_CROSS_ATTENDED), only from L_JS (SPEC §4), which every dual encoder
    with both towers trains it with."""
    model = build(adapter_name, model_name)
    images, texts = example_inputs(model)
    _patch(model, vision_r=2, text_r=2)
    randomise_cross(model)
    model.train()
    adapter = find_adapter(model)
    with collect_cross_tokens() as cross:
        loss = 0
        if images is not None:
            loss = loss + _feature_loss(adapter.encode_image(model, images), seed=3)
        if texts is not None:
            loss = loss + _feature_loss(adapter.encode_text(model, texts), seed=4)
    params = {name: p for name, p in model.named_parameters() if is_cross_token(name)}
    vision = [name for name in params if name.endswith("cross_image")]
    text = [name for name in params if name.endswith("cross_text")]
    assert len(vision) == (images is not None) and len(text) <= 1

    from_features = _grads(loss, params)
    for name in vision:
        assert _nonzero(from_features[name]), name
    for name in text:
        assert _nonzero(from_features[name]) == (adapter_name in TEXT_CROSS_ATTENDED), name

    if not (cross["vision"] and cross["text"]):
        return  # one tower (or LLaVA, whose text cross tokens need a prompt): no L_JS here
    image_cross = adapter.project_cross(model, "vision", cross["vision"][-1])
    text_cross = adapter.project_cross(model, "text", cross["text"][-1])
    js = js_loss(image_cross, text_cross)  # as the clip objective computes it (adapters/contrastive.py)
    with_js = _grads(loss + js, params)
    for name in vision + text:
        assert _nonzero(with_js[name]), name
    for name in text:
        assert _nonzero(_grads(js, params)[name]), name  # L_JS itself reaches the text cross token


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_no_grad_and_inference_mode_agree(adapter_name, model_name):
    model = build(adapter_name, model_name)
    images, texts = example_inputs(model)
    _patch(model, vision_r=3, text_r=2)
    adapter = find_adapter(model)
    with torch.no_grad():
        reference = adapter.encode_image(model, images) if images is not None else adapter.encode_text(model, texts)
    with torch.inference_mode():
        fast = adapter.encode_image(model, images) if images is not None else adapter.encode_text(model, texts)
    assert torch.equal(reference, fast)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_results_do_not_depend_on_the_batch(adapter_name, model_name):
    model = build(adapter_name, model_name)
    images, texts = example_inputs(model)
    _patch(model, vision_r=3, text_r=2)
    randomise_cross(model)
    whole = features(model, images, texts)
    for i in range(3):
        alone = features(
            model,
            None if images is None else images[i : i + 1],
            None if texts is None else texts[i : i + 1],
        )
        for key in alone:
            assert torch.allclose(alone[key][0], whole[key][i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_per_layer_list_must_match_depth(adapter_name, model_name):
    model = build(adapter_name, model_name)
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
    model = openclip_tiny()
    with pytest.raises(CrossGetError):
        crossget_cli.patch(model, vision_r=bad)


@pytest.mark.parametrize("adapter_name", list_adapters())
def test_torch_compile_matches_eager(adapter_name):
    model_name = next(iter(get_adapter(adapter_name).tiny_models()))
    model = build(adapter_name, model_name)
    _patch(model, vision_r=3, text_r=2)
    randomise_cross(model)
    adapter = find_adapter(model)
    images, _ = example_inputs(model)
    with torch.no_grad():
        eager = adapter.encode_image(model, images)
        compiled = torch.compile(lambda x: adapter.encode_image(model, x))(images)
    assert torch.allclose(compiled, eager, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    # timm-vit: image classifiers, no text tower; llava-next: no text encoder (its LLM takes prompts)
    "adapter_name,model_name",
    [c for c in CASES if "Vision" not in c[1] and c[0] not in ("blip", "blip2", "llava", "llava-next", "timm-vit")],
)
def test_token_embeddings_replace_the_lookup(adapter_name, model_name):
    """Prompt learning feeds embeddings instead of ids: the lookup's own
    embeddings must give the ids' features."""
    model = build(adapter_name, model_name)
    _patch(model, vision_r=2, text_r=2)
    _, texts = example_inputs(model)
    lookup = next(m for n, m in model.named_modules() if n.endswith("token_embedding"))
    adapter = find_adapter(model)
    with torch.no_grad():
        assert torch.equal(adapter.encode_text(model, texts, token_embeddings=lookup(texts)), adapter.encode_text(model, texts))
