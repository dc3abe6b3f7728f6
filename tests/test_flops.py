"""The MAC counter against hand-computed counts for the tiny towers.

The analytic formulas below are written from the architecture, independently
of the counter: per block, LN1 + q/k/v + QK^T + AV + out-projection, the
matcher's key similarity and guide importance when the block reduces, LN2 + MLP
on the tokens left. Norms count 5 per element (fvcore), matrix products m*k*n.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.core import token_schedule
from crossget_cli.profile.flops import KINDS, MacsCount, count_macs, model_macs
from tiny_models import TINY, hf_tiny, openclip_tiny

torch.set_num_threads(1)


def _block(t_in: int, t_out: int, d: int, mlp: int, reduces: bool) -> dict[str, int]:
    """MACs of one pre-norm block: t_in tokens through attention, t_out through the MLP."""
    return {
        "linear": 4 * t_in * d * d + 2 * t_out * d * mlp,
        "attention": 2 * t_in * t_in * d,
        "other": 5 * t_in * d + 5 * t_out * d,
        "matching": (t_in * t_in * d + t_in * d) if reduces else 0,
        "conv": 0,
    }


def _add(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def _tower(counts: list[int], d: int, mlp: int) -> dict[str, int]:
    total = {k: 0 for k in KINDS}
    for t_in, t_out in zip(counts[:-1], counts[1:]):
        _add(total, _block(t_in, t_out, d, mlp, reduces=t_out < t_in))
    return total


def vision_macs(counts: list[int], family: str, cfg=TINY) -> dict[str, int]:
    """One image. ``counts`` are the tokens entering each block and leaving the
    last (a patched tower carries the cross slot, dropped before pooling)."""
    d, patch, res = cfg["vision_width"], cfg["vision_patch_size"], cfg["image_resolution"]
    grid = (res // patch) ** 2
    total = _tower(counts, d, 4 * d)
    total["conv"] += grid * d * 3 * patch * patch
    total["other"] += 5 * (grid + 1) * d  # ln_pre on CLS + patches
    out = counts[-1] - (1 if counts[0] == grid + 2 else 0)
    # open_clip applies ln_post to every token before pooling; HF to the pooled one
    total["other"] += 5 * (out if family == "openclip" else 1) * d
    total["linear"] += d * cfg["embed_dim"]
    return total


def text_macs(counts: list[int], cfg=TINY) -> dict[str, int]:
    """One caption: blocks, the final norm on every token (a patched tower drops
    its cross slot first), the projection."""
    d = cfg["transformer_width"]
    total = _tower(counts, d, 4 * d)
    patched = counts[0] == cfg["context_length"] + 1
    total["other"] += 5 * (counts[-1] - patched) * d
    total["linear"] += d * cfg["embed_dim"]
    return total


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _check(count: MacsCount, expected: dict[str, int]) -> None:
    assert count.by_kind == expected
    assert count.total == sum(expected.values())


MODELS = {
    "openclip": openclip_tiny,
    "hf-sdpa": lambda: hf_tiny(attn_implementation="sdpa"),
    "hf-eager": lambda: hf_tiny(attn_implementation="eager"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_original_model_matches_analytic_count(name):
    model = MODELS[name]()
    family = "openclip" if name == "openclip" else "hf"
    grid = (TINY["image_resolution"] // TINY["vision_patch_size"]) ** 2
    macs = model_macs(model)
    _check(macs.image, vision_macs([grid + 1] * (TINY["vision_layers"] + 1), family))
    _check(macs.text, text_macs([TINY["context_length"]] * (TINY["transformer_layers"] + 1)))
    assert macs.total == macs.image.total + macs.text.total
    assert macs.gmacs == pytest.approx(macs.total / 1e9)


def test_openclip_eval_runs_the_mha_fast_path():
    """The analytic match above goes through nn.MultiheadAttention's fused
    inference kernel for the image tower (no mask): make sure it is taken."""
    model = openclip_tiny()
    images = find_adapter(model).inputs(model).example_images(1)
    with torch.inference_mode(), _OpLog() as log:
        model.encode_image(images)
    assert "_native_multi_head_attention" in log.ops


def test_counts_do_not_depend_on_grad_mode():
    """inference_mode hands composite ops (linear, sdpa) to the mode whole,
    no_grad decomposes them first, grad mode skips the MHA fast path: same count."""
    model = openclip_tiny()
    images = find_adapter(model).inputs(model).example_images(2)
    with torch.inference_mode():
        _, a = count_macs(model.encode_image, images)
    with torch.no_grad():
        _, b = count_macs(model.encode_image, images)
    _, c = count_macs(model.encode_image, images)
    assert a == b == c
    assert a.by_kind["attention"] > 0


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("rv,rl", [(4, 3), (3, 0), (0, 2), (16, 16)])
def test_patched_model_matches_analytic_count(name, rv, rl):
    model = crossget_cli.patch(MODELS[name](), vision_r=rv, text_r=rl)
    family = "openclip" if name == "openclip" else "hf"
    towers = {t.modality: t for t in find_adapter(model).towers(model)}
    vision, text = towers["vision"], towers["text"]
    v_counts = token_schedule(vision.num_tokens, vision.schedule, vision.num_protected)
    if rl > 0:
        t_counts = token_schedule(text.num_tokens, text.schedule, text.num_protected)
    else:  # r = 0 text keeps the original path (SPEC §5): no cross slot
        t_counts = [text.num_tokens - 1] * (text.num_layers + 1)
    macs = model_macs(model)
    _check(macs.image, vision_macs(v_counts, family))
    _check(macs.text, text_macs(t_counts))


def test_patched_schedule_is_what_the_tiny_model_implies():
    """Pin the token counts the analytic test relies on (SPEC §5 rule)."""
    model = crossget_cli.patch(openclip_tiny(), vision_r=4, text_r=3)
    towers = {t.modality: t for t in find_adapter(model).towers(model)}
    assert token_schedule(towers["vision"].num_tokens, towers["vision"].schedule, 2) == [18, 14, 10, 6, 4]
    assert token_schedule(towers["text"].num_tokens, towers["text"].schedule, 3) == [17, 14, 11, 8, 6]


def test_matching_macs_are_attributed_by_call_stack():
    from crossget_cli.core import complete_graph_matching, protected_indices

    n, t, c = 2, 10, 8
    keys = torch.randn(n, t, c)
    guide = torch.randn(n, c)
    _, count = count_macs(complete_graph_matching, keys, guide, 3, protected_indices(n, t, None, "cpu"))
    assert count.by_kind["matching"] == n * (t * t * c + t * c)
    assert count.total == count.by_kind["matching"]
    # the same product outside the matcher is an attention-like batched product
    _, plain = count_macs(torch.bmm, keys, keys.transpose(1, 2))
    assert plain.by_kind == {**{k: 0 for k in KINDS}, "attention": n * t * t * c}


def test_flop_counter_mode_alone_undercounts_the_mha_fast_path():
    model = openclip_tiny()
    images = find_adapter(model).inputs(model).example_images(1)
    with torch.inference_mode():
        _, ours = count_macs(model.encode_image, images)
        counter = FlopCounterMode(display=False)
        with counter:
            model.encode_image(images)
    theirs = counter.get_total_flops() // 2  # FLOPs -> MACs
    grid = (TINY["image_resolution"] // TINY["vision_patch_size"]) ** 2
    d, layers = TINY["vision_width"], TINY["vision_layers"]
    mha = layers * (4 * (grid + 1) * d * d + 2 * (grid + 1) ** 2 * d)
    norms = ours.by_kind["other"]  # FlopCounterMode does not count norms
    assert theirs < ours.total
    assert theirs == ours.total - mha - norms


def test_linear_conv_and_sdpa_formulas():
    x = torch.randn(3, 5, 7)
    w = torch.randn(11, 7)
    _, c = count_macs(torch.nn.functional.linear, x, w, torch.randn(11))
    assert c.by_kind["linear"] == 3 * 5 * 7 * 11 and c.total == 3 * 5 * 7 * 11

    img = torch.randn(2, 3, 8, 8)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, groups=1)
    with torch.no_grad():
        _, c = count_macs(conv, img)
    assert c.by_kind["conv"] == 2 * (4 * 3 * 3 * 3) * 8 * 8

    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 5)
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            _, c = count_macs(torch.nn.functional.scaled_dot_product_attention, q, k, v)
        assert c.by_kind["attention"] == 2 * 4 * 6 * 9 * (8 + 5)
        assert c.total == c.by_kind["attention"]


def test_native_mha_self_and_cross_attention():
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(3, 5, 16)
    with torch.inference_mode(), _OpLog() as log:
        mha(x, x, x, need_weights=False)
    assert "_native_multi_head_attention" in log.ops
    with torch.inference_mode():
        _, fast = count_macs(mha, x, x, x, need_weights=False)
    _, slow = count_macs(mha, x, x, x, need_weights=False)  # grad mode: the Python path
    assert fast.by_kind["linear"] == slow.by_kind["linear"] == 3 * 5 * 4 * 16 * 16
    assert fast.by_kind["attention"] == slow.by_kind["attention"] == 3 * 5 * 5 * 16 * 2

    # the kernel called directly with distinct key/value tensors (the CPU
    # kernel requires equal shapes)
    q, k, v = torch.randn(3, 5, 16), torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    with torch.inference_mode():
        _, direct = count_macs(
            torch._native_multi_head_attention,
            q,
            k,
            v,
            16,
            2,
            mha.in_proj_weight,
            mha.in_proj_bias,
            mha.out_proj.weight,
            mha.out_proj.bias,
            need_weights=False,
        )
    assert direct == fast


def test_model_macs_single_tower_and_dict():
    from transformers import CLIPVisionModel

    from tiny_models import hf_tiny_config

    model = CLIPVisionModel(hf_tiny_config().vision_config).eval()
    macs = model_macs(model)
    assert macs.text is None and macs.text_gmacs is None
    assert macs.gmacs == macs.image_gmacs
    grid = (TINY["image_resolution"] // TINY["vision_patch_size"]) ** 2
    expected = vision_macs([grid + 1] * (TINY["vision_layers"] + 1), "hf")
    expected["linear"] -= TINY["vision_width"] * TINY["embed_dim"]  # no projection head
    _check(macs.image, expected)
    d = macs.to_dict()
    for key in ("image_gmacs", "text_gmacs", "gmacs", "image_gflops", "text_gflops", "gflops", "by_kind_gmacs"):
        assert key in d
    assert d["gflops"] == pytest.approx(2 * d["gmacs"])
    assert d["text_gflops"] is None


def test_model_macs_leaves_the_model_as_it_was():
    model = openclip_tiny().train()
    model.visual.eval()
    before = [m.training for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    model_macs(model)
    assert [m.training for m in model.modules()] == before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def _tiny_models():
    from sweep import CASES, builder

    return [(model_name, builder(adapter_name, model_name)) for adapter_name, model_name in CASES]


@pytest.mark.parametrize("name,build", _tiny_models(), ids=[n for n, _ in _tiny_models()])
def test_every_tiny_model_is_counted(name, build):
    model = build()
    macs = model_macs(model)
    inputs = find_adapter(model).inputs(model)
    assert (macs.image is None) == (inputs.image_size is None)
    assert (macs.text is None) == (inputs.context_length is None)
    assert macs.total > 0
    for count in (macs.image, macs.text):
        if count is not None:
            assert count.by_kind["linear"] > 0 and count.by_kind["attention"] > 0
            assert count.by_kind["matching"] == 0
    patched = crossget_cli.patch(model, vision_r=2, text_r=2 if "text" in find_adapter(model).reduces else 0)
    assert model_macs(patched).total < macs.total
