"""The CrossGET algorithm as pure tensor functions (no model code, no I/O)."""

from crossget_cli.core import constants
from crossget_cli.core.matching import (
    MergePlan,
    attention_importance,
    bipartite_matching,
    clamp_r,
    complete_graph_matching,
    protected_indices,
    token_schedule,
)
from crossget_cli.core.merge import ensemble_merge, merge_sum
from crossget_cli.core.losses import contrastive_loss, js_loss
from crossget_cli.core.state import TokenState, collect_cross_tokens, publish_cross_tokens, time_reductions, trace_reduction

__all__ = [
    "MergePlan",
    "TokenState",
    "attention_importance",
    "bipartite_matching",
    "clamp_r",
    "collect_cross_tokens",
    "contrastive_loss",
    "complete_graph_matching",
    "ensemble_merge",
    "js_loss",
    "merge_sum",
    "protected_indices",
    "publish_cross_tokens",
    "token_schedule",
    "time_reductions",
    "trace_reduction",
]
