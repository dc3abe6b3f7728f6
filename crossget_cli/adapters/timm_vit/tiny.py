"""Tiny random timm ViTs built in code (no download): the miniatures the test
suite sweeps this family over (:meth:`TimmViTAdapter.tiny_models`): a CLS-token
classifier and a MAP-pooled ViT without CLS (SigLIP's image tower), 32 px
images in 8 px patches (16 patches), width 64, 2 heads, 4 blocks."""

from __future__ import annotations

import functools

from timm.models.vision_transformer import VisionTransformer

#: The shared shape of the tiny ViTs (SigLIP's image tower too).
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2}


def tiny_vit(num_classes: int = 10, **overrides) -> VisionTransformer:
    """A timm ``VisionTransformer`` of :data:`TINY_VIT`'s shape, random weights, eval mode."""
    return VisionTransformer(**{**TINY_VIT, "num_classes": num_classes, **overrides}).eval()


MODELS = {
    "timm-vit-token": tiny_vit,
    "timm-vit-map": functools.partial(tiny_vit, class_token=False, global_pool="map"),
}
