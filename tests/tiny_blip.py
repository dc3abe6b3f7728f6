"""Tiny random BLIP and BLIP-2 models and processors built in code (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BertTokenizer,
)

WORDS = "a an the of on in with and is are cat dog red blue green square circle photo picture what color how many".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]", "<image>"]
VOCAB = SPECIAL + WORDS  # ids: [PAD]=0 [CLS]=2 [SEP]=3 [DEC]=5 [ENC]=6 <image>=7
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


def tokenizer(folder: Path) -> BertTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizer(str(vocab), bos_token="[DEC]", additional_special_tokens=["[ENC]", "<image>"])


def image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": 32, "width": 32})


def blip_config(vision: dict | None = None, text: dict | None = None) -> BlipConfig:
    config = BlipConfig(
        vision_config={**VISION, **(vision or {})},
        text_config={**TEXT, **(text or {})},
        projection_dim=16,
        image_text_hidden_size=16,
    )
    return config


def blip(kind: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BLIP_CLASSES[kind](blip_config(**overrides)).eval()


def blip2(kind: str = "generation", seed: int = 0, num_query_tokens: int = 4, vision: dict | None = None) -> torch.nn.Module:
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


def save(model, folder: Path) -> Path:
    """``save_pretrained`` the model with its tokenizer and image processor."""
    model.save_pretrained(folder)
    tokenizer(folder / "_vocab").save_pretrained(folder)
    image_processor().save_pretrained(folder)
    return folder
