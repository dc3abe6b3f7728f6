"""transformers CLIP: ``CLIPModel`` and its vision/text tower classes."""

from crossget_cli.adapters.hf_clip.adapter import HFClipAdapter

__all__ = ["HFClipAdapter"]
