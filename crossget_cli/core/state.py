"""Per-forward reduction state of one tower (SPEC §1-§3, §7).

A :class:`TokenState` is created at the start of a tower's forward and dropped
at its end; nothing survives between calls. It carries the token sizes, the
text token ids and pooled (EOT) position, and the cross tokens injected at each
layer, and it owns the three things a patched block asks of the algorithm:
the attention bias, the cross-token injection and the reduction step.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from crossget_cli.core import constants
from crossget_cli.core.matching import MergePlan, bipartite_matching, clamp_r, complete_graph_matching
from crossget_cli.core.merge import ensemble_merge


#: ``torch.profiler.record_function`` label of every reduction step (matching +
#: merging), so profilers can report the time CrossGET itself costs.
REDUCE_LABEL = "crossget.reduce"


class Slot:
    """A module-level value that a context manager sets for the duration of a
    block. Not a ContextVar: torch.compile reads module globals without a graph
    break. Not thread-safe, like any module global."""

    def __init__(self):
        self.value = None

    @contextlib.contextmanager
    def holding(self, value):
        previous, self.value = self.value, value
        try:
            yield value
        finally:
            self.value = previous


_TRACE = Slot()
_CROSS = Slot()
_TIMING = Slot()


def trace_reduction() -> contextlib.AbstractContextManager[list[dict]]:
    """Record every block of every patched tower run inside the block.

    Yields a list that receives, per block, a dict with ``modality``
    (``"vision"``/``"text"``), ``layer``, ``x`` (block output ``[N, T, D]``),
    ``sizes``, ``token_ids``, ``cross_in`` and ``plan`` (the :class:`MergePlan`,
    or ``None``). For inspection and tests (eager mode); a normal forward pays
    one lookup.
    """
    return _TRACE.holding([])


def time_reductions() -> contextlib.AbstractContextManager[list[float]]:
    """Time every reduction step (matching + merging) run inside the block.

    Yields a list that receives the wall seconds of each step, measured on the
    host: CPU time what it costs, without a profiler (a profiler prints to
    stderr and probes for a GPU). On a GPU the kernels run asynchronously, so
    there the ``REDUCE_LABEL`` ranges of ``torch.profiler`` are the measure.
    """
    return _TIMING.holding([])


def collect_cross_tokens() -> contextlib.AbstractContextManager[dict[str, list[torch.Tensor]]]:
    """Collect the cross tokens each patched tower injects, for L_JS (SPEC §4).

    Yields ``{"vision": [...], "text": [...]}``: one ``[L*N, D]`` tensor per
    tower forward, layer-major (the rows of layer 0 first), with gradients to the
    cross-token parameters.
    """
    return _CROSS.holding({"vision": [], "text": []})


def publish_cross_tokens(modality: str, tokens: list[torch.Tensor]) -> None:
    """Hand one tower forward's injected cross tokens (one ``[N, D]`` tensor per
    layer) to an active :func:`collect_cross_tokens`, layer-major."""
    sink = _CROSS.value
    if sink is not None and tokens:
        sink[modality].append(torch.cat(tokens))


def _at(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[n, index[n]]`` for ``[N, T, C]`` ``x`` and ``[N]`` ``index``: ``[N, C]``."""
    return x.gather(1, index.view(-1, 1, 1).expand(-1, 1, x.shape[-1]))[:, 0]


def _autocasting(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (torch < 2.4 has no per-device query)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _aligned(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
    """An uninitialised tensor of ``shape`` whose last dimension is stored padded
    to a multiple of 8 elements (a view of the first ``shape[-1]``); ``None``
    under torch.compile, which lays out its buffers itself (and cannot trace
    ``out=`` into a view)."""
    if constants.compiling():
        return None
    padded = -(-shape[-1] // 8) * 8
    return like.new_empty((*shape[:-1], padded)).narrow(-1, 0, shape[-1])


@dataclass
class TokenState:
    """Bookkeeping for one forward of one tower, batch-first.

    Attributes:
        sizes: ``[N, T, 1]`` float32 token sizes, ``None`` while every size is 1
            (then attention needs no bias and runs exactly as the original).
        token_ids: ``[N, T]`` float32 merged token ids (text only).
        pooled_idx: ``[N]`` int64 position of the pooled EOT token (text only);
            EOT is protected, so its new slot is the count of kept tokens before it.
        causal: whether the tower attends causally (text).
        method: ``"crossget"`` (cross slot last, cross-guided complete-graph
            matching) or ``"tome"`` (no cross slot, bipartite matching).
        cross_inputs: the cross token injected before each block, ``[N, D]``.
        trace: the list of :func:`trace_reduction`, if one is active.
        padded: whether ``sizes`` marks padding: a padding token has size 0,
            so ``log(size)`` keeps every query off it, merging it anywhere adds
            nothing, and matching neither merges it into a real token nor a real
            token into it (see :meth:`pad`).
        protect_first: whether token 0 is protected (a CLS/SOT token); a tower
            without one (SigLIP) protects only its cross slot and pooled token.
        propagate_cross: for text, whether the cross slot carries its own
            previous output forward as vision does (a bidirectional tower whose
            tokens attend to it) instead of being recomputed from EOT (SPEC §3).
        size_bias: whether attention adds ``log(size)`` (proportional attention,
            SPEC §7). Off, sizes still weigh the merges, and attention gets no
            mask unless the tower needs one anyway (causal text, padding).
    """

    sizes: torch.Tensor | None = None
    token_ids: torch.Tensor | None = None
    pooled_idx: torch.Tensor | None = None
    causal: bool = False
    method: str = "crossget"
    cross_inputs: list[torch.Tensor] = field(default_factory=list)
    trace: list[dict] | None = field(default_factory=lambda: _TRACE.value)
    last_plan: MergePlan | None = None
    padded: bool = False
    protect_first: bool = True
    propagate_cross: bool = False
    size_bias: bool = True

    @classmethod
    def for_text(
        cls, input_ids: torch.Tensor, pooled_idx: torch.Tensor, with_cross_slot: bool, method: str = "crossget", **options
    ) -> "TokenState":
        """State for a text tower; ``with_cross_slot`` extends the ids by the
        SOT id for the appended cross token, as the reference does. ``options``
        set other fields (``causal=False`` for a bidirectional tower,
        ``protect_first``, ``propagate_cross``)."""
        ids = input_ids.float()
        if with_cross_slot:
            ids = torch.cat([ids, ids[:, :1]], dim=1)
        return cls(token_ids=ids, pooled_idx=pooled_idx.long(), method=method, **{"causal": True, **options})

    def pad(self, attention_mask: torch.Tensor) -> None:
        """Take a ``[N, T]`` padding mask (1 real, 0 padding) of the tower's
        input tokens: from now on each sample is reduced as it would be alone,
        without its padding (results do not depend on the batch's longest
        sequence), and no token attends to padding."""
        real = attention_mask.to(torch.float32)
        if self.method == "crossget":
            real = torch.cat([real, real.new_ones(real.shape[0], 1)], dim=1)
        self.sizes = real[:, :, None]
        self.padded = True

    @property
    def num_protected(self) -> int:
        """CLS/SOT (unless the tower has none), the cross slot (CrossGET only)
        and EOT (text)."""
        return int(self.protect_first) + (self.method == "crossget") + (self.pooled_idx is not None)

    def inject_cross(self, x: torch.Tensor, cross: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """Overwrite the last slot with ``sg(g) + cross`` (SPEC §3): ``g`` is the
        previous cross token for vision (and for text with ``propagate_cross``)
        and the current EOT token for text.
        ``in_place`` (when nothing else holds ``x`` and no gradient is needed)
        writes the token into the slot of ``x`` itself instead of concatenating
        a copy of ``x``: one op fewer."""
        cross = cross.to(x.dtype)
        propagated = self.pooled_idx is None or self.propagate_cross
        # (A strided ``out=`` is refused by dynamo: compiled text concatenates.)
        if in_place and (propagated or not constants.compiling()):
            slot = x[:, -1]
            token = slot.add_(cross) if propagated else torch.add(_at(x, self.pooled_idx), cross, out=slot)
            # A view of the slot would keep every layer's x alive until the
            # forward ends (2x the activation memory): only a collector gets one, as a copy.
            if _CROSS.value is not None:
                self.cross_inputs.append(token.clone())
            return x
        guide = x[:, -1] if propagated else _at(x, self.pooled_idx)
        token = guide.detach() + cross
        self.cross_inputs.append(token)
        return torch.cat([x[:, :-1], token[:, None]], dim=1)

    @property
    def bias_sizes(self) -> torch.Tensor | None:
        """The sizes attention is biased with: ``sizes``; with ``size_bias`` off
        ``None``, or for a padded state its 0/1 indicator, so that padding (size
        0) stays masked while real tokens weigh alike whatever their size."""
        if self.size_bias or self.sizes is None:
            return self.sizes
        return (self.sizes > 0).to(self.sizes.dtype) if self.padded else None

    def attention_mask(self, x: torch.Tensor, explicit_causal: bool = False) -> torch.Tensor | None:
        """Additive mask broadcastable to ``[N, heads, T, T]``, or ``None``:
        ``log(size)`` of each key for proportional attention (SPEC §7), plus the
        causal triangle for text. While every size is 1 there is no bias, and a
        causal tower gets ``None`` (run with ``is_causal``) unless
        ``explicit_causal`` asks for the triangle as a mask. The mask has the
        query's dtype, and its rows are laid out 8-aligned, so SDPA's
        memory-efficient kernel takes it without padding a copy."""
        n, t = x.shape[0], x.shape[1]
        causal = None
        if self.causal and (self.bias_sizes is not None or explicit_causal):
            causal = constants.causal_mask(t, x.device, x.dtype)
        parts = [p for p in (causal, self._log_sizes(x)) if p is not None]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0].expand(n, 1, t, t) if parts[0] is causal else parts[0]
        rows = t if causal is not None else 1
        out = _aligned((n, 1, rows, t), x)
        out = torch.add(parts[0], parts[1]) if out is None else torch.add(parts[0], parts[1], out=out)
        for part in parts[2:]:
            out = out.add_(part)
        return out

    def _log_sizes(self, x: torch.Tensor) -> torch.Tensor | None:
        sizes = self.bias_sizes
        if sizes is None:
            return None
        shape = (x.shape[0], 1, 1, x.shape[1])
        out = _aligned(shape, x)
        if out is None:
            return sizes.view(shape).log().to(x.dtype)
        return torch.log(sizes.view(shape), out=out)

    def clamped_r(self, r: int, num_tokens: int) -> int:
        """The r this state's next reduction step of ``num_tokens`` tokens uses."""
        return clamp_r(r, num_tokens, self.num_protected, bipartite=self.method == "tome")

    def reduce(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        queries: torch.Tensor | None,
        r: int,
        num_heads: int = 1,
        importance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One reduction step after the attention residual (SPEC §1 step 3).

        ``keys`` and ``queries`` are ``[N, T, D]`` full-width projections with
        bias. CrossGET matches on the full-width keys, guided by the cross token's
        query (vision) or the EOT's (text); ToMe matches on the keys averaged over
        the ``num_heads`` heads. With ``importance`` (``[N, T]``, attention-based, SPEC §6)
        CrossGET matches on ``keys`` as given and takes that importance instead of
        the cosine to a guide query.
        """
        r = self.clamped_r(r, x.shape[1])
        if r == 0:
            return x
        if _autocasting(x.device.type):
            # Decisions are taken in float32 (see .matching); autocast would run the
            # similarity products in half precision, and the merge with them.
            with torch.autocast(x.device.type, enabled=False):
                return self.reduce(x, keys, queries, r, num_heads, importance)
        timings = _TIMING.value
        if timings is None:
            with torch.profiler.record_function(REDUCE_LABEL):
                return self._reduce(x, keys, queries, r, num_heads, importance)
        start = time.perf_counter()
        reduced = self._reduce(x, keys, queries, r, num_heads, importance)
        timings.append(time.perf_counter() - start)
        return reduced

    def _reduce(
        self, x: torch.Tensor, keys: torch.Tensor, queries: torch.Tensor | None, r: int, num_heads: int, importance
    ) -> torch.Tensor:
        n, t, _ = x.shape
        eot = None if self.pooled_idx is None else self.pooled_idx.view(n, 1)
        padding = (self.sizes[..., 0] == 0) if self.padded else None
        if self.method == "tome":
            plan = bipartite_matching(keys.view(n, t, num_heads, -1).mean(dim=2), r, eot, padding, self.protect_first)
        else:
            guide = None
            if importance is None:
                guide = queries[:, -1] if eot is None else _at(queries, self.pooled_idx)
            plan = complete_graph_matching(
                keys, guide, r, eot, importance=importance, padding=padding, protect_first=self.protect_first
            )
        if self.trace is not None:
            self.last_plan = plan
        x, self.sizes, self.token_ids = ensemble_merge(x, self.sizes, plan, self.token_ids, self.padded)
        if eot is not None:
            self.pooled_idx = plan.slot.gather(1, eot)[:, 0]  # EOT is kept: its own slot
        return x

    def bookkeeping(self) -> tuple:
        """What a block changes: sizes, token ids, pooled position, last plan
        (references: the tensors are never modified in place)."""
        return self.sizes, self.token_ids, self.pooled_idx, self.last_plan

    def restore_bookkeeping(self, saved: tuple) -> None:
        """Go back to what :meth:`bookkeeping` returned (a recomputed block)."""
        self.sizes, self.token_ids, self.pooled_idx, self.last_plan = saved

    @property
    def modality(self) -> str:
        return "text" if self.pooled_idx is not None else "vision"

    def publish_cross(self) -> None:
        """Hand the injected cross tokens to an active :func:`collect_cross_tokens`."""
        publish_cross_tokens(self.modality, self.cross_inputs)

    def record(self, layer: int, x: torch.Tensor) -> None:
        """Append one block's outcome to the active trace (no-op without one)."""
        if self.trace is None:
            return
        self.trace.append(
            {
                "modality": self.modality,
                "layer": layer,
                "x": x.detach(),
                "sizes": None if self.sizes is None else self.sizes.detach(),
                "token_ids": self.token_ids,
                "cross_in": self.cross_inputs[-1].detach() if self.cross_inputs else None,
                "plan": self.last_plan,
            }
        )
        self.last_plan = None
