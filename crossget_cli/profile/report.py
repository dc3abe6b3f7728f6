"""What a reduction does to a model: tokens per layer and GMACs, original vs
compressed. Shared by ``crossget compress`` (``report.json``) and ``profile``."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.patching import reduction_config, unpatch


def tokens_per_layer(model: nn.Module) -> dict[str, list[int]]:
    """Tokens entering each block of each tower, and leaving the last one, at
    inference, with r clamped as in the forward (see :meth:`Tower.token_counts`)."""
    return {tower.modality: tower.token_counts() for tower in find_adapter(model).towers(model)}


def reduction_report(model: nn.Module) -> dict[str, Any]:
    from crossget_cli.profile.flops import model_macs

    original = unpatch(copy.deepcopy(model))
    before = model_macs(original).to_dict()
    after = model_macs(model).to_dict()
    config = reduction_config(model)
    return {
        "schema_version": 1,
        "reduction": config.to_dict() if config else None,
        "tokens_per_layer": tokens_per_layer(model),
        "original": before,
        "compressed": after,
        "gmacs_ratio": after["gmacs"] / before["gmacs"] if before.get("gmacs") else None,
    }
