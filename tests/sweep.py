"""The sweep over every registered adapter and its tiny models: the cases to
parametrize with, a model built afresh per test, example inputs, and the
features a test compares. Shared by the test files that sweep the adapters
(test files never import each other). The tiny models come from the registry
(``Adapter.tiny_models``), so a family registered with its ``tiny.py`` is swept
with no edit here."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from crossget_cli.adapters.registry import find_adapter, get_adapter, list_adapters


def cases() -> list[tuple[str, str]]:
    """``(adapter name, tiny model name)`` for every registered adapter and every
    tiny model it offers, as the registry holds them now."""
    return [(name, model) for name in list_adapters() for model in get_adapter(name).tiny_models()]


#: :func:`cases` when the tests are collected.
CASES = cases()


def same_computation_tolerance(adapter_name: str) -> dict:
    """``assert_close`` tolerances for a patched vision tower that should compute
    what the original does: exact where the patched blocks run the model's own
    attention function, to rounding where they run another kernel
    (``Adapter.own_attention_kernel``)."""
    exact = get_adapter(adapter_name).own_attention_kernel
    return dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-6)


def builder(adapter_name: str, model_name: str) -> Callable[[], nn.Module]:
    """The adapter's builder of its tiny model ``model_name`` (unseeded)."""
    return get_adapter(adapter_name).tiny_models()[model_name]


def build(adapter_name: str, model_name: str) -> nn.Module:
    """A fresh tiny model of the case, the same on every call (seeded)."""
    torch.manual_seed(0)
    return builder(adapter_name, model_name)()


def example_inputs(model: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Three images and three captions (``None`` where the model has no such
    tower); caption 1 is shorter (EOT at 5, padding after)."""
    spec = find_adapter(model).inputs(model)
    images = spec.example_images(3, seed=1) if spec.image_size else None
    texts = spec.example_texts(3, seed=2) if spec.context_length else None
    if texts is not None:
        texts[1, 6:] = 0  # shorter caption: EOT earlier, padding after
        texts[1, 5] = spec.eot_id
    return images, texts


def features(model: nn.Module, images: torch.Tensor | None, texts: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``{"image": ..., "text": ...}`` through the adapter, without gradients."""
    adapter = find_adapter(model)
    out = {}
    with torch.no_grad():
        if images is not None:
            out["image"] = adapter.encode_image(model, images)
        if texts is not None:
            out["text"] = adapter.encode_text(model, texts)
    return out


def is_cross_token(name: str) -> bool:
    """A cross-token parameter (not BLIP's "crossattention" weights)."""
    return name.endswith(("cross_image", "cross_text"))


def randomise_cross(model: nn.Module) -> None:
    """Non-zero cross tokens (patching creates them zero), so tests can tell
    whether they take effect."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_cross_token(name):
                param.normal_(0, 0.5)
