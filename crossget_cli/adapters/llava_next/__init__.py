"""transformers LLaVA-OneVision (SigLIP vision tower) and LLaVA-NeXT (CLIP vision tower):
"anyres" tiles reduced one by one, packed flat (``llava-next``)."""

from crossget_cli.adapters.llava_next.adapter import LlavaNextAdapter

__all__ = ["LlavaNextAdapter"]
