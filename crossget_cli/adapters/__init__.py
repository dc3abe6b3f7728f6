"""One adapter per model family, behind one registry (see :mod:`.base`)."""

from .base import Adapter, Tower, find_adapter, get_adapter, list_adapters, register_adapter
from . import openclip  # noqa: F401  (registers "openclip")
from . import hf_clip  # noqa: F401  (registers "hf-clip")
from . import blip  # noqa: F401  (registers "blip")
from . import blip2  # noqa: F401  (registers "blip2")
from . import llava  # noqa: F401  (registers "llava")

__all__ = ["Adapter", "Tower", "find_adapter", "get_adapter", "list_adapters", "register_adapter"]
