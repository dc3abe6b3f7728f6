"""The CrossGET algorithm as pure tensor functions (no model code, no I/O)."""

from .matching import MergePlan, clamp_r, complete_graph_matching, protected_indices, token_schedule
from .merge import ensemble_merge, merge_sum
from .state import TokenState, trace_reduction

__all__ = [
    "MergePlan",
    "TokenState",
    "clamp_r",
    "complete_graph_matching",
    "ensemble_merge",
    "merge_sum",
    "protected_indices",
    "token_schedule",
    "trace_reduction",
]
