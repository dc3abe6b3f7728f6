"""The Python entry points: :func:`patch` and :func:`unpatch`."""

from __future__ import annotations

from torch import nn

from .adapters import find_adapter
from .adapters.base import CONFIG_ATTR, restore_classes
from .config import ReductionConfig, RSpec


def patch(model: nn.Module, vision_r: RSpec = 0, text_r: RSpec = 0, method: str = "crossget") -> nn.Module:
    """Inject CrossGET into ``model`` in place and return it.

    ``vision_r``/``text_r`` are the tokens merged per layer: one integer for every
    layer (clamped to half the unprotected tokens at each layer) or one value per
    layer. Patching a patched model reconfigures it, keeping its cross tokens.
    """
    config = ReductionConfig(vision_r=vision_r, text_r=text_r, method=method)
    return find_adapter(model).apply(model, config)


def unpatch(model: nn.Module) -> nn.Module:
    """Restore the original classes and remove the cross tokens, in place."""
    if is_patched(model):
        find_adapter(model).remove(model)
    else:
        restore_classes(model)
    return model


def is_patched(model: nn.Module) -> bool:
    return CONFIG_ATTR in model.__dict__


def reduction_config(model: nn.Module) -> ReductionConfig | None:
    return model.__dict__.get(CONFIG_ATTR)


def load(source: str, pretrained: str | None = None) -> nn.Module:
    """Load any ``--model`` string (a ``crossget compress`` folder comes back
    patched with its cross tokens) and return the model in eval mode."""
    from .tasks.loading import load_model

    return load_model(source, pretrained).model
