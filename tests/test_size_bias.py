"""``size_bias=False`` (issue #16: the FlashAttention mode, ToMe's ``prop_attn=False``):
merged tokens attend without the ``log(size)`` bias, so a vision tower's attention
takes no mask; sizes are still tracked; the switch round-trips through recipes,
exports and ``crossget_cli.load``; the default path is unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from typer.testing import CliRunner

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.cli.app import app
from crossget_cli.config import ReductionConfig
from crossget_cli.core import TokenState, trace_reduction
from crossget_cli.errors import CrossGetError
from crossget_cli.recipes import recipe_from_dict
from sweep import CASES, build, example_inputs, features

runner = CliRunner()

#: aten attention ops and the position of their mask argument (args after q, k, v).
_ATTENTION_OPS = {
    "_scaled_dot_product_flash_attention_for_cpu": "attn_mask",
    "_scaled_dot_product_efficient_attention": "attn_bias",
    "_scaled_dot_product_flash_attention": None,
    "_scaled_dot_product_cudnn_attention": "attn_bias",
    "_scaled_dot_product_attention_math": "attn_mask",
    "_scaled_dot_product_fused_attention_overrideable": "attn_bias",
}


class AttentionMasks(TorchDispatchMode):
    """Records, for every fused attention call dispatched, whether it got a mask."""

    def __init__(self):
        super().__init__()
        self.masked: list[bool] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _ATTENTION_OPS:
            key = _ATTENTION_OPS[name]
            mask = kwargs.get(key) if key else None
            if key and mask is None:
                schema = [a.name for a in func._schema.arguments]
                if key in schema and schema.index(key) < len(args):
                    mask = args[schema.index(key)]
            self.masked.append(mask is not None)
        return func(*args, **kwargs)


def _vision_masks(model, images, monkeypatch) -> list[bool]:
    """Whether each vision attention call got a mask: from the fused SDPA calls
    dispatched, and (eager attention, where no fused op runs) from the masks the
    vision towers' states hand their blocks."""
    adapter = find_adapter(model)
    handed: list[bool] = []
    original = TokenState.attention_mask

    def recording(self, x, explicit_causal=False):
        mask = original(self, x, explicit_causal)
        if self.pooled_idx is None:  # a vision tower's state
            handed.append(mask is not None)
        return mask

    with monkeypatch.context() as patched:
        patched.setattr(TokenState, "attention_mask", recording)
        with torch.no_grad(), AttentionMasks() as mode:
            adapter.encode_image(model, images)
    return mode.masked + handed


def test_config_and_recipe_key():
    assert ReductionConfig().size_bias is True
    assert ReductionConfig().to_dict() == {"method": "crossget", "vision_r": 0, "text_r": 0}
    assert ReductionConfig(size_bias=False).to_dict()["size_bias"] is False
    with pytest.raises(CrossGetError, match="size_bias"):
        ReductionConfig(size_bias="no")
    recipe = recipe_from_dict({"reduction": {"vision_r": 4, "size_bias": False}})
    assert recipe.reduction.to_config().size_bias is False
    assert recipe_from_dict({"reduction": {"vision_r": 4}}).reduction.to_config().size_bias is True
    with pytest.raises(CrossGetError, match="reduction.size_bias"):
        recipe_from_dict({"reduction": {"size_bias": "off"}})


def test_padded_state_still_masks_padding_without_the_bias():
    """A padded caption without the size bias: padding (size 0) stays at -inf,
    real tokens of any size get 0."""
    state = TokenState(size_bias=False)
    state.pad(torch.tensor([[1, 1, 0]]))
    state.sizes = torch.tensor([[[3.0], [1.0], [0.0], [1.0]]])
    mask = state.attention_mask(torch.zeros(1, 4, 8))
    assert mask.flatten().tolist() == [0.0, 0.0, float("-inf"), 0.0]
    assert TokenState(size_bias=False, sizes=torch.full((1, 4, 1), 2.0)).attention_mask(torch.zeros(1, 4, 8)) is None


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_no_size_bias_sweep(adapter_name, model_name, monkeypatch):
    """Every family: with merged tokens the unbiased path differs from the biased
    one and its vision attention takes no mask; at r = 0 the two are equal."""
    model = build(adapter_name, model_name).eval()
    adapter = find_adapter(model)
    images, texts = example_inputs(model)
    vision_r = 2
    text_r = 2 if "text" in adapter.reduces and texts is not None else 0
    crossget_cli.patch(model, vision_r=vision_r, text_r=text_r)
    with torch.no_grad():  # non-zero cross tokens: the r = 0 comparison is then not trivial
        for name, param in model.named_parameters():
            if name.endswith(("cross_image", "cross_text")):
                param.normal_(0, 0.1)
    biased = features(model, images, texts)
    if images is not None:
        assert any(_vision_masks(model, images, monkeypatch)), "the biased vision tower should take the size bias as a mask"
    reranks = images is not None and adapter.reranks(model)
    if reranks:  # BLIP's ITM consumer cross-attends with the sizes' bias
        with torch.no_grad():
            assert adapter.image_tokens(model, images)[1] is not None
    crossget_cli.patch(model, vision_r=vision_r, text_r=text_r, size_bias=False)
    assert crossget_cli.reduction_config(model).size_bias is False
    with trace_reduction() as trace:
        unbiased = features(model, images, texts)
    assert any(r["sizes"] is not None and r["sizes"].max() > 1 for r in trace), "sizes are still tracked"
    if images is not None:
        masks = _vision_masks(model, images, monkeypatch)
        assert masks and not any(masks), f"vision attention got a mask without the size bias: {masks}"
        assert not torch.allclose(biased["image"], unbiased["image"], atol=1e-6)
    if reranks:
        with torch.no_grad():
            assert adapter.image_tokens(model, images)[1] is None
    text_merged = any(r["modality"] == "text" and r["sizes"] is not None and r["sizes"].max() > 1 for r in trace)
    if text_merged:
        assert not torch.allclose(biased["text"], unbiased["text"], atol=1e-6)

    crossget_cli.patch(model, vision_r=0, text_r=0)
    at_zero = features(model, images, texts)
    crossget_cli.patch(model, vision_r=0, text_r=0, size_bias=False)
    for key, value in features(model, images, texts).items():
        assert torch.equal(value, at_zero[key]), key
    crossget_cli.unpatch(model)
    assert not any("crossget_size_bias" in vars(m) for m in model.modules())


def test_export_round_trip_and_cli(tiny, tmp_path, monkeypatch):
    """`crossget compress --no-size-bias` writes reduction.size_bias: false; the
    export reloads with the bias off and bit-identical outputs; the default
    export writes no size_bias key."""
    out = tmp_path / "nobias"
    result = runner.invoke(
        app, ["compress", "--model", str(tiny), "--vision-r", "4", "--no-size-bias", "--no-speed", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "size_bias: false" in (out / "crossget.yaml").read_text()
    loaded = crossget_cli.load(out)
    assert crossget_cli.reduction_config(loaded).size_bias is False
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert not any(_vision_masks(loaded, images, monkeypatch))
    again = runner.invoke(app, ["compress", "--model", str(out), "--vision-r", "6", "--no-speed", "-o", str(tmp_path / "re")])
    assert again.exit_code == 0, again.output
    assert crossget_cli.reduction_config(crossget_cli.load(tmp_path / "re")).size_bias is False  # kept on re-compression

    default = tmp_path / "biased"
    assert (
        runner.invoke(app, ["compress", "--model", str(tiny), "--vision-r", "4", "--no-speed", "-o", str(default)]).exit_code == 0
    )
    assert "size_bias" not in (default / "crossget.yaml").read_text()
    biased = crossget_cli.load(default)
    with torch.no_grad():
        assert not torch.allclose(biased.encode_image(images), loaded.encode_image(images), atol=1e-6)


def test_profile_flag(tiny):
    result = runner.invoke(
        app,
        ["profile", "--model", str(tiny), "--vision-r", "4", "--text-r", "0", "--batch-sizes", "1", "--repeats", "1",
         "--warmup", "0", "--no-size-bias", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["size_bias"] is False
