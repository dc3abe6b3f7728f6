"""LLaVA-OneVision-0.5B-sized vision tower on CPU, random weights: visual tokens per
tile and per image, and the vision tower's GMACs per tile, original and CrossGET
(README "LLaVA-OneVision and LLaVA-NeXT"). Usage:
``PYTHONPATH=. python tests/benchmarks/llava_onevision_flops.py [LAYERS=26] [R=14]``."""

from __future__ import annotations

import sys
import time

from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig

import crossget_cli
from crossget_cli.adapters.llava_next.adapter import num_image_tokens
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.profile.flops import model_macs

#: (height, width) of the images whose token counts are printed
SIZES = [[384, 384], [480, 640], [768, 768], [1080, 1920], [2304, 2304]]


def main(layers: int = 26, r: int = 14) -> None:
    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=layers,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        vision_use_head=False,
    )
    # Qwen2-0.5B's width (the projector maps 1152 -> 896 -> 896); one small LLM layer, which is not counted.
    text = Qwen2Config(
        hidden_size=896, intermediate_size=64, num_hidden_layers=1, num_attention_heads=14, num_key_value_heads=2, vocab_size=1000
    )
    start = time.time()
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=3, video_token_index=4)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    adapter = find_adapter(model)
    before, tile, images = model_macs(model), adapter.num_image_tokens(model), num_image_tokens(model, SIZES)
    crossget_cli.patch(model, vision_r=r)
    after = model_macs(model)
    params = sum(p.numel() for p in model.model.vision_tower.parameters()) / 1e6
    print(f"layers={layers} r={r} vision params={params:.0f}M ({time.time() - start:.0f}s)")
    print("tokens per tile:", tile, "->", adapter.num_image_tokens(model))
    print("tokens per layer (one tile, cross slot included):", adapter.towers(model)[0].token_counts())
    for size, b, a in zip(SIZES, images, num_image_tokens(model, SIZES)):
        print(f"image {size[0]}x{size[1]} (HxW): {b} -> {a} tokens")
    ratio = after.image_gmacs / before.image_gmacs
    print(f"GMACs per tile (vision tower + projector): {before.image_gmacs:.1f} -> {after.image_gmacs:.1f} ({ratio:.3f})")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
