"""One adapter per model family, behind one registry.

Shared pieces: :mod:`.base` (the :class:`Adapter` interface), :mod:`.registry`,
:mod:`.tower` (running a patched tower), :mod:`.patching` (patch/unpatch),
:mod:`.model_io`, :mod:`.generation` and :mod:`.training` (the protocols jobs and
families meet on), :mod:`.contrastive` and :mod:`.coop` (the dual-encoder objectives),
:mod:`.prompts` (CoOp's learned prompts). Each family is a sub-package that registers
itself when imported: one line below each.
"""

from crossget_cli.adapters.base import Adapter, Tower
from crossget_cli.adapters.registry import find_adapter, get_adapter, list_adapters, register_adapter

from crossget_cli.adapters import openclip  # noqa: F401,E402  (registers "openclip")
from crossget_cli.adapters import hf_clip  # noqa: F401,E402  (registers "hf-clip")
from crossget_cli.adapters import blip  # noqa: F401,E402  (registers "blip" and its objectives)
from crossget_cli.adapters import blip2  # noqa: F401,E402  (registers "blip2")
from crossget_cli.adapters import llava  # noqa: F401,E402  (registers "llava" and its objective)
from crossget_cli.adapters import llava_next  # noqa: F401,E402  (registers "llava-next": OneVision and NeXT)
from crossget_cli.adapters import timm_vit  # noqa: F401,E402  (registers "timm-vit")
from crossget_cli.adapters import siglip  # noqa: F401,E402  (registers "openclip-siglip" and "hf-siglip")
from crossget_cli.adapters import contrastive  # noqa: F401,E402  (registers the "clip" objective)
from crossget_cli.adapters import coop  # noqa: F401,E402  (registers the "coop" objective)

__all__ = ["Adapter", "Tower", "find_adapter", "get_adapter", "list_adapters", "register_adapter"]
