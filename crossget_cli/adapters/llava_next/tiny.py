"""Tiny random transformers LLaVA-OneVision and LLaVA-NeXT models built in code (no
download): the miniatures the test suite sweeps this family over
(:meth:`LlavaNextAdapter.tiny_models`). OneVision: a SigLIP vision tower (no CLS,
``full`` features of the last layer) and a Qwen2 LLM; NeXT: a CLIP vision tower
(CLS dropped, layer -2) and a Llama LLM. Both take 32 px tiles in 8 px patches (16
patches per tile) and the "anyres" grid :data:`PINPOINTS`: a 64 x 64 image is a base
tile plus 2 x 2 grid tiles; a 32 x 32 one a base tile plus one."""

from __future__ import annotations

import functools

import torch

from crossget_cli.adapters.llava.tiny import WORDS

#: The tiny grid resolutions ``(height, width)`` of ``image_grid_pinpoints``.
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
TILE = 32


def _text_config(kind: str, layers: int):
    from transformers import LlamaConfig, Qwen2Config

    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    return config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(WORDS),
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def tiny_onevision(vision_layers=4, llm_layers=2, layer=-1, strategy="full", seed=0):
    """A seeded ``LlavaOnevisionForConditionalGeneration`` (SigLIP + Qwen2)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=8,
        vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=_text_config("qwen2", llm_layers),
        image_token_index=3,
        video_token_index=4,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_grid_pinpoints=PINPOINTS,
    )
    torch.manual_seed(seed)
    return LlavaOnevisionForConditionalGeneration(config).eval()


def tiny_next(vision_layers=4, llm_layers=2, layer=-2, strategy="default", seed=0):
    """A seeded ``LlavaNextForConditionalGeneration`` (CLIP + Llama)."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=8,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=_text_config("llama", llm_layers),
        image_token_index=3,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_grid_pinpoints=PINPOINTS,
    )
    torch.manual_seed(seed)
    return LlavaNextForConditionalGeneration(config).eval()


def image_processor(model):
    """The model's "anyres" image processor (tiles of the vision tower's size, the
    model's grid), built offline."""
    from transformers import LlavaNextImageProcessor, LlavaOnevisionImageProcessor

    size = model.config.vision_config.image_size
    pinpoints = model.config.image_grid_pinpoints
    if model.config.model_type == "llava_onevision":
        return LlavaOnevisionImageProcessor(size={"height": size, "width": size}, image_grid_pinpoints=pinpoints)
    return LlavaNextImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_grid_pinpoints=pinpoints
    )


MODELS = {
    "LlavaOnevisionForConditionalGeneration": functools.partial(tiny_onevision),
    "LlavaNextForConditionalGeneration": functools.partial(tiny_next),
}
