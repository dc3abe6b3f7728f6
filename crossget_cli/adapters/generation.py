"""What a generating family (captioning, VQA, multimodal LLMs) hands the jobs:
the callables :func:`crossget_cli.profile.generation.time_generation` times, and
the decoding helpers every family's ``generate`` glue shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from crossget_cli.errors import CrossGetError


@dataclass
class GenerationCalls:
    """What to time for one model, on inputs prepared by the caller."""

    encode: Callable[[], Any]
    generate: Callable[[int], Any]
    facts: dict[str, Any] = field(default_factory=dict)


def decode(tokenizer, ids: torch.Tensor) -> list[str]:
    """Generated token ids to stripped text."""
    if tokenizer is None:
        raise CrossGetError("no tokenizer was saved with the model", "save the processor next to the model (save_pretrained)")
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generation_kwargs(generation: dict) -> dict:
    """``max_new_tokens``, ``num_beams``, ``min_new_tokens``... as ``generate`` takes them;
    ``None`` values are left to the model's defaults."""
    allowed = ("max_new_tokens", "min_new_tokens", "num_beams", "repetition_penalty", "length_penalty", "do_sample")
    allowed += ("temperature", "top_p")  # sampling settings (lmms-eval's generation kwargs)
    return {k: v for k, v in generation.items() if k in allowed and v is not None}
