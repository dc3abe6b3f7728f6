"""Tiny random transformers BLIP-2 models built in code (no download): the
miniatures the test suite sweeps this family over (:meth:`Blip2Adapter.tiny_models`),
with the tiny BLIP's vision config and vocabulary."""

from __future__ import annotations

import functools

import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

from crossget_cli.adapters.blip.tiny import VISION, VOCAB_SIZE


def blip2(kind: str = "generation", seed: int = 0, num_query_tokens: int = 4, vision: dict | None = None) -> torch.nn.Module:
    """A seeded ``Blip2ForConditionalGeneration`` (``kind="generation"``, an OPT
    language model) or ``Blip2ForImageTextRetrieval`` (any other ``kind``)."""
    torch.manual_seed(seed)
    qformer = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        encoder_hidden_size=32,
        max_position_embeddings=40,
        pad_token_id=0,
        use_qformer_text_input=kind != "generation",  # the ITM/ITC model's Q-Former also reads text
    )
    opt = dict(
        model_type="opt",
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=64,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    config = Blip2Config(
        vision_config={**VISION, **(vision or {})},
        qformer_config=qformer,
        text_config=opt,
        num_query_tokens=num_query_tokens,
        image_token_index=7,
        image_text_hidden_size=16,
    )
    cls = Blip2ForConditionalGeneration if kind == "generation" else Blip2ForImageTextRetrieval
    return cls(config).eval()


# Four vision layers, as the adapter sweeps expect.
_FOUR = {"num_hidden_layers": 4}

MODELS = {
    "Blip2ForConditionalGeneration": functools.partial(blip2, "generation", vision=_FOUR),
    "Blip2ForImageTextRetrieval": functools.partial(blip2, "retrieval", vision=_FOUR),
}
