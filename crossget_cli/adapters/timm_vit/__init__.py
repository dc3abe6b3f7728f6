"""timm ``VisionTransformer``: classifiers and MAP-pooled (SigLIP) image towers."""

from crossget_cli.adapters.timm_vit.adapter import TimmViTAdapter

__all__ = ["TimmViTAdapter"]
