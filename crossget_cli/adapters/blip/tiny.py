"""Tiny random transformers BLIP models built in code (no download): the
miniatures the test suite sweeps this family over (:meth:`BlipAdapter.tiny_models`),
and the configs and vocabulary the BLIP-2 miniatures share."""

from __future__ import annotations

import functools

import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering

#: The tiny tokenizer's vocabulary: the special ids of the configs below are its
#: ids ([PAD]=0 [CLS]=2 [SEP]=3 [DEC]=5 [ENC]=6 <image>=7).
WORDS = "a an the of on in with and is are cat dog red blue green square circle photo picture what color how many".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]", "<image>"]
VOCAB = SPECIAL + WORDS
VOCAB_SIZE = 64

# BLIP's vision config initialises with std 1e-10, which makes a random ViT's output
# independent of the image; the usual 0.02 gives tiny models that see their input.
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    initializer_range=0.02,
)
TEXT = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=40,
    encoder_hidden_size=32,
    pad_token_id=0,
    bos_token_id=5,
    sep_token_id=3,
    eos_token_id=3,
)

BLIP_CLASSES = {
    "retrieval": BlipForImageTextRetrieval,
    "captioning": BlipForConditionalGeneration,
    "vqa": BlipForQuestionAnswering,
}


def blip_config(vision: dict | None = None, text: dict | None = None) -> BlipConfig:
    return BlipConfig(
        vision_config={**VISION, **(vision or {})},
        text_config={**TEXT, **(text or {})},
        projection_dim=16,
        image_text_hidden_size=16,
    )


def blip(kind: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """The ``kind`` (a :data:`BLIP_CLASSES` key) model, seeded; ``overrides``
    update the ``vision``/``text`` configs."""
    torch.manual_seed(seed)
    return BLIP_CLASSES[kind](blip_config(**overrides)).eval()


# Four layers per tower, as the adapter sweeps expect.
_FOUR = {"num_hidden_layers": 4}

MODELS = {
    "BlipForImageTextRetrieval": functools.partial(blip, "retrieval", vision=_FOUR, text=_FOUR),
    "BlipForConditionalGeneration": functools.partial(blip, "captioning", vision=_FOUR, text=_FOUR),
    "BlipForQuestionAnswering": functools.partial(blip, "vqa", vision=_FOUR, text=_FOUR),
}
