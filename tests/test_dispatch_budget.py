"""Launch budget of the reduction step: dispatched op counts, not times.

On a GPU the reduction step is bound by kernel launches, so its cost is
checked here as what it dispatches (``crossget_cli.profile.opcount``: aten compute
ops, views and bare allocations left out; about one CUDA kernel each) and as
the absence of host syncs. Counts are deterministic on any CPU.

Budgets (issue "Fast on a GPU"): one CrossGET step (matching, ensemble, sizes,
the next layer's size-bias mask, cross-token injection) at most 36 ops, one
ToMe step at most 24; the patched ViT-B/16 image forward (rv16) at most 5.5x
(CrossGET) and 4.5x (ToMe) the ops of the unpatched one.
"""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch

import crossget_cli
from crossget_cli.core import TokenState, constants
from crossget_cli.profile.opcount import HOST_SYNC_OPS, count_ops
from sweep import builder
from tiny_models import openclip_tiny

STEP_BUDGET = {"crossget": 36, "tome": 24}
FORWARD_RATIO = {"crossget": 5.5, "tome": 4.5}


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None).eval()


def _step(method: str, grad: bool, text: bool = False) -> "object":
    """Ops of one reduction step of a ViT-B/16-sized layer (198 tokens with the
    cross slot, width 768, r = 16) that already carries sizes from an earlier
    step, as the forward runs it: inject, reduce, next layer's mask."""
    gen = torch.Generator().manual_seed(0)
    n, t, d = 2, 198 if method == "crossget" else 197, 768
    x, q, k = (torch.randn(n, t, d, generator=gen) for _ in range(3))
    cross = torch.randn(d, generator=gen)
    if text:
        ids = torch.randint(1, 100, (n, t - (method == "crossget")), generator=gen)
        eot = torch.tensor([30, 50])
        ids[0, 30] = ids[1, 50] = 1000
        state = TokenState.for_text(ids, eot, with_cross_slot=method == "crossget", method=method)
    else:
        state = TokenState(method=method)
    state.sizes = torch.randint(1, 4, (n, t, 1)).float()
    state.trace = None
    constants.prepare(method, [t], "cpu", torch.float32, causal=text)

    def run():
        y = x
        if method == "crossget":
            y = state.inject_cross(y, cross, in_place=not grad)
        y = state.reduce(y, k, q, 16, 12)
        return state.attention_mask(y)

    with torch.set_grad_enabled(grad):
        count, mask = count_ops(run)
    assert mask is not None and mask.shape[-1] == t - 16
    return count


@pytest.mark.parametrize("merge_path", ["cpu", "gpu"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_one_reduction_step_is_within_budget(monkeypatch, method, grad, merge_path):
    """Both merge paths: the CPU's ``index_add_`` and, forced here on the CPU, the
    membership product that GPUs (and compiled graphs) run, one op fewer."""
    from crossget_cli.core import merge

    if merge_path == "gpu":
        monkeypatch.setattr(merge, "sums_by_product", lambda values: True)
    count = _step(method, grad)
    assert count.total <= STEP_BUDGET[method], count.compute
    assert ("bmm" in count.compute) == (merge_path == "gpu") and ("index_add_" in count.compute) == (merge_path == "cpu")
    assert not count.host_syncs


@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_text_step_has_no_host_sync(method):
    """A text step adds the EOT guide, its protection and the id bookkeeping:
    a few ops more than vision, still no sync."""
    count = _step(method, grad=False, text=True)
    assert count.total <= STEP_BUDGET[method] + 8, count.compute
    assert not count.host_syncs


@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_patched_vit_b16_forward_is_within_budget(vit_b16, method):
    """Whole image forward, rv16, counted on the first forward after patching
    (the constants are built at patch time, not on the hot path)."""
    model = copy.deepcopy(vit_b16)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        original, _ = count_ops(model.encode_image, images)
        crossget_cli.patch(model, vision_r=16, method=method)
        patched, _ = count_ops(model.encode_image, images)
    layers = len(model.visual.transformer.resblocks)
    assert patched.total <= FORWARD_RATIO[method] * original.total, (patched.total, original.total)
    assert (patched.total - original.total) / layers <= STEP_BUDGET[method]
    assert not patched.host_syncs


@pytest.mark.parametrize("adapter_name,model_name", [("openclip", "openclip-CLIP"), ("hf-clip", "CLIPModel")])
@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_patched_forwards_have_no_host_sync(adapter_name, model_name, method):
    """Image and text towers, inference and training: no op that makes the host
    wait for the device (a value read back or a data-dependent shape)."""
    from crossget_cli.adapters.registry import find_adapter

    model = crossget_cli.patch(builder(adapter_name, model_name)(), vision_r=4, text_r=3, method=method)
    adapter = find_adapter(model)
    spec = adapter.inputs(model)
    images, texts = spec.example_images(2, seed=1), spec.example_texts(2, length=9, seed=2)
    for grad in (False, True):
        model.train(grad)
        with torch.set_grad_enabled(grad):
            count, _ = count_ops(lambda: (adapter.encode_image(model, images), adapter.encode_text(model, texts)))
        assert count.total > 0 and not count.host_syncs, count.host_syncs


def test_counter_sees_host_syncs_and_leaves_views_out():
    """The counter itself: a sync and a boolean mask index are reported, views
    and allocations are not compute."""
    x = torch.randn(4, 5)
    count, _ = count_ops(lambda: (x.t().reshape(20)[:3], torch.empty(3), x[x > 0], x.sum().item()))
    assert count.compute["gt"] == 1 and count.compute["sum"] == 1
    assert "t" not in count.compute and "empty" not in count.compute and "slice" not in count.compute
    assert "_local_scalar_dense" in count.host_syncs and any(s in HOST_SYNC_OPS or s == "index" for s in count.host_syncs)
    assert "index" in count.host_syncs


def test_compiled_merge_is_deterministic():
    """The merge has no atomics eagerly or under torch.compile: two compiled
    forwards of the same batch are bit-identical, and equal eager to rounding."""
    model = crossget_cli.patch(openclip_tiny(), vision_r=4)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model.encode_image(images)
        compiled = torch.compile(model.encode_image, fullgraph=True)
        first, second = compiled(images), compiled(images)
    assert torch.equal(first, second)
    assert torch.allclose(first, eager, atol=1e-5)
