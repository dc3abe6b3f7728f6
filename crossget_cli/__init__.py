"""crossget: CrossGET token reduction for vision-language Transformers.

>>> import crossget_cli
>>> crossget_cli.patch(model, vision_r=16, text_r=6)   # in place
>>> crossget_cli.unpatch(model)                         # exact restore

Each command is a call too: :func:`compress` (``crossget compress``), :func:`evaluate`
(``crossget eval``), :func:`run_profile` (``crossget profile``).

The names below are imported on first use, so ``import crossget_cli`` (and the
CLI's start-up, its argument errors and its offline checks) costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crossget_cli.version import __version__

_EXPORTS = {
    "CrossGetError": "crossget_cli.errors",
    "ReductionConfig": "crossget_cli.config",
    "clip_losses": "crossget_cli.adapters.contrastive",
    "compress": "crossget_cli.export.compress",
    "evaluate": "crossget_cli.evaluation.runner",
    "find_adapter": "crossget_cli.adapters.registry",
    "is_patched": "crossget_cli.api",
    "load": "crossget_cli.api",
    "patch": "crossget_cli.api",
    "reduction_config": "crossget_cli.api",
    "run_profile": "crossget_cli.profile.job",
    "unpatch": "crossget_cli.api",
}

__all__ = [
    "CrossGetError",
    "ReductionConfig",
    "__version__",
    "clip_losses",
    "compress",
    "evaluate",
    "find_adapter",
    "is_patched",
    "load",
    "patch",
    "reduction_config",
    "run_profile",
    "unpatch",
]

if TYPE_CHECKING:  # names for type checkers; loaded lazily by __getattr__
    from crossget_cli.adapters.contrastive import clip_losses
    from crossget_cli.adapters.registry import find_adapter
    from crossget_cli.evaluation.runner import evaluate
    from crossget_cli.export.compress import compress
    from crossget_cli.profile.job import run_profile
    from crossget_cli.api import is_patched, load, patch, reduction_config, unpatch
    from crossget_cli.config import ReductionConfig
    from crossget_cli.errors import CrossGetError


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'crossget_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
