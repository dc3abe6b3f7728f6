"""Running a patched tower: the loop over its blocks with the cross slot
(SPEC §3), the per-forward state, and the attention-head reshapes every
family's block shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from crossget_cli.adapters.base import METHOD_ATTR, SCHEDULE_ATTR, SIZE_BIAS_ATTR
from crossget_cli.core import TokenState

BlockForward = Callable[[nn.Module, torch.Tensor, TokenState, int], torch.Tensor]


@dataclass
class BlockStep:
    """One block's step of a tower forward: what a :class:`ReducingBlock` runs
    when ``run_tower`` calls it as ``block(x, crossget=step)``.

    Activation checkpointing runs a block's forward again in the backward pass,
    after the state has moved past it. The step keeps the state's bookkeeping
    as it was when the block was entered, and a re-run starts from that and
    leaves the state as it found it, so a recompute is the same computation."""

    forward: BlockForward
    state: TokenState
    r: int
    entry: tuple = field(init=False)
    ran: bool = field(default=False, init=False)

    def __post_init__(self):
        self.entry = self.state.bookkeeping()

    def __call__(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.ran:
            self.ran = True
            return self.forward(block, x, self.state, self.r)
        now = self.state.bookkeeping()
        self.state.restore_bookkeeping(self.entry)
        try:
            return self.forward(block, x, self.state, self.r)
        finally:
            self.state.restore_bookkeeping(now)


def _checkpointed(block: nn.Module, x: torch.Tensor, step: BlockStep) -> torch.Tensor:
    return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, crossget=step)


def run_tower(
    x: torch.Tensor,
    holder: nn.Module,
    cross_name: str,
    blocks: Sequence[nn.Module],
    block_forward: BlockForward,
    state: TokenState,
    on_hidden: Callable[[int, torch.Tensor], None] | None = None,
    checkpoint_blocks: bool = False,
) -> torch.Tensor:
    """Run a patched tower's blocks on ``x`` (``[N, T, D]``, after the
    embeddings). With CrossGET a cross slot is appended (a copy of CLS, or of EOT
    for text; for a vision tower without CLS, ``state.protect_first`` false, the
    mean of its tokens: a global summary, as CLS is) and overwritten with the layer's cross token before each block
    (SPEC §3), then dropped from the output; ToMe runs the blocks as they are.

    ``on_hidden(i, h)`` receives the hidden states as transformers numbers them:
    ``i = 0`` the input of the first block, ``i = l + 1`` the output of block
    ``l``, cross slot included (recorded before the next injection).

    Each block is called as a module, ``block(x, crossget=step)`` (see
    :class:`BlockStep`). ``checkpoint_blocks`` recomputes each block's
    activations in the backward pass (open_clip's ``grad_checkpointing``;
    transformers' layers checkpoint inside their own ``forward``)."""
    cross = getattr(holder, cross_name, None) if state.method == "crossget" else None
    if cross is not None:
        x = append_cross_slot(x, state.pooled_idx, mean=state.pooled_idx is None and not state.protect_first)
    if on_hidden is not None:
        on_hidden(0, x)
    # At inference nothing but this loop holds a block's output, so the cross
    # slot can be updated in place; a trace or recorded hidden states keep the
    # outputs as they were, and autograd needs them.
    in_place = on_hidden is None and state.trace is None and not torch.is_grad_enabled()
    for layer, (block, r) in enumerate(zip(blocks, getattr(holder, SCHEDULE_ATTR))):
        if cross is not None:
            x = state.inject_cross(x, cross[0, layer], in_place=in_place)
        step = BlockStep(block_forward, state, r)
        if checkpoint_blocks and torch.is_grad_enabled():
            x = _checkpointed(block, x, step)
        else:
            x = block(x, crossget=step)
        state.record(layer, x)
        if on_hidden is not None:
            on_hidden(layer + 1, x)
    state.publish_cross()
    return x if cross is None else x[:, :-1]


def tower_state(holder: nn.Module, protect_first: bool = True, **text) -> TokenState:
    """A fresh per-forward state for the tower ``holder`` belongs to; ``text``
    gives ``input_ids`` and ``pooled_idx`` for a text tower (and optionally
    ``causal``, ``propagate_cross``, see :class:`TokenState`). ``protect_first``:
    whether token 0 is a protected CLS/SOT token."""
    method = getattr(holder, METHOD_ATTR, "crossget")
    bias = size_bias_enabled(holder)
    if not text:
        return TokenState(method=method, protect_first=protect_first, size_bias=bias)
    input_ids, pooled_idx = text.pop("input_ids"), text.pop("pooled_idx")
    with_slot = method == "crossget"
    return TokenState.for_text(
        input_ids, pooled_idx, with_slot, method=method, protect_first=protect_first, size_bias=bias, **text
    )


def size_bias_enabled(holder: nn.Module) -> bool:
    """Whether the tower ``holder`` belongs to biases attention by ``log(size)``
    (``ReductionConfig.size_bias``); consumers of its merged tokens (a MAP head,
    BLIP's cross-attention) follow the same switch."""
    return getattr(holder, SIZE_BIAS_ATTR, True)


def append_cross_slot(x: torch.Tensor, source_idx: torch.Tensor | None = None, mean: bool = False) -> torch.Tensor:
    """Append the initial cross slot: a copy of token 0 (vision CLS), of the
    token at ``source_idx`` (text EOT), SPEC §3, or with ``mean`` the mean of
    all tokens (a vision tower without CLS)."""
    if mean:
        slot = x.mean(dim=1, keepdim=True)
    elif source_idx is None:
        slot = x[:, :1]
    else:
        slot = x[torch.arange(x.shape[0], device=x.device), source_idx][:, None]
    return torch.cat([x, slot], dim=1)


def split_heads(z: torch.Tensor, num_heads: int) -> torch.Tensor:
    n, t, _ = z.shape
    return z.view(n, t, num_heads, -1).transpose(1, 2)


def merge_heads(z: torch.Tensor) -> torch.Tensor:
    n, h, t, d = z.shape
    return z.transpose(1, 2).reshape(n, t, h * d)


def uses_reduced_path(module: nn.Module, schedule: Sequence[int]) -> bool:
    """Whether a tower must run the CrossGET path. A text tower with r = 0
    everywhere is bit-identical to the original at inference (nothing attends
    to its cross slot, SPEC §5), so it keeps the original code path."""
    return module.training or any(r > 0 for r in schedule)
