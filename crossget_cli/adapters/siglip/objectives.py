"""SigLIP's fine-tuning objective: the pairwise sigmoid loss (Zhai et al., 2023)
with the model's own ``logit_scale`` and ``logit_bias``, plus L_JS between the
projected cross tokens, as the ``clip`` objective pairs ITC with it (SPEC §4)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossget_cli.adapters.contrastive import ClipObjective
from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.adapters.patching import reduction_config
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.siglip.adapter import sigmoid_logits
from crossget_cli.adapters.training import FinetuneConfig, gather, register_objective, world_info
from crossget_cli.core import collect_cross_tokens, js_loss
from crossget_cli.errors import CrossGetError


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's loss: ``-sum log sigmoid(z_ij * logit_ij) / N`` over every
    image-caption pair, ``z_ij = +1`` for a matching pair (equal image ids;
    default: the diagonal) and ``-1`` otherwise. The logit scale is not clamped:
    SigLIP's trained scales exceed CLIP's ln 100."""
    logits = sigmoid_logits(image_features, text_features, logit_scale, logit_bias)
    if image_ids is None:
        image_ids = torch.arange(logits.shape[0], device=logits.device)
    labels = (image_ids[:, None] == image_ids[None, :]).to(logits.dtype) * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


def siglip_losses(
    model: nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    task_weight: float = 0.5,
    js_weight: float = 0.5,
) -> dict[str, torch.Tensor]:
    """``{"sigmoid", "js", "total"}`` for one batch of image-caption pairs (run in
    training mode); a model without cross tokens has no L_JS (``total = sigmoid``)."""
    adapter = find_adapter(model)
    scale, bias = adapter.logit_scale(model), adapter.logit_bias(model)
    config = reduction_config(model)
    with collect_cross_tokens() as cross:
        image_features = adapter.encode_image(model, images)
        text_features = adapter.encode_text(model, texts)
    loss = sigmoid_loss(image_features, text_features, scale, bias, image_ids)
    out = {"sigmoid": loss, "image_features": image_features, "text_features": text_features}
    if config is None or config.method != "crossget":
        return {**out, "js": loss.new_zeros(()), "total": loss}
    if not cross["vision"] or not cross["text"]:
        raise CrossGetError("no cross tokens were injected in this forward", "call model.train() before computing losses")
    image_cross = adapter.project_cross(model, "vision", cross["vision"][-1])
    text_cross = adapter.project_cross(model, "text", cross["text"][-1])
    if image_cross.shape != text_cross.shape:
        raise CrossGetError(
            "L_JS needs towers of equal depth and width of embedding", "use a SigLIP whose towers match (SPEC §4)"
        )
    js = js_loss(image_cross, text_cross)
    total = task_weight * loss + js_weight * js
    return {**out, "js": js, "total": total, "image_cross": image_cross, "text_cross": text_cross}


@register_objective("siglip")
class SiglipObjective(ClipObjective):
    """Sigmoid loss + L_JS on image-caption pairs, 0.5 / 0.5 by default (the
    ``clip`` objective's data, weights and validation)."""

    parts = ("sigmoid", "js")

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        images = torch.stack([it[0] for it in items]).to(io.device)
        texts = io.tokenize([it[1] for it in items]).to(io.device)
        image_ids = torch.tensor([it[2] for it in items], device=io.device)
        local = siglip_losses(model, images, texts, image_ids, config.task_weight, config.js_weight)
        if world_info()[1] == 1:
            return local
        adapter = find_adapter(model)
        loss = sigmoid_loss(
            gather(local["image_features"]),
            gather(local["text_features"]),
            adapter.logit_scale(model),
            adapter.logit_bias(model),
            gather(image_ids),
        )
        if "image_cross" not in local:
            return {"sigmoid": loss, "js": local["js"], "total": loss}
        js = js_loss(gather(local["image_cross"]), gather(local["text_cross"]))
        return {"sigmoid": loss, "js": js, "total": config.task_weight * loss + config.js_weight * js}
