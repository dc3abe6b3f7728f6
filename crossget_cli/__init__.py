"""crossget: CrossGET token reduction for vision-language Transformers.

>>> import crossget_cli
>>> crossget_cli.patch(model, vision_r=16, text_r=6)   # in place
>>> crossget_cli.unpatch(model)                         # exact restore
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import is_patched, load, patch, reduction_config, unpatch
from .config import ReductionConfig
from .errors import CrossGetError
from .tasks.losses import clip_losses

__all__ = [
    "CrossGetError",
    "clip_losses",
    "ReductionConfig",
    "__version__",
    "is_patched",
    "load",
    "patch",
    "reduction_config",
    "unpatch",
]
