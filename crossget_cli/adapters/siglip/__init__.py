"""SigLIP: open_clip's (``openclip-siglip``) and transformers' (``hf-siglip``)
SigLIP models, and the ``siglip`` fine-tuning objective (sigmoid loss + L_JS)."""

from crossget_cli.adapters.siglip import objectives  # noqa: F401  (registers "siglip")
from crossget_cli.adapters.siglip.adapter import OpenClipSiglipAdapter
from crossget_cli.adapters.siglip.hf import HFSiglipAdapter

__all__ = ["HFSiglipAdapter", "OpenClipSiglipAdapter"]
