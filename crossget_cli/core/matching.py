"""Complete-graph soft matching with cross-guided importance (SPEC §1), and
ToMe's bipartite matching, as merge plans.

Pure tensor functions: no modules, no model code, no global state beyond the
cached constants of :mod:`.constants`. Shapes are batch-first: ``N`` samples,
``T`` tokens, ``C`` channels. Every decision is taken in float32 under
``no_grad`` whatever the model's dtype, so it does not depend on autocast or on
the rest of the batch.

Both matchers are written for a GPU: a fixed number of batched ops per step
(no Python loop over samples, no host syncs, static shapes for a fixed r), and
the masks that depend only on the token count are cached constants folded
into the similarity product (``baddbmm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossget_cli.core import constants
from crossget_cli.core.constants import NEG_INF


@dataclass(frozen=True)
class MergePlan:
    """Where every token of one reduction step goes, for a whole batch.

    The step's output keeps ``T - r`` tokens in ascending original order; token
    ``t`` contributes ``c_t x_t + (1 - c_t) x_dst(t)`` (values weighted by size) to
    output slot ``slot[t]``, where ``dst(t)`` is the kept token it merges into
    (itself when kept, so a kept token contributes its own value: ``c = 1``).

    Attributes:
        src_idx: ``[N, r]`` int64 tokens merged away, lowest score first.
        slot: ``[N, T]`` int64 output position each token goes to.
        dst: ``[N, T]`` int64 original index of the token each token merges into.
        source_weight: ``[N, T]`` float32 ``c``: twice the source's share of the
            pair softmax, 1 for kept tokens; ``None`` when every ``c`` is 1 (a
            plain sum, ToMe).
    """

    src_idx: torch.Tensor
    slot: torch.Tensor
    dst: torch.Tensor
    source_weight: torch.Tensor | None = None

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.slot.shape[1]

    @property
    def num_kept(self) -> int:
        return self.num_tokens - self.r

    @property
    def keep_idx(self) -> torch.Tensor:
        """``[N, T - r]`` kept tokens in ascending order (the output layout)."""
        merged = self.dst != constants.arange(self.num_tokens, self.dst.device)
        return merged.to(torch.uint8).sort(dim=1, stable=True).indices[:, : self.num_kept]

    @property
    def dst_idx(self) -> torch.Tensor:
        """``[N, r]`` original index of each source's destination."""
        return self.dst.gather(1, self.src_idx)

    @property
    def dst_slot(self) -> torch.Tensor:
        """``[N, r]`` output position of each source's destination."""
        return self.slot.gather(1, self.src_idx)

    @property
    def weight(self) -> torch.Tensor:
        """``[N, r, 2]`` float32 softmax over (source, destination) importance."""
        if self.source_weight is None:
            return torch.full((*self.src_idx.shape, 2), 0.5, device=self.src_idx.device)
        share = self.source_weight.gather(1, self.src_idx) / 2
        return torch.stack([share, 1 - share], dim=-1)

    @classmethod
    def from_pairs(
        cls, src_idx: torch.Tensor, dst_idx: torch.Tensor, num_tokens: int, weight: torch.Tensor | None = None
    ) -> "MergePlan":
        """The plan merging ``src_idx[n, j]`` into ``dst_idx[n, j]`` (``[N, r]``
        int64 original indices) with pair weights ``weight`` (``[N, r, 2]``, the
        source's first; ``None``: a plain sum)."""
        n, device = src_idx.shape[0], src_idx.device
        index = constants.arange(num_tokens, device).expand(n, num_tokens)
        kept = torch.ones(n, num_tokens, dtype=torch.bool, device=device).scatter_(1, src_idx, False)
        dst = index.scatter(1, src_idx, dst_idx)
        slot = (kept.cumsum(dim=1) - 1).gather(1, dst)
        source_weight = None
        if weight is not None:
            source_weight = torch.ones(n, num_tokens, device=device).scatter_(1, src_idx, 2 * weight[..., 0].float())
        return cls(src_idx, slot, dst, source_weight)


def clamp_r(r: int, num_tokens: int, num_protected: int, bipartite: bool = False) -> int:
    """Largest usable r for a step: at most half the unprotected tokens (SPEC §1).
    Bipartite matching (ToMe) also needs that many unprotected tokens in its
    source set (the even positions), whichever set the protected tokens fall in."""
    limit = (num_tokens - num_protected) // 2
    if bipartite:
        limit = min(limit, (num_tokens + 1) // 2 - num_protected)
    return max(0, min(int(r), limit))


def protected_indices(
    batch: int, num_tokens: int, pooled_idx: torch.Tensor | None, device, protect_first: bool = True
) -> torch.Tensor:
    """``[N, P]`` indices never merged: position 0 (CLS/SOT; only with
    ``protect_first``), the last slot (the cross token) and, for text, the pooled
    EOT position ``pooled_idx`` (``[N]``). The matchers protect 0 and ``T - 1``
    themselves; this is for inspection."""
    fixed = torch.arange(0, num_tokens, max(num_tokens - 1, 1), device=device)[:2].expand(batch, -1)
    if not protect_first:
        fixed = fixed[:, -1:]
    if pooled_idx is None:
        return fixed
    return torch.cat([fixed, pooled_idx.view(batch, 1).to(device)], dim=1)


#: The cost a padding token sorts with: past every real token's (finite, at
#: most about ``SPACING * T``) and before the protected tokens' (+inf).
PADDING_SCORE = 1e36


def _per_sample_r(r: int, padding: torch.Tensor, num_protected: int, bipartite: bool) -> torch.Tensor:
    """``[N, 1]`` the r each sample would get alone, without its padding:
    :func:`clamp_r` of its own token count (never more than the batch's ``r``)."""
    real = padding.shape[1] - padding.sum(dim=1, keepdim=True)
    limit = real.sub(num_protected).div(2, rounding_mode="floor")
    if bipartite:
        limit = torch.minimum(limit, real.add(1).div(2, rounding_mode="floor") - num_protected)
    return limit.clamp(0, r)


def _order_with_padding(cost: torch.Tensor, padding: torch.Tensor, r: int, num_protected: int, bipartite: bool):
    """``[N, T]`` tokens by ascending ``cost`` (stable), arranged so that the
    first ``r`` are the sources: the real tokens each sample would remove alone
    (the cheapest ``real_r`` of its real candidates), then enough of its padding
    to make up ``r``. Padding sorts after every real candidate (finite cost) and
    before the protected tokens (+inf)."""
    cost = cost.masked_fill(padding, PADDING_SCORE)
    order = cost.argsort(dim=1, stable=True)
    candidates = (cost < PADDING_SCORE).sum(dim=1, keepdim=True)
    real_r = _per_sample_r(r, padding, num_protected, bipartite)
    position = constants.arange(order.shape[1], order.device).expand_as(order)
    fill = (position >= candidates) & (position < candidates + r - real_r)
    key = torch.where(fill, position - candidates + real_r, position + order.shape[1])
    key = torch.where(position < real_r, position, key)
    return order.gather(1, key.argsort(dim=1))


def _mask_padding(sim: torch.Tensor, padding: torch.Tensor) -> None:
    sim.masked_fill_(padding[:, None, :], NEG_INF)
    sim.masked_fill_(padding[:, :, None], NEG_INF)


def _protect(sim: torch.Tensor, protected: torch.Tensor | None) -> None:
    """Set the rows and columns of the ``[N, P]`` tokens ``protected`` to -inf."""
    if protected is None:
        return
    n, t, _ = sim.shape
    rows = protected[:, :, None].expand(n, protected.shape[1], t)
    sim.scatter_(1, rows, NEG_INF)
    sim.scatter_(2, rows.transpose(1, 2), NEG_INF)


@torch.no_grad()
def complete_graph_matching(
    metric: torch.Tensor,
    guide: torch.Tensor | None,
    r: int,
    protected: torch.Tensor | None = None,
    importance: torch.Tensor | None = None,
    padding: torch.Tensor | None = None,
    protect_first: bool = True,
) -> MergePlan:
    """Choose ``r`` source tokens per sample and the kept token each merges into.

    Args:
        metric: ``[N, T, C]`` keys of the step (full width, bias included).
        guide: ``[N, C]`` the guide query (the cross token's, or the text EOT's).
        r: tokens to remove; must already be clamped with :func:`clamp_r`.
        protected: optional ``[N, P]`` indices that are neither sources nor
            destinations besides token 0 (CLS/SOT, with ``protect_first``) and
            token ``T - 1`` (the cross slot), which always are (text passes its
            EOT position).
        importance: optional ``[N, T]`` importance of each token, used instead of
            the cosine to ``guide`` (attention-based importance, SPEC §6).
        padding: optional ``[N, T]`` bool, ``True`` for padding tokens (size 0).
            They are never merged into a real token nor a real one into them;
            each sample removes the real tokens it would remove alone (its own
            :func:`clamp_r`) and makes up the rest of ``r`` from its padding, so
            a sample's decisions do not depend on how much padding its batch
            gives it. A padding source contributes nothing (``c = 1`` of a zero
            value).
        protect_first: whether token 0 is protected (a CLS or SOT token);
            ``False`` for a tower without one (SigLIP's patches: token 0 is an
            ordinary token, only the cross slot is protected).

    Each token's score is its importance (cosine to the guide) minus its best
    similarity to a token ranked after it in the complete graph, so the least
    important token of the most redundant pair is removed first.
    """
    n, t, _ = metric.shape
    bias = constants.guided_protection_bias(t, metric.device, protect_first)
    # The float32 copy of the keys is ours (the guide row appended, or a cast)
    # when it is not the caller's tensor: then it is normalised in place.
    owned = importance is None or metric.dtype != torch.float32
    if importance is None:
        # The guide rides along as query row T: one product gives the
        # similarities and every token's cosine to the guide (row T, unmasked),
        # and leaves the [T, T] block contiguous for the symmetrisation.
        metric = torch.cat([metric, guide[:, None].to(metric.dtype)], dim=1)
    else:
        bias = bias[:t]
    metric = metric.float()
    norm = metric.norm(dim=-1, keepdim=True)
    unit = metric.div_(norm) if owned else metric / norm
    product = torch.baddbmm(bias, unit, unit[:, :t].transpose(1, 2))  # [N, T (+ 1), T]
    importance = product[:, t] if importance is None else importance.float()
    # Symmetrised (S + S^T, twice the mean: order and ties are those of the
    # mean): bit-exact where the product was already symmetric; elsewhere it
    # makes the tie-breaks of mutual-best pairs independent of the BLAS kernel.
    block = product[:, :t]
    sim = torch.add(block, block.transpose(1, 2))
    _protect(sim, protected)
    if padding is not None:
        _mask_padding(sim, padding)

    # Rank tokens by their best edge; a token may only pair with tokens ranked
    # after it, so only one member of a mutual-best pair can become a source.
    # The [N, T, 1] layout and the sort calls follow the reference so that ties
    # break the same way (the two members of a mutual-best pair always tie).
    # With padding the sorts are stable: CPU sorts break ties one way below 17
    # elements and another above, so a tie would depend on the padding.
    stable = padding is not None
    order = sim.amax(dim=-1, keepdim=True).argsort(dim=1, descending=True, stable=stable)
    steps = constants.spaced_ranks(t, metric.device).view(1, t, 1).expand(n, t, 1)
    rank = sim.new_empty((n, t, 1)).scatter_(1, order, steps)
    # (rank_j - rank_i) * SPACING: >= SPACING for a later j, <= -SPACING for an
    # earlier one, 0 on the (-inf) diagonal. The minimum with it keeps the
    # similarities to later tokens and sinks the rest far below them (a
    # vectorised min instead of a boolean mask and masked_fill). Both are
    # written over the product's key rows, no longer needed: memory the
    # product has just warmed, instead of two more [N, T, T] allocations
    # (eagerly: dynamo refuses a strided ``out=``, and inductor fuses them).
    scratch = None if constants.compiling() else block
    later = torch.sub(rank.transpose(1, 2), rank, out=scratch)
    best_later = torch.minimum(sim, later, out=None if scratch is None else later).amax(dim=-1, keepdim=True)
    # A token with no later partner scores >= SPACING / 2 (the reference: +inf):
    # above every real score, so it is never a source, as in the reference.
    score = torch.sub(importance[:, :, None], best_later, alpha=0.5)
    if padding is None:
        ranked = score.argsort(dim=1)[..., 0]
    else:
        num_protected = 1 + protect_first + (0 if protected is None else protected.shape[1])
        ranked = _order_with_padding(score[..., 0], padding, r, num_protected, bipartite=False)

    src_idx = ranked[:, :r]
    keep_idx = ranked[:, r:].sort(dim=1).values
    # Each source merges into its most similar kept token; with +inf on the
    # diagonal, the same argmax puts every kept token in its own slot.
    sim.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    slot = sim.gather(2, keep_idx[:, None, :].expand(n, t, t - r)).argmax(dim=-1)
    dst = keep_idx.gather(1, slot)
    # Pair softmax (a_s, a_dst) as a sigmoid of the difference; 1 for kept tokens.
    source_weight = torch.sigmoid(importance - importance.gather(1, dst)).mul_(2)
    if padding is not None:
        source_weight = source_weight.masked_fill(padding, 1.0)
    return MergePlan(src_idx, slot, dst, source_weight)


def token_schedule(num_tokens: int, rs: "list[int] | tuple[int, ...]", num_protected: int, bipartite: bool = False) -> list[int]:
    """Tokens entering each layer and leaving the last: ``len(rs) + 1`` counts,
    with r clamped at every layer as the forward does."""
    counts = [num_tokens]
    for r in rs:
        counts.append(counts[-1] - clamp_r(r, counts[-1], num_protected, bipartite))
    return counts


@torch.no_grad()
def bipartite_matching(
    metric: torch.Tensor,
    r: int,
    protected: torch.Tensor | None = None,
    padding: torch.Tensor | None = None,
    protect_first: bool = True,
) -> MergePlan:
    """ToMe's bipartite soft matching (Bolya et al., 2023), as a :class:`MergePlan`.

    Tokens alternate into sets A (even positions) and B (odd). Each A token's
    best cosine match in B is an edge; the ``r`` strongest edges merge their A
    token into its B partner. Token 0 (CLS/SOT) and the ``[N, P]`` tokens
    ``protected`` (text: EOT) are neither merged away nor merged into. The merge
    is a plain sum, which makes :func:`~.merge.ensemble_merge` the size-weighted
    average of ToMe's ``merge_wavg``.

    Args:
        metric: ``[N, T, C]`` keys (ToMe averages them over heads).
        r: tokens to remove; must already be clamped with :func:`clamp_r`.
        protected: optional ``[N, P]`` further indices that are never merged.
        padding: optional ``[N, T]`` bool padding tokens, handled as in
            :func:`complete_graph_matching` (a padding source merges into token 0,
            adding nothing: its size is 0).
        protect_first: whether token 0 (CLS/SOT) is protected; ``False`` for a
            tower without one, where token 0 is an ordinary member of set A.
    """
    n, t, _ = metric.shape
    metric = metric.float()
    unit = metric / metric.norm(dim=-1, keepdim=True)
    # Edges over all T tokens, the non-bipartite ones masked by a cached bias:
    # every index below is then an original token index.
    scores = torch.baddbmm(constants.bipartite_bias(t, metric.device, protect_first), unit, unit.transpose(1, 2))
    _protect(scores, protected)
    if padding is not None:
        _mask_padding(scores, padding)
    best, partner = scores.max(dim=-1)  # [N, T]; -inf for B and protected tokens
    if padding is None:
        order = best.argsort(dim=-1, descending=True)
    else:
        if protect_first or protected is None:
            partner = partner.masked_fill(padding, 0)
        else:  # no token 0 to absorb padding: the first protected token (text: EOT) does
            partner = torch.where(padding, protected[:, :1], partner)
        num_protected = int(protect_first) + (0 if protected is None else protected.shape[1])
        order = _order_with_padding(best.neg(), padding, r, num_protected, bipartite=True)
    index = constants.arange(t, metric.device).expand(n, t)
    kept = torch.empty_like(order).scatter_(1, order, index) >= r
    slot = kept.cumsum(dim=1) - 1
    dst = torch.where(kept, index, partner)
    return MergePlan(order[:, :r], slot.gather(1, dst), dst)


def attention_importance(weights: torch.Tensor) -> torch.Tensor:
    """Attention-based token importance (SPEC §6, from the official LLaVA reducer)
    from post-softmax attention weights ``[N, heads, T, T]`` (size bias included),
    the cross token last: the mean attention a token receives from the other
    tokens' rows plus the attention the cross token pays it, with the weights
    averaged over heads. ``[N, T]`` float32."""
    mean = weights.float().mean(dim=1)
    return mean[:, :-1].mean(dim=1) + mean[:, -1]
