"""Cross-guided ensemble and size/id bookkeeping (SPEC §2).

Token sizes ``[N, T, 1]`` and text token ids ``[N, T]`` are float32 whatever the
model dtype: under fp16/bf16 the SOT and EOT ids of CLIP's vocabulary round to
the same value.

Each output token is the sum of its members' contributions, summed one of two
ways, both deterministic (:func:`slot_sums`):

* on a GPU, and under ``torch.compile``, one batched product with a
  ``[N, T, T - r]`` one-hot membership matrix (rows of a cached identity): no
  atomics (unlike ``scatter_add_``/``index_add_``, whose order, and so the
  rounding when several sources share a destination, changes from run to run
  on CUDA, and which inductor lowers to atomic adds), a tensor-core matmul and
  a fixed handful of ops;
* on the CPU, eagerly, in float32, one ``index_add_`` over the flattened
  batch: the CPU kernel adds each row's members in index order, and it costs
  ``N * T * C`` additions where the product costs ``N * T * (T - r) * C``
  multiply-adds (several times faster at ViT sizes).

Hidden states stay in the model dtype (the product accumulates in float32 on
tensor cores); sizes and ids in float32, summed with ``scatter_add`` (integer
values: exact in any order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossget_cli.core import constants
from crossget_cli.core.matching import MergePlan


def membership(plan: MergePlan, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[N, T, T - r]`` one-hot matrix: 1 where token ``t`` goes to output slot ``k``."""
    return F.embedding(plan.slot, constants.eye(plan.num_kept, plan.slot.device, dtype))


def sums_by_product(values: torch.Tensor) -> bool:
    """Whether :func:`slot_sums` takes the membership product (GPU, compiled,
    half precision) rather than the CPU's ``index_add_``, which adds in the
    values' dtype (the product accumulates half precision in float32)."""
    full_precision = values.dtype in (torch.float32, torch.float64)
    return values.device.type != "cpu" or constants.compiling() or not full_precision


def slot_sums(values: torch.Tensor, plan: MergePlan, members: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, T, C]`` values summed into the ``[N, T - r, C]`` output slots (each
    slot: the sum of its members), in the values' dtype; ``members``: the
    plan's :func:`membership` when the caller already built it."""
    if sums_by_product(values):
        members = membership(plan, values.dtype) if members is None else members
        return members.transpose(1, 2) @ values
    n, t, c = values.shape
    slots = (plan.slot + constants.row_offsets(n, plan.num_kept, values.device)).view(-1)
    out = values.new_zeros((n * plan.num_kept, c))
    return out.index_add_(0, slots, values.reshape(n * t, c)).view(n, plan.num_kept, c)


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
    is ``lerp(X_k, X_s, 2 w_s)``; a kept token's own term is ``X_k``; each output
    slot sums its members' terms (:func:`slot_sums`).

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
    members = membership(plan, x.dtype) if sums_by_product(x) else None
    if sizes is not None:
        new_sizes = merge_sum(sizes, plan)
    elif members is not None:
        new_sizes = members.sum(dim=1, dtype=torch.float32)[:, :, None]
    else:
        new_sizes = merge_sum(constants.ones(x.shape[1], x.device).view(1, -1, 1).expand(x.shape[0], -1, 1), plan)
    divisor = new_sizes.clamp_min(1) if padded else new_sizes
    merged = slot_sums(weighted, plan, members) / divisor.to(x.dtype)
    if token_ids is not None:
        ids = token_ids[:, :, None] if sizes is None else token_ids[:, :, None] * sizes
        token_ids = (merge_sum(ids, plan) / divisor)[..., 0]
    return merged, new_sizes, token_ids
