"""Cross-guided ensemble and size/id bookkeeping (SPEC §2).

Token sizes ``[N, T, 1]`` and text token ids ``[N, T]`` are float32 whatever the
model dtype: under fp16/bf16 the SOT and EOT ids of CLIP's vocabulary round to
the same value.

Merged values are accumulated in float32, in source order, and rounded to the
model dtype once. The accumulation is ``index_put_(accumulate=True)``, which CUDA
runs as a sorted (deterministic) reduction; ``scatter_add_`` would use atomics,
whose order, and so the rounding when several sources share a destination,
changes from run to run: the same model and batch would give other features.
"""

from __future__ import annotations

import torch

from .matching import MergePlan


def _expand(idx: torch.Tensor, channels: int) -> torch.Tensor:
    return idx[:, :, None].expand(-1, -1, channels)


def _add_into(kept: torch.Tensor, slot: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``kept[n, slot[n, j]] += values[n, j]`` for every source ``j`` (in place),
    deterministically on every device (see the module docstring)."""
    rows = torch.arange(kept.shape[0], device=kept.device)[:, None].expand_as(slot)
    return kept.index_put_((rows, slot), values, accumulate=True)


def merge_sum(values: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """Plain sum merge of ``[N, T, C]`` values into ``[N, T - r, C]``: each source
    is added to its destination (sizes, size-weighted ids)."""
    c = values.shape[-1]
    kept = values.gather(1, _expand(plan.keep_idx, c))
    return _add_into(kept, plan.dst_slot, values.gather(1, _expand(plan.src_idx, c)))


def ensemble_merge(
    x: torch.Tensor,
    sizes: torch.Tensor | None,
    plan: MergePlan,
    token_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Merge each source into its destination with importance weights.

    With ``X = size * x`` and per pair weights ``(w, w̄)``, a kept token ``k``
    becomes ``X_k + Σ_s [2 w_s X_s + (2 w̄_s - 1) X_k]`` divided by its new size
    (the reference rule, reproduced literally: not convex when sizes differ).
    ``X_k`` is always the value before any source was added.

    Args:
        x: ``[N, T, C]`` hidden states in the model dtype.
        sizes: ``[N, T, 1]`` float32 token sizes, or ``None`` when all are 1.
        plan: the step's :class:`MergePlan`.
        token_ids: optional ``[N, T]`` float32 ids (text), merged as a plain
            size-weighted mean so that argmax keeps finding the protected EOT.

    Returns:
        ``(x, sizes, token_ids)`` with ``T - r`` tokens in original order.
    """
    c = x.shape[-1]
    if sizes is None:
        sizes = x.new_ones(x.shape[0], x.shape[1], 1, dtype=torch.float32)
        weighted = x.float()
    else:
        weighted = x.float() * sizes
    weight = 2 * plan.weight
    src = weighted.gather(1, _expand(plan.src_idx, c))
    dst = weighted.gather(1, _expand(plan.dst_idx, c))
    contribution = weight[..., 0:1] * src + (weight[..., 1:2] - 1) * dst
    merged = _add_into(weighted.gather(1, _expand(plan.keep_idx, c)), plan.dst_slot, contribution)

    new_sizes = merge_sum(sizes, plan)
    if token_ids is not None:
        token_ids = (merge_sum((token_ids[..., None] * sizes), plan) / new_sizes)[..., 0]
    return (merged / new_sizes).to(x.dtype), new_sizes, token_ids
