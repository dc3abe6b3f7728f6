"""Test helpers around the tiny random BLIP and BLIP-2 models the adapters build
in code (``crossget_cli.adapters.blip.tiny``, ``...blip2.tiny``, re-exported here):
the tiny tokenizer and image processor, and saving a model with both."""

from __future__ import annotations

from pathlib import Path

from transformers import BertTokenizer, BlipImageProcessor

from crossget_cli.adapters.blip.tiny import VOCAB, VOCAB_SIZE, blip
from crossget_cli.adapters.blip2.tiny import blip2

__all__ = ["VOCAB", "VOCAB_SIZE", "blip", "blip2", "image_processor", "save", "tokenizer"]


def tokenizer(folder: Path) -> BertTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizer(str(vocab), bos_token="[DEC]", additional_special_tokens=["[ENC]", "<image>"])


def image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": 32, "width": 32})


def save(model, folder: Path) -> Path:
    """``save_pretrained`` the model with its tokenizer and image processor."""
    model.save_pretrained(folder)
    tokenizer(folder / "_vocab").save_pretrained(folder)
    image_processor().save_pretrained(folder)
    return folder
