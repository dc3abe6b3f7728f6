"""transformers LLaVA (``LlavaForConditionalGeneration``), with its fine-tuning
objective."""

from crossget_cli.adapters.llava import objective  # noqa: F401  (registers the "llava" objective)
from crossget_cli.adapters.llava.adapter import LlavaAdapter

__all__ = ["LlavaAdapter"]
