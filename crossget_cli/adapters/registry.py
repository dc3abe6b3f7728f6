"""The adapter registry: every model family registers its :class:`Adapter` here,
and jobs find a model's family by asking each adapter whether it matches."""

from __future__ import annotations

from torch import nn

from crossget_cli.adapters.base import Adapter
from crossget_cli.errors import CrossGetError
from crossget_cli.registry import Registry

ADAPTERS: Registry[type[Adapter]] = Registry("adapter")


def register_adapter(name: str):
    """Class decorator adding an adapter to the registry under ``name``."""
    return ADAPTERS.register(name)


def list_adapters() -> list[str]:
    return ADAPTERS.names()


def get_adapter(name: str) -> Adapter:
    return ADAPTERS.get(name)()


def find_adapter(model: nn.Module) -> Adapter:
    """The adapter whose family ``model`` belongs to (families that contain
    another's towers, e.g. a vision-language LLM holding a CLIP tower, ask first)."""
    for cls in sorted(ADAPTERS, key=lambda c: -c.priority):
        if cls.matches(model):
            return cls()
    supported = "; ".join(f"{c.name}: {c.description}" for c in sorted(ADAPTERS, key=lambda c: c.name))
    raise CrossGetError(f"unsupported model type {type(model).__name__}", f"supported: {supported}")
