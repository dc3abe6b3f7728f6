"""The losses of CrossGET fine-tuning (SPEC §4), as pure tensor functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: CLIP's logit scale is clamped to [0, ln 100] before use.
MAX_LOGIT_SCALE = math.log(100.0)


def js_loss(image_cross: torch.Tensor, text_cross: torch.Tensor) -> torch.Tensor:
    """L_JS between projected cross tokens ``[L*N, E]`` (rows aligned, layer-major).

    Reproduced literally from the reference: ``P``/``Q`` are softmaxes over E
    (no temperature), ``M = (P + Q) / 2`` and the loss is
    ``(KL(M||P) + KL(M||Q)) / 2`` with ``batchmean`` reduction: the *reversed*
    KL of ``F.kl_div(log P, M)``, not the textbook JS divergence. Gradients also
    flow through ``M``.
    """
    if image_cross.shape != text_cross.shape:
        raise ValueError(
            f"L_JS needs aligned rows: image cross tokens {tuple(image_cross.shape)} vs text {tuple(text_cross.shape)} "
            "(the towers must have the same depth, SPEC §4)"
        )
    mean = (image_cross.softmax(dim=-1) + text_cross.softmax(dim=-1)) / 2
    to_image = F.kl_div(image_cross.log_softmax(dim=-1), mean, reduction="batchmean")
    to_text = F.kl_div(text_cross.log_softmax(dim=-1), mean, reduction="batchmean")
    return (to_image + to_text) / 2


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric image-text contrastive loss with soft targets: pairs whose
    images share an id are all positives (uniform over them). ``logit_scale``
    is the log of the temperature's inverse, already clamped."""
    image_features = image_features / image_features.norm(dim=1, keepdim=True)
    text_features = text_features / text_features.norm(dim=1, keepdim=True)
    logits = logit_scale.exp() * image_features @ text_features.t()
    if image_ids is None:
        image_ids = torch.arange(logits.shape[0], device=logits.device)
    ids = image_ids.view(-1, 1)
    positives = (ids == ids.t()).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    image_to_text = -(logits.log_softmax(dim=1) * targets).sum(dim=1).mean()
    text_to_image = -(logits.t().log_softmax(dim=1) * targets).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2
