"""transformers BLIP-2 (``Blip2ForConditionalGeneration``)."""

from crossget_cli.adapters.blip2.adapter import Blip2Adapter

__all__ = ["Blip2Adapter"]
