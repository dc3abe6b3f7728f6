"""transformers BLIP: retrieval (ITC/ITM), captioning and VQA models, with
their fine-tuning objectives."""

from crossget_cli.adapters.blip import objectives  # noqa: F401  (registers "blip-*" objectives)
from crossget_cli.adapters.blip.adapter import BlipAdapter

__all__ = ["BlipAdapter"]
