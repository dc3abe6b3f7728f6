"""Constant tensors of a reduction step, built once per shape and device.

A protection mask, an identity matrix or an ``arange`` costs a few ops to build,
and on a GPU each op is a kernel launch on the critical path of every layer.
They depend only on the token count (and device, dtype), so they are built on
first use and kept: one per token count a model runs with, a few MB at most for
ViT-L. Where a smaller tensor is a corner of a larger one (identity, triangle,
``arange``) one tensor per device serves every size.

Under ``torch.compile`` nothing is cached: the tensors are built inline and the
compiler folds them into the graph.
"""

from __future__ import annotations

from typing import Callable

import torch

NEG_INF = float("-inf")

_CACHE: dict[tuple, torch.Tensor] = {}


def compiling() -> bool:
    """Whether torch.compile is tracing the caller."""
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check and check())


def _cached(key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    if compiling():
        return build()
    tensor = _CACHE.get(key)
    if tensor is None:
        tensor = _CACHE[key] = build()
    return tensor


def _corner(kind: str, size: int, device, dtype, build: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """``build(n)[:size, :size]`` from one cached tensor per (kind, device, dtype),
    regrown to the next power of two when a larger size is asked for."""
    device = torch.device(device)
    if compiling():
        return build(size)
    key = (kind, device, dtype)
    tensor = _CACHE.get(key)
    if tensor is None or tensor.shape[0] < size:
        tensor = _CACHE[key] = build(max(16, 1 << (size - 1).bit_length()))
    return tensor[:size, :size] if tensor.dim() == 2 else tensor[:size]


def arange(size: int, device) -> torch.Tensor:
    """``torch.arange(size)`` (int64)."""
    return _corner("arange", size, device, torch.int64, lambda n: torch.arange(n, device=device))


#: Spacing of :func:`spaced_ranks`: far above any similarity (|S| <= 2) and
#: small enough that ``SPACING * T`` stays finite in float32 for any token count.
RANK_SPACING = 1e30


def spaced_ranks(size: int, device) -> torch.Tensor:
    """``arange(size) * RANK_SPACING`` in float32: ranks whose differences are
    0 for a token and itself and at least ``RANK_SPACING`` in size otherwise."""
    return _corner(
        "ranks", size, device, torch.float32, lambda n: torch.arange(n, device=device, dtype=torch.float32) * RANK_SPACING
    )


def row_offsets(batch: int, num_tokens: int, device) -> torch.Tensor:
    """``[N, 1]`` int64 ``n * num_tokens``: turns per-sample token indices into
    rows of the flattened ``[N * T, C]`` batch (``index_select`` is a plain row
    copy, much cheaper than an element-wise ``gather`` on a CPU). A strided view
    of the cached :func:`arange`."""
    return arange(batch * num_tokens, device)[::num_tokens, None]


def ones(size: int, device) -> torch.Tensor:
    """``torch.ones(size)`` (float32): unit token sizes, read through a view."""
    return _corner("ones", size, device, torch.float32, lambda n: torch.ones(n, device=device))


def eye(size: int, device, dtype) -> torch.Tensor:
    """The ``size x size`` identity, whose rows are the one-hot vectors of a merge."""
    return _corner("eye", size, device, dtype, lambda n: torch.eye(n, device=device, dtype=dtype))


def causal_mask(size: int, device, dtype) -> torch.Tensor:
    """``[size, size]`` additive causal mask: ``-inf`` above the diagonal."""
    return _corner("causal", size, device, dtype, lambda n: torch.full((n, n), NEG_INF, device=device, dtype=dtype).triu_(1))


def guided_protection_bias(num_tokens: int, device, protect_first: bool = True) -> torch.Tensor:
    """``[T + 1, T]`` float32 additive bias for the similarity of ``T`` keys
    (columns) with the same keys and one guide query (rows; the guide is row
    ``T``): ``-inf`` on the keys' diagonal and on the rows and columns of the
    protected tokens 0 (CLS/SOT; only with ``protect_first``: a tower without a
    leading CLS token protects its cross slot alone) and ``T - 1`` (the cross
    slot), 0 elsewhere and on the whole guide row. Contiguous, so that
    ``baddbmm`` reads it as it is; its first ``T`` rows serve the unguided
    similarity."""

    def build() -> torch.Tensor:
        t = num_tokens
        row, col = torch.arange(t + 1, device=device)[:, None], torch.arange(t, device=device)[None, :]

        def protected(index: torch.Tensor) -> torch.Tensor:
            return ((index == 0) & protect_first) | (index == t - 1)

        masked = ((row == col) | protected(row) | protected(col)) & (row < t)
        return torch.zeros(t + 1, t, device=device).masked_fill(masked, NEG_INF)

    kind = "guided" if protect_first else "guided-no-first"
    return _cached((kind, num_tokens, torch.device(device)), build)


def bipartite_bias(num_tokens: int, device, protect_first: bool = True) -> torch.Tensor:
    """``[T, T]`` float32 additive bias restricting a similarity to ToMe's
    bipartite edges: 0 from an even token (set A) to an odd one (set B), ``-inf``
    elsewhere and, with ``protect_first``, on the row of token 0 (CLS/SOT,
    protected)."""

    def build() -> torch.Tensor:
        index = torch.arange(num_tokens, device=device)
        edge = (index[:, None] % 2 == 0) & (index[None, :] % 2 == 1)
        if protect_first:
            edge &= index[:, None] > 0
        return torch.zeros(num_tokens, num_tokens, device=device).masked_fill(~edge, NEG_INF)

    kind = "bipartite" if protect_first else "bipartite-no-first"
    return _cached((kind, num_tokens, torch.device(device)), build)


def clear() -> None:
    """Drop every cached tensor (for tests, or to free device memory)."""
    _CACHE.clear()


def prepare(
    method: str, token_counts: "list[int]", device, dtype: torch.dtype, causal: bool = False, protect_first: bool = True
) -> None:
    """Build now what a tower's reduction steps will look up, so that the first
    forward dispatches what every later one does: the protection bias of each
    token count ``token_counts`` (tokens entering each reducing layer; token 0
    protected or not, ``protect_first``), and the identity, ``arange`` and
    causal mask up to the largest."""
    if not token_counts:
        return
    largest = max(token_counts)
    for t in token_counts:
        (bipartite_bias if method == "tome" else guided_protection_bias)(t, device, protect_first)
    arange(largest, device)
    ones(largest, device)
    spaced_ranks(largest, device)
    for kind in {torch.float32, dtype}:
        eye(largest, device, kind)
        if causal:
            causal_mask(largest, device, kind)
