"""open_clip ``CLIP`` / ``CustomTextCLIP`` and OpenAI-style CLIP checkpoints."""

from crossget_cli.adapters.openclip.adapter import OpenClipAdapter

__all__ = ["OpenClipAdapter"]
