"""Zero-shot classification: class embeddings from prompt templates, top-k accuracy,
and the accuracy of learned (CoOp) prompts."""

from __future__ import annotations

from typing import Sequence

import torch

from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.adapters.prompts import PromptLearner, coop_classifier
from crossget_cli.errors import CrossGetError


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


def mean_per_class_recall(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 recall of each class present in ``labels``, averaged (percent): the
    balanced accuracy CLIP_benchmark reports as ``mean_per_class_recall``."""
    hits = (logits.argmax(dim=1) == labels).float()
    classes = labels.unique()
    return 100.0 * torch.stack([hits[labels == c].mean() for c in classes]).mean().item()


def classification_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """What ``crossget eval --task zeroshot`` reports (percent): ``top1``, ``top5`` and
    ``mean_per_class_recall``."""
    return {**topk_accuracy(logits, labels), "mean_per_class_recall": mean_per_class_recall(logits, labels)}


def evaluate_coop(io: ModelIO, learner: PromptLearner, data, batch_size: int = 64, num_workers: int = 0) -> dict[str, float]:
    """:func:`classification_scores` of the learned prompts on classification ``data``."""
    from torch.utils.data import DataLoader

    if list(data.classnames) != learner.classnames:
        raise CrossGetError(
            "the data's classes differ from the classes the prompts were learned for",
            "evaluate on data with the same class names, in the same order",
        )
    classes = coop_classifier(io, learner)
    loader = DataLoader(data.image_dataset(io.transform), batch_size=batch_size, num_workers=num_workers)
    was_training = io.model.training
    io.model.eval()
    try:
        images = io.encode_images(batch for _, batch in loader)
    finally:
        io.model.train(was_training)
    return classification_scores(images @ classes.t(), torch.as_tensor(data.labels))
