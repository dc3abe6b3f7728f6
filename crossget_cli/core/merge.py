"""Cross-guided ensemble and size/id bookkeeping (SPEC §2).

Token sizes ``[N, T, 1]`` and text token ids ``[N, T]`` are float32 whatever the
model dtype: under fp16/bf16 the SOT and EOT ids of CLIP's vocabulary round to
the same value.

The merge is one batched product with a ``[N, T, T - r]`` one-hot membership
matrix (rows of a cached identity): deterministic on every device (no atomics,
unlike ``scatter_add_``, whose order, and so the rounding when several sources
share a destination, changes from run to run on CUDA), a tensor-core matmul on
a GPU, and a fixed handful of ops. Hidden states stay in the model dtype (the
product accumulates in float32 on tensor cores); sizes and ids in float32,
summed with ``scatter_add`` (integer values: exact in any order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossget_cli.core import constants
from crossget_cli.core.matching import MergePlan


def membership(plan: MergePlan, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[N, T, T - r]`` one-hot matrix: 1 where token ``t`` goes to output slot ``k``."""
    return F.embedding(plan.slot, constants.eye(plan.num_kept, plan.slot.device, dtype))


def merge_sum(values: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """Sum merge of ``[N, T, C]`` float32 *integer-valued* values (sizes,
    size-weighted ids, validity counts) into ``[N, T - r, C]``: each output
    token is the sum of its members. A ``scatter_add``: on CUDA its atomics add
    in any order, but sums of integers below 2**24 are exact in float32, so the
    result is the same on every run."""
    out = values.new_zeros((values.shape[0], plan.num_kept, values.shape[2]))
    return out.scatter_add_(1, plan.slot[:, :, None].expand_as(values), values)


def ensemble_merge(
    x: torch.Tensor,
    sizes: torch.Tensor | None,
    plan: MergePlan,
    token_ids: torch.Tensor | None = None,
    padded: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Merge each source into its destination with importance weights.

    With ``X = size * x`` and per pair weights ``(w, w̄)``, a kept token ``k``
    becomes ``X_k + Σ_s [2 w_s X_s + (2 w̄_s - 1) X_k]`` divided by its new size
    (the reference rule, reproduced literally: not convex when sizes differ).
    ``X_k`` is always the value before any source was added. Each source's term
    is ``lerp(X_k, X_s, 2 w_s)``; a kept token's own term is ``X_k``; summing the
    members of each output slot is the product with :func:`membership`.

    Args:
        x: ``[N, T, C]`` hidden states in the model dtype.
        sizes: ``[N, T, 1]`` float32 token sizes, or ``None`` when all are 1.
        plan: the step's :class:`MergePlan`.
        token_ids: optional ``[N, T]`` float32 ids (text), merged as a plain
            size-weighted mean so that argmax keeps finding the protected EOT.
        padded: ``sizes`` holds padding tokens as size 0: a padding token
            keeps the value 0 (it is never attended, and its sources add 0)
            instead of 0 / 0.

    Returns:
        ``(x, sizes, token_ids)`` with ``T - r`` tokens in original order.
    """
    weighted = x if sizes is None else x * sizes.to(x.dtype)
    if plan.source_weight is not None:
        n, t, c = weighted.shape
        rows = (plan.dst + constants.row_offsets(n, t, plan.dst.device)).view(-1)
        partner = weighted.reshape(n * t, c).index_select(0, rows).view(n, t, c)
        weighted = torch.lerp(partner, weighted, plan.source_weight[:, :, None].to(x.dtype))
    members = membership(plan, x.dtype)
    if sizes is None:
        new_sizes = members.sum(dim=1, dtype=torch.float32)[:, :, None]
    else:
        new_sizes = merge_sum(sizes, plan)
    divisor = new_sizes.clamp_min(1) if padded else new_sizes
    merged = (members.transpose(1, 2) @ weighted) / divisor.to(x.dtype)
    if token_ids is not None:
        ids = token_ids[:, :, None] if sizes is None else token_ids[:, :, None] * sizes
        token_ids = (merge_sum(ids, plan) / divisor)[..., 0]
    return merged, new_sizes, token_ids
