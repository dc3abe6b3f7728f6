"""Tiny random transformers CLIP models built in code (no download): the
miniatures the test suite sweeps this family over
(:meth:`HFClipAdapter.tiny_models`), the shape of open_clip's tiny CLIP."""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from crossget_cli.adapters.openclip.tiny import TINY


def hf_tiny_config(cfg: dict = TINY, **overrides) -> CLIPConfig:
    """The ``CLIPConfig`` of the CLIP that the official constructor arguments ``cfg`` describe."""
    text = dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["transformer_width"],
        intermediate_size=4 * cfg["transformer_width"],
        num_hidden_layers=cfg["transformer_layers"],
        num_attention_heads=cfg["transformer_heads"],
        max_position_embeddings=cfg["context_length"],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        eos_token_id=2,  # legacy configs pool at argmax(ids), like OpenAI CLIP
        bos_token_id=cfg["vocab_size"] - 2,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=cfg["vision_width"],
        intermediate_size=4 * cfg["vision_width"],
        num_hidden_layers=cfg["vision_layers"],
        num_attention_heads=cfg["vision_width"] // 64,
        image_size=cfg["image_resolution"],
        patch_size=cfg["vision_patch_size"],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg["embed_dim"], **overrides)


def hf_tiny(cfg: dict = TINY, attn_implementation: str = "sdpa") -> CLIPModel:
    return CLIPModel(hf_tiny_config(cfg, attn_implementation=attn_implementation)).eval()


def _tower(cls: type, modality: str) -> Callable[[], nn.Module]:
    """A builder of the single-tower model class ``cls`` with the tiny CLIP's ``modality`` tower."""

    def build():
        config = hf_tiny_config(attn_implementation="sdpa")
        sub = config.vision_config if modality == "vision" else config.text_config
        if "Projection" in cls.__name__:
            sub.projection_dim = config.projection_dim
        return cls._from_config(sub, attn_implementation="sdpa").eval()

    return build


MODELS = {
    "CLIPModel": hf_tiny,
    "CLIPModel-eager": functools.partial(hf_tiny, attn_implementation="eager"),
    "CLIPVisionModel": _tower(CLIPVisionModel, "vision"),
    "CLIPVisionModelWithProjection": _tower(CLIPVisionModelWithProjection, "vision"),
    "CLIPTextModel": _tower(CLIPTextModel, "text"),
    "CLIPTextModelWithProjection": _tower(CLIPTextModelWithProjection, "text"),
}
