"""End-to-end parity with the official CrossGET CLIP (SPEC §9), through both
the open_clip and the transformers adapter."""

from __future__ import annotations

import pytest
import torch

from crossget_cli.core import trace_reduction
from tiny_models import golden_hf, golden_openclip

VARIANTS = ["ours_rv4_rl3", "ours_rv4_rl0", "ours_rv0_rl3", "ours_rv0_rl0", "none_rv0_rl0", "ours_rv16_rl16"]


BUILDERS = {
    "openclip": golden_openclip,
    "hf-sdpa": golden_hf,
    "hf-eager": lambda g, v: golden_hf(g, v, "eager"),
}


@pytest.mark.parametrize("family", BUILDERS)
@pytest.mark.parametrize("name", VARIANTS)
def test_features_and_blocks_match_official(golden, family, name):
    variant = golden["variants"][name]
    model, encode_image, encode_text = BUILDERS[family](golden, variant)
    with torch.no_grad(), trace_reduction() as trace:
        image_features = encode_image(golden["image"])
        text_features = encode_text(golden["text"])

    blocks = {m: [r for r in trace if r["modality"] == m] for m in ("vision", "text")}
    reference = {"vision": variant["eval_blocks"]["visual"], "text": variant["eval_blocks"]["text"]}
    if variant["reduce"] == "none":
        assert trace == []
    else:
        assert len(blocks["vision"]) == len(reference["vision"])
        if variant["rl"] > 0:  # with r = 0 the text tower keeps its original code path at inference
            assert len(blocks["text"]) == len(reference["text"])
        for modality in ("vision", "text"):
            for ours, theirs in zip(blocks[modality], reference[modality]):
                assert ours["x"].shape[1] == theirs["x"].shape[0]  # token counts exact, every variant
                if ours["sizes"] is not None:
                    assert torch.equal(ours["sizes"].sort(1).values, theirs["token_size"].sort(1).values)

    if not variant["decision_stable"]:
        return  # SPEC §9: compare the unstable variant by token counts and sizes only
    assert (image_features - variant["image_features"]).abs().max() < 1e-5
    assert (text_features - variant["text_features"]).abs().max() < 1e-5
    for modality in ("vision", "text") if variant["reduce"] == "ours" else ():
        for ours, theirs in zip(blocks[modality], reference[modality]):
            assert torch.allclose(ours["x"], theirs["x"].transpose(0, 1), atol=1e-5, rtol=1e-5)
            assert (ours["cross_in"] - theirs["cross_in"]).abs().max() < 1e-5
            if ours["sizes"] is not None:
                assert torch.equal(ours["sizes"], theirs["token_size"])
            if modality == "text" and variant["rl"] > 0:
                assert torch.allclose(ours["token_ids"], theirs["token_id"].float(), atol=1e-4)
