"""Patching a model in place: :func:`patch` and :func:`unpatch` (re-exported as
``crossget_cli.patch``/``crossget_cli.unpatch``)."""

from __future__ import annotations

from torch import nn

from crossget_cli.adapters.base import CONFIG_ATTR, restore_classes
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.config import ReductionConfig, RSpec


def patch(
    model: nn.Module, vision_r: RSpec = 0, text_r: RSpec = 0, method: str = "crossget", size_bias: bool = True
) -> nn.Module:
    """Inject CrossGET into ``model`` in place and return it.

    ``vision_r``/``text_r`` are the tokens merged per layer: one integer for every
    layer (clamped to half the unprotected tokens at each layer) or one value per
    layer. ``size_bias=False`` drops the ``log(size)`` attention bias of merged
    tokens (ToMe's ``prop_attn=False``; see :class:`ReductionConfig`). Patching a
    patched model reconfigures it, keeping its cross tokens.
    """
    config = ReductionConfig(vision_r=vision_r, text_r=text_r, method=method, size_bias=size_bias)
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
