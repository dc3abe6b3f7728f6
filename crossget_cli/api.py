"""The Python entry points: :func:`patch`, :func:`unpatch` and :func:`load`."""

from __future__ import annotations

from torch import nn

from crossget_cli.adapters.patching import is_patched, patch, reduction_config, unpatch

__all__ = ["is_patched", "load", "patch", "reduction_config", "unpatch"]


def load(source: str, pretrained: str | None = None) -> nn.Module:
    """Load any ``--model`` string (a ``crossget compress`` folder comes back
    patched with its cross tokens) and return the model in eval mode."""
    from crossget_cli.loading.models import load_model

    return load_model(source, pretrained).model
