"""Complete-graph soft matching with cross-guided importance (SPEC §1).

Pure tensor functions: no modules, no model code, no global state. Shapes are
batch-first: ``N`` samples, ``T`` tokens, ``C`` channels. Every decision is
taken in float32 under ``no_grad`` whatever the model's dtype, so it does not
depend on autocast or on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class MergePlan:
    """Which tokens merge where, for one reduction step of a whole batch.

    All index tensors are int64 and index the ``T`` tokens of the step's input.

    Attributes:
        src_idx: ``[N, r]`` tokens that are merged away, lowest score first.
        keep_idx: ``[N, T - r]`` tokens that stay, in ascending original order:
            the layout of the step's output.
        dst_slot: ``[N, r]`` for each source, the position in ``keep_idx`` of the
            token it merges into.
        weight: ``[N, r, 2]`` float32 softmax over (source, destination) importance.
    """

    src_idx: torch.Tensor
    keep_idx: torch.Tensor
    dst_slot: torch.Tensor
    weight: torch.Tensor

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]

    @property
    def dst_idx(self) -> torch.Tensor:
        """``[N, r]`` original index of each source's destination."""
        return self.keep_idx.gather(1, self.dst_slot)


def clamp_r(r: int, num_tokens: int, num_protected: int, bipartite: bool = False) -> int:
    """Largest usable r for a step: at most half the unprotected tokens (SPEC §1).
    Bipartite matching (ToMe) also needs that many unprotected tokens in its
    source set (the even positions), whichever set the protected tokens fall in."""
    limit = (num_tokens - num_protected) // 2
    if bipartite:
        limit = min(limit, (num_tokens + 1) // 2 - num_protected)
    return max(0, min(int(r), limit))


def protected_indices(batch: int, num_tokens: int, pooled_idx: torch.Tensor | None, device) -> torch.Tensor:
    """``[N, P]`` indices never merged: position 0 (CLS/SOT), the last slot (the
    cross token) and, for text, the pooled EOT position ``pooled_idx`` (``[N]``)."""
    # arange rather than torch.tensor: no host-to-device copy on every layer.
    fixed = torch.arange(0, num_tokens, max(num_tokens - 1, 1), device=device)[:2].expand(batch, -1)
    if pooled_idx is None:
        return fixed
    return torch.cat([fixed, pooled_idx.view(batch, 1).to(device)], dim=1)


def _masked_similarity(unit: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``[N, T, T]`` of unit-norm keys, symmetrised, with the
    diagonal and the rows and columns of protected tokens set to -inf."""
    sim = unit @ unit.transpose(1, 2)
    # Bit-exact where the product was already symmetric; elsewhere it makes the
    # tie-breaks of mutual-best pairs independent of the BLAS kernel (SPEC §1).
    sim = torch.add(sim, sim.transpose(1, 2)).mul_(0.5)
    n, t, _ = sim.shape
    sim.diagonal(dim1=1, dim2=2).fill_(NEG_INF)
    rows = protected[:, :, None].expand(n, protected.shape[1], t)
    sim.scatter_(1, rows, NEG_INF)
    sim.scatter_(2, rows.transpose(1, 2), NEG_INF)
    return sim


@torch.no_grad()
def complete_graph_matching(
    metric: torch.Tensor,
    guide: torch.Tensor | None,
    r: int,
    protected: torch.Tensor,
    importance: torch.Tensor | None = None,
) -> MergePlan:
    """Choose ``r`` source tokens per sample and the kept token each merges into.

    Args:
        metric: ``[N, T, C]`` keys of the step (full width, bias included).
        guide: ``[N, C]`` the guide query (the cross token's, or the text EOT's).
        r: tokens to remove; must already be clamped with :func:`clamp_r`.
        protected: ``[N, P]`` indices that are neither sources nor destinations.
        importance: optional ``[N, T]`` importance of each token, used instead of
            the cosine to ``guide`` (LLaVA's attention-based importance, SPEC §6).

    Each token's score is its importance (cosine to the guide) minus its best
    similarity to a token ranked after it in the complete graph, so the least
    important token of the most redundant pair is removed first.
    """
    metric = metric.float()
    unit = metric / metric.norm(dim=-1, keepdim=True)
    sim = _masked_similarity(unit, protected)
    if importance is None:
        guide = guide.float()
        importance = unit @ (guide / guide.norm(dim=-1, keepdim=True))[:, :, None]  # [N, T, 1]
    else:
        importance = importance.float()[:, :, None]

    # Rank tokens by their best edge; a token may only pair with tokens ranked
    # after it, so only one member of a mutual-best pair can become a source.
    # The [N, T, 1] layout and the sort calls follow the reference so that ties
    # break the same way.
    order = sim.max(dim=-1, keepdim=True).values.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).view(1, -1, 1).expand_as(order)
    )
    not_later = rank.transpose(1, 2) <= rank  # [N, T, T]: j ranked at or before i
    best_later = sim.masked_fill(not_later, NEG_INF).max(dim=-1, keepdim=True).values
    ranked = (importance - best_later).argsort(dim=1)[..., 0]  # [N, T]

    src_idx, ranked_keep = ranked[:, :r], ranked[:, r:]
    t = sim.shape[1]
    src_rows = sim.gather(1, src_idx[:, :, None].expand(-1, -1, t))
    ranked_dst_pos = src_rows.gather(2, ranked_keep[:, None, :].expand(-1, r, -1)).argmax(dim=-1)

    importance = importance[..., 0]
    dst_idx = ranked_keep.gather(1, ranked_dst_pos)
    weight = torch.stack([importance.gather(1, src_idx), importance.gather(1, dst_idx)], dim=-1).softmax(dim=-1)

    keep_idx = ranked_keep.sort(dim=1).values
    is_kept = torch.ones_like(importance, dtype=torch.long).scatter_(1, src_idx, 0)
    slot_of = is_kept.cumsum(dim=1) - 1  # position of each kept token in keep_idx
    dst_slot = slot_of.gather(1, dst_idx)
    return MergePlan(src_idx, keep_idx, dst_slot, weight)


def token_schedule(num_tokens: int, rs: "list[int] | tuple[int, ...]", num_protected: int, bipartite: bool = False) -> list[int]:
    """Tokens entering each layer and leaving the last: ``len(rs) + 1`` counts,
    with r clamped at every layer as the forward does."""
    counts = [num_tokens]
    for r in rs:
        counts.append(counts[-1] - clamp_r(r, counts[-1], num_protected, bipartite))
    return counts


@torch.no_grad()
def bipartite_matching(metric: torch.Tensor, r: int, protected: torch.Tensor) -> MergePlan:
    """ToMe's bipartite soft matching (Bolya et al., 2023), as a :class:`MergePlan`.

    Tokens alternate into sets A (even positions) and B (odd). Each A token's
    best cosine match in B is an edge; the ``r`` strongest edges merge their A
    token into its B partner. Protected tokens are neither merged away nor
    merged into. The weights are (0.5, 0.5), which makes :func:`ensemble_merge`
    the size-weighted average of ToMe's ``merge_wavg``.

    Args:
        metric: ``[N, T, C]`` keys (ToMe averages them over heads).
        r: tokens to remove; must already be clamped with :func:`clamp_r`.
        protected: ``[N, P]`` indices that are never merged.
    """
    metric = metric.float()
    unit = metric / metric.norm(dim=-1, keepdim=True)
    n, t, _ = unit.shape
    a_idx = torch.arange(0, t, 2, device=unit.device)
    b_idx = torch.arange(1, t, 2, device=unit.device)
    scores = unit[:, 0::2] @ unit[:, 1::2].transpose(1, 2)  # [N, A, B]
    is_protected = torch.zeros(n, t, dtype=torch.bool, device=unit.device).scatter_(1, protected, True)
    scores = scores.masked_fill(is_protected[:, 0::2, None], NEG_INF).masked_fill(is_protected[:, None, 1::2], NEG_INF)
    best, partner = scores.max(dim=-1)  # [N, A]
    order = best.argsort(dim=-1, descending=True)
    src_idx = a_idx[order[:, :r]]
    dst_idx = b_idx[partner.gather(1, order[:, :r])]

    is_kept = torch.ones(n, t, dtype=torch.long, device=unit.device).scatter_(1, src_idx, 0)
    keep_idx = (1 - is_kept).argsort(dim=1, stable=True)[:, : t - r]  # kept first, ascending; no host sync
    dst_slot = (is_kept.cumsum(dim=1) - 1).gather(1, dst_idx)
    weight = torch.full((n, r, 2), 0.5, device=unit.device)
    return MergePlan(src_idx, keep_idx, dst_slot, weight)


def attention_importance(weights: torch.Tensor) -> torch.Tensor:
    """LLaVA's token importance (SPEC §6) from post-softmax attention weights
    ``[N, heads, T, T]`` (size bias included), the cross token last: the mean
    attention a token receives from the other tokens' rows plus the attention
    the cross token pays it, with the weights averaged over heads. ``[N, T]``
    float32."""
    mean = weights.float().mean(dim=1)
    return mean[:, :-1].mean(dim=1) + mean[:, -1]
