"""What a reduction does to a model: tokens per layer and GMACs, original vs
compressed. Shared by ``crossget compress`` (``report.json``) and ``profile``."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..adapters import find_adapter
from ..adapters.base import SCHEDULE_ATTR
from ..api import reduction_config, unpatch
from ..core import token_schedule


def tokens_per_layer(model: nn.Module) -> dict[str, list[int]]:
    """Tokens entering each block of each tower, and leaving the last one, at
    inference, with r clamped as in the forward. The original model has no cross
    slot; a patched vision tower always carries it; a patched text tower with
    r = 0 everywhere keeps the original path (SPEC §5)."""
    counts = {}
    for tower in find_adapter(model).towers(model):
        schedule = getattr(tower.holder, SCHEDULE_ATTR, None)
        reduced = schedule is not None and (tower.modality == "vision" or any(r > 0 for r in schedule))
        if reduced:
            counts[tower.modality] = token_schedule(tower.num_tokens, schedule, tower.num_protected)
        else:
            counts[tower.modality] = [tower.num_tokens - 1] * (tower.num_layers + 1)
    return counts


def reduction_report(model: nn.Module) -> dict[str, Any]:
    from .flops import model_macs

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
