"""Tiny random SigLIP models built in code (no download): the miniatures the
test suite sweeps this family over. Both libraries get the same shape: 32 px
images in 8 px patches (16 patches, no CLS), width 64, 2 heads, 4 blocks per
tower, a MAP attention-pooling head; text vocabulary 64, context 16,
bidirectional, pooled at the last token.

open_clip builds its SigLIP image tower from a *named* timm model
(``TimmModel``), so the tiny ViT is registered with timm under
:data:`TINY_TIMM_NAME` the first time a tiny open_clip SigLIP is built (an
addition to timm's model registry, nothing else changes)."""

from __future__ import annotations

import copy

from torch import nn

from crossget_cli.adapters.timm_vit.tiny import TINY_VIT

#: The timm model name the tiny open_clip SigLIP's image tower is built from.
TINY_TIMM_NAME = "crossget_tiny_vit_siglip"

#: open_clip's model config of the tiny SigLIP (the structure of
#: ``model_configs/ViT-B-16-SigLIP.json``, tiny).
OPENCLIP_TINY_CFG = {
    "embed_dim": 64,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {
        "image_size": 32,
        "timm_model_name": TINY_TIMM_NAME,
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 64,
        "width": 64,
        "heads": 2,
        "layers": 4,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    },
}

#: Keyword arguments timm's ``create_model`` passes that a plain constructor does not take.
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def crossget_tiny_vit_siglip(pretrained: bool = False, **kwargs) -> nn.Module:
    """timm entry point of the tiny SigLIP ViT (no pretrained weights exist)."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs = {k: v for k, v in kwargs.items() if k not in _TIMM_ONLY_KWARGS}
    return VisionTransformer(**{**TINY_VIT, "class_token": False, "global_pool": "map", **kwargs})


def register_tiny_timm_model() -> None:
    """Make :data:`TINY_TIMM_NAME` a timm model name (once per process)."""
    import timm
    from timm.models import register_model

    if not timm.is_model(TINY_TIMM_NAME):
        register_model(crossget_tiny_vit_siglip)


def openclip_siglip_tiny(cfg: dict = OPENCLIP_TINY_CFG) -> nn.Module:
    """An open_clip ``CustomTextCLIP`` SigLIP of ``cfg``'s shape, random weights, eval mode."""
    from open_clip.model import CustomTextCLIP

    register_tiny_timm_model()
    cfg = copy.deepcopy(cfg)
    cfg.pop("custom_text", None)
    return CustomTextCLIP(**cfg).eval()


def hf_siglip_config(attn_implementation: str = "sdpa"):
    """The transformers ``SiglipConfig`` of the tiny SigLIP."""
    from transformers import SiglipConfig

    text = {
        "vocab_size": 64,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
        "projection_size": 64,
        "pad_token_id": 0,
        "bos_token_id": 62,
        "eos_token_id": 63,
    }
    vision = {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    return SiglipConfig(text_config=text, vision_config=vision, attn_implementation=attn_implementation)


def hf_siglip_tiny(attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import SiglipModel

    return SiglipModel(hf_siglip_config(attn_implementation)).eval()


def _hf_tower(class_name: str, modality: str):
    def build() -> nn.Module:
        import transformers

        config = hf_siglip_config()
        sub = config.vision_config if modality == "vision" else config.text_config
        return getattr(transformers, class_name)._from_config(sub, attn_implementation="sdpa").eval()

    return build


OPENCLIP_MODELS = {"openclip-SigLIP": openclip_siglip_tiny}
HF_MODELS = {
    "SiglipModel": hf_siglip_tiny,
    "SiglipModel-eager": lambda: hf_siglip_tiny("eager"),
    "SiglipVisionModel": _hf_tower("SiglipVisionModel", "vision"),
    "SiglipTextModel": _hf_tower("SiglipTextModel", "text"),
}
