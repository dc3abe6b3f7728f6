"""Tiny random transformers LLaVA models built in code (no download): the
miniatures the test suite sweeps this family over (:meth:`LlavaAdapter.tiny_models`),
a CLIP vision tower and a Llama language model."""

from __future__ import annotations

import functools

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

#: The tiny tokenizer's vocabulary (a word-level one): the language model's
#: special ids are its ids (<pad>=0 <s>=1 </s>=2 <image>=3).
WORDS = ["<pad>", "<s>", "</s>", "<image>", "<unk>", "USER", ":", "ASSISTANT", "?", ".", "A", "B", "C", "D", "\n"]
WORDS += ["what", "color", "is", "the", "shape", "red", "blue", "green", "circle", "square", "yes", "no", "one", "two"]
WORDS += [f"w{i}" for i in range(60)]


def tiny_llava(vision_layers=3, llm_layers=2, image=32, patch=8, strategy="default", layer=-2, seed=0):
    """A seeded ``LlavaForConditionalGeneration``."""
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=image,
        patch_size=patch,
    )
    text = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=llm_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(WORDS),
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=3,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval()


# Four vision layers, as the adapter sweeps expect.
MODELS = {"LlavaForConditionalGeneration": functools.partial(tiny_llava, vision_layers=4)}
