"""The contrastive objective of every dual encoder (SPEC §4): ITC + L_JS on
image-caption pairs, as :func:`clip_losses` and as the registered ``clip``
fine-tuning objective. The ITC term is the family's own contrastive loss
(:meth:`Adapter.contrastive_loss`: CLIP's softmax, SigLIP's sigmoid)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.patching import reduction_config
from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.adapters.training import FinetuneConfig, Objective, gather, register_objective, world_info
from crossget_cli.core import collect_cross_tokens, js_loss
from crossget_cli.errors import CrossGetError


def clip_losses(
    model: nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    itc_weight: float = 0.5,
    js_weight: float = 0.5,
) -> dict[str, torch.Tensor]:
    """``{"itc", "js", "total"}`` for one batch of image-caption pairs.

    ``itc`` is the family's contrastive loss (:meth:`Adapter.contrastive_loss`;
    CLIP's: symmetric softmax with soft targets from equal ``image_ids``, the logit
    scale clamped in place to [0, ln 100]); ``js`` is L_JS between the projected cross tokens of the
    two towers; ``total = itc_weight * itc + js_weight * js`` (0.5 / 0.5 as in the
    paper). Run it in training mode: that is when the text tower injects its cross
    tokens even with r = 0.

    A model without cross tokens (the original, or one patched with ToMe) has no
    L_JS: ``total = itc`` and the returned ``js`` is a zero: the plain CLIP objective
    used for training from scratch and for the controls of an accuracy study.
    """
    adapter = find_adapter(model)
    config = reduction_config(model)
    if config is None or config.method != "crossget":
        image_features = adapter.encode_image(model, images)
        text_features = adapter.encode_text(model, texts)
        itc = adapter.contrastive_loss(model, image_features, text_features, image_ids)
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
    itc = adapter.contrastive_loss(model, image_features, text_features, image_ids)
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


class CaptionPairs(Dataset):
    """Every (image, caption) pair of a retrieval data set; item ``i`` is caption ``i``."""

    def __init__(self, data, transform):
        self.images = data.image_dataset(transform)
        self.captions = data.captions
        self.owner = data.caption_to_image

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int):
        image_index = self.owner[index]
        return self.images[image_index][1], self.captions[index], image_index


def retrieval_data(config: FinetuneConfig, source: str, split: str, limit: int | None = None):
    from crossget_cli.data.retrieval import load_retrieval

    return load_retrieval(
        source,
        image_root=config.image_root,
        split=split,
        image_column=config.image_column,
        caption_column=config.caption_column,
        limit=limit,
    )


@register_objective("clip")
class ClipObjective(Objective):
    """ITC with soft targets + L_JS on image-caption pairs (SPEC §4), 0.5 / 0.5 by default."""

    parts = ("itc", "js")
    default_task_weight = 0.5

    def task_weight_for(self, js_weight: float) -> float:
        return 1.0 - js_weight if js_weight <= 1 else 1.0

    def dataset(self, io: ModelIO, config: FinetuneConfig) -> Dataset:
        return CaptionPairs(retrieval_data(config, config.data, config.split, config.limit), io.transform)

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        images = torch.stack([it[0] for it in items]).to(io.device)
        texts = io.tokenize([it[1] for it in items]).to(io.device)
        image_ids = torch.tensor([it[2] for it in items], device=io.device)
        local = clip_losses(model, images, texts, image_ids, config.task_weight, config.js_weight)
        if world_info()[1] == 1:
            return local
        adapter = find_adapter(model)
        itc = adapter.contrastive_loss(model, gather(local["image_features"]), gather(local["text_features"]), gather(image_ids))
        if "image_cross" not in local:  # no cross tokens: ITC alone
            return {"itc": itc, "js": local["js"], "total": itc}
        # Cross rows are layer-major per rank; gathering keeps image and text rows aligned.
        js = js_loss(gather(local["image_cross"]), gather(local["text_cross"]))
        return {"itc": itc, "js": js, "total": config.task_weight * itc + config.js_weight * js}

    def validator(self, config: FinetuneConfig) -> Callable[[ModelIO], dict[str, float]]:
        from torch.utils.data import DataLoader

        from crossget_cli.metrics.retrieval import retrieval_recall

        val = retrieval_data(config, config.val_data, config.val_split)

        def evaluate(io: ModelIO) -> dict[str, float]:
            batches = (images for _, images in DataLoader(val.image_dataset(io.transform), batch_size=64))
            return retrieval_recall(io.encode_images(batches), io.encode_texts(val.captions, 64), val.caption_to_image)

        return evaluate
