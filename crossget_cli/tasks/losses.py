"""CLIP fine-tuning losses on a patched model (SPEC §4)."""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import find_adapter
from ..api import reduction_config
from ..core import collect_cross_tokens, contrastive_loss, js_loss
from ..core.losses import MAX_LOGIT_SCALE
from ..errors import CrossGetError


def clip_losses(
    model: nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    itc_weight: float = 0.5,
    js_weight: float = 0.5,
) -> dict[str, torch.Tensor]:
    """``{"itc", "js", "total"}`` for one batch of image-caption pairs.

    ``itc`` is the symmetric contrastive loss with soft targets from equal
    ``image_ids`` (default: every image distinct) and the logit scale clamped in
    place to [0, ln 100]; ``js`` is L_JS between the projected cross tokens of the
    two towers; ``total = itc_weight * itc + js_weight * js`` (0.5 / 0.5 as in the
    paper). Run it in training mode: that is when the text tower injects its cross
    tokens even with r = 0.

    A model without cross tokens (the original, or one patched with ToMe) has no
    L_JS: ``total = itc`` and the returned ``js`` is a zero: the plain CLIP objective
    used for training from scratch and for the controls of an accuracy study.
    """
    adapter = find_adapter(model)
    scale = adapter.logit_scale(model)
    with torch.no_grad():
        scale.clamp_(0, MAX_LOGIT_SCALE)
    config = reduction_config(model)
    if config is None or config.method != "crossget":
        image_features = adapter.encode_image(model, images)
        text_features = adapter.encode_text(model, texts)
        itc = contrastive_loss(image_features, text_features, scale, image_ids)
        return {
            "itc": itc,
            "js": itc.new_zeros(()),
            "total": itc,
            "image_features": image_features,
            "text_features": text_features,
        }
    with collect_cross_tokens() as cross:
        image_features = adapter.encode_image(model, images)
        text_features = adapter.encode_text(model, texts)
    if not cross["vision"] or not cross["text"]:
        raise CrossGetError("no cross tokens were injected in this forward", "call model.train() before computing losses")
    image_cross = adapter.project_cross(model, "vision", cross["vision"][-1])
    text_cross = adapter.project_cross(model, "text", cross["text"][-1])
    if image_cross.shape != text_cross.shape:
        raise CrossGetError(
            f"L_JS needs towers of equal depth: {image_cross.shape[0] // images.shape[0]} vision vs "
            f"{text_cross.shape[0] // texts.shape[0]} text layers",
            "use a model whose towers have the same number of layers (SPEC §4)",
        )
    itc = contrastive_loss(image_features, text_features, scale, image_ids)
    js = js_loss(image_cross, text_cross)
    return {
        "itc": itc,
        "js": js,
        "total": itc_weight * itc + js_weight * js,
        "image_features": image_features,
        "text_features": text_features,
        "image_cross": image_cross,
        "text_cross": text_cross,
    }
