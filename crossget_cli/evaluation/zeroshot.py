"""Zero-shot classification: class embeddings from prompt templates, top-k accuracy."""

from __future__ import annotations

from typing import Sequence

import torch

from crossget_cli.adapters.model_io import ModelIO


def class_embeddings(io: ModelIO, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """``[C, E]``: for each class, the mean of its normalised template embeddings,
    normalised again (CLIP's zero-shot recipe)."""
    rows = []
    for name in classnames:
        prompts = [template.format(name) for template in templates]
        mean = io.encode_texts(prompts, batch_size).mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent (``top1``, ``top5``); k is capped at the class count."""
    out = {}
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    for k in ks:
        out[f"top{k}"] = 100.0 * (ranked[:, :k] == labels[:, None]).any(dim=1).float().mean().item()
    return out
