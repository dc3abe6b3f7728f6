"""Multiply-accumulates (MACs) counted from a model's real forward.

Convention: fvcore's, which is what the CrossGET paper reports as "GFLOPs"
(fvcore counts one fused multiply-add as one flop, so its "flops" are MACs;
FLOPs = 2 x MACs). What is counted, as fvcore's default handles do:

* every matrix product: ``mm``/``addmm`` (linear layers, projections), ``bmm``/
  ``baddbmm`` (batched products of activations: attention, the matcher's
  similarity) - ``m*k*n`` per product;
* convolutions - ``batch * prod(weight.shape) * prod(output spatial)``;
* the attention products QK^T and AV of fused attention kernels
  (``_scaled_dot_product_*`` on CPU and CUDA) and of ``nn.MultiheadAttention``'s
  inference fast path ``_native_multi_head_attention`` (whose four projections
  are counted too), which ``torch.utils.flop_counter.FlopCounterMode`` misses;
* layer/group norms (5 per element with an affine, 4 without), batch norm,
  adaptive average pooling, upsampling and grid sampling, as fvcore does.

Not counted, as in fvcore: softmax, activations, additions, scaling, the L2
norms of the matcher, and the merge (:mod:`crossget_cli.core.merge`): the
reference gathers and scatters, which fvcore counts as 0; ours runs as one-hot
products for speed on a GPU, which are bookkeeping of the same merge and left
out so that the counts stay comparable with the paper's.

The counter is a ``TorchDispatchMode`` that exists only inside
:func:`count_macs`: a normal forward pays nothing. MACs of ops executed (at any
depth) inside a matcher (:func:`crossget_cli.core.matching.complete_graph_matching`,
ToMe's :func:`~crossget_cli.core.matching.bipartite_matching`) are attributed to
the kind ``"matching"`` by looking at the Python call stack of each counted op,
again only while counting.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["KINDS", "MacsCount", "ModelMacs", "count_macs", "model_macs"]

KINDS = ("linear", "attention", "conv", "matching", "other")

aten = torch.ops.aten

# The algorithm's code is recognised by function name and file, so that a
# reloaded module or a decorator wrapping it does not hide it.
_CORE_FUNCTIONS = {
    "matching": (("complete_graph_matching", "bipartite_matching"), ("core", "matching.py")),
    "merge": (("ensemble_merge", "merge_sum"), ("core", "merge.py")),
}


# -- MAC formulas: each returns [(kind, macs), ...] ---------------------------


def _mm(args, kwargs, out):
    a, b = args[0], args[1]
    m, k = a.shape
    return [("linear", m * k * b.shape[1])]


def _addmm(args, kwargs, out):
    return _mm(args[1:], kwargs, out)


def _bmm(args, kwargs, out):
    a, b = args[0], args[1]
    n, m, k = a.shape
    # A weight broadcast over the batch (stride 0) is a linear layer, not a
    # product of two activations.
    kind = "linear" if (n > 1 and (a.stride(0) == 0 or b.stride(0) == 0)) else "attention"
    return [(kind, n * m * k * b.shape[2])]


def _baddbmm(args, kwargs, out):
    return _bmm(args[1:], kwargs, out)


def _conv_macs(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, transposed: bool) -> int:
    spatial = (x.shape if transposed else out.shape)[2:]
    return x.shape[0] * prod(w.shape) * prod(spatial)


def _convolution(args, kwargs, out):
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    return [("conv", _conv_macs(args[0], args[1], out, transposed))]


def _conv_not_transposed(args, kwargs, out):
    return [("conv", _conv_macs(args[0], args[1], out, False))]


def _attention_macs(b: int, hq: int, sq: int, sk: int, dqk: int, dv: int) -> int:
    """QK^T plus AV for ``b*hq`` heads (grouped key/value heads are broadcast)."""
    return b * hq * sq * sk * (dqk + dv)


def _sdpa_bhsd(args, kwargs, out):
    """Fused SDPA kernels taking ``[B, H, S, D]`` query/key/value."""
    q, k, v = args[0], args[1], args[2]
    if q.dim() != 4 or q.is_nested:
        return [("attention", _attention_macs(1, 1, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]) * prod(q.shape[:-2]))]
    b, hq, sq, d = q.shape
    return [("attention", _attention_macs(b, hq, sq, k.shape[2], d, v.shape[3]))]


def _attention_bshd(args, kwargs, out):
    """Raw flash/efficient kernels taking ``[B, S, H, D]`` (dense case)."""
    q, k, v = args[0], args[1], args[2]
    if q.dim() == 4:
        b, sq, hq, d = q.shape
        return [("attention", _attention_macs(b, hq, sq, k.shape[1], d, v.shape[3]))]
    total, hq, d = q.shape  # variable-length packed batch: an upper bound
    return [("attention", _attention_macs(1, hq, total, k.shape[0], d, v.shape[2]))]


def _native_mha(args, kwargs, out):
    """``nn.MultiheadAttention``'s fast path: packed q/k/v projection, QK^T, AV
    and the output projection, from the input shapes."""
    query, key = args[0], args[1]
    embed_dim = args[3]
    if query.is_nested:  # padded batches turned into nested tensors
        lengths = [(q.shape[0], k.shape[0]) for q, k in zip(query.unbind(), key.unbind())]
    else:  # batch-first [B, T, D]
        lengths = [(query.shape[1], key.shape[1])] * query.shape[0]
    d2 = embed_dim * embed_dim
    linear = sum(2 * tq * d2 + 2 * tk * d2 for tq, tk in lengths)  # q, out; k, v
    attention = sum(tq * tk for tq, tk in lengths) * 2 * embed_dim
    return [("linear", linear), ("attention", attention)]


def _transformer_encoder_layer(args, kwargs, out):
    """``nn.TransformerEncoderLayer``'s fast path: MHA + two norms + the MLP."""
    src = args[0]
    embed_dim = args[1]
    ffn_weight_1 = args[14]
    if src.is_nested:
        lengths = [t.shape[0] for t in src.unbind()]
    else:  # batch-first [B, T, D]
        lengths = [src.shape[1]] * src.shape[0]
    tokens = sum(lengths)
    hidden = ffn_weight_1.shape[0]
    linear = 4 * tokens * embed_dim * embed_dim + 2 * tokens * embed_dim * hidden
    attention = sum(t * t for t in lengths) * 2 * embed_dim
    return [("linear", linear), ("attention", attention), ("other", 2 * 5 * tokens * embed_dim)]


def _norm(affine_index: int):
    def formula(args, kwargs, out):
        weight = args[affine_index] if len(args) > affine_index else None
        return [("other", args[0].numel() * (5 if weight is not None else 4))]

    return formula


def _batch_norm(training_index: int | None):
    def formula(args, kwargs, out):
        training = bool(args[training_index]) if training_index is not None else False
        affine = args[1] is not None
        if training:
            return [("other", args[0].numel() * (5 if affine else 4))]
        return [("other", args[0].numel() * (2 if affine else 1))]

    return formula


def _elementwise(input_scale: float, output_scale: float):
    def formula(args, kwargs, out):
        result = out[0] if isinstance(out, (tuple, list)) else out
        return [("other", int(args[0].numel() * input_scale + result.numel() * output_scale))]

    return formula


_FORMULAS: dict[Any, Callable] = {
    aten.mm: _mm,
    aten.addmm: _addmm,
    aten.bmm: _bmm,
    aten.baddbmm: _baddbmm,
    aten.convolution: _convolution,
    aten._convolution: _convolution,
    aten.convolution_overrideable: _convolution,
    aten.cudnn_convolution: _conv_not_transposed,
    aten.mkldnn_convolution: _conv_not_transposed,
    aten._slow_conv2d_forward: _conv_not_transposed,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_bhsd,
    aten._scaled_dot_product_flash_attention: _sdpa_bhsd,
    aten._scaled_dot_product_efficient_attention: _sdpa_bhsd,
    aten._scaled_dot_product_cudnn_attention: _sdpa_bhsd,
    aten._scaled_dot_product_fused_attention_overrideable: _sdpa_bhsd,
    aten._flash_attention_forward: _attention_bshd,
    aten._efficient_attention_forward: _attention_bshd,
    aten._native_multi_head_attention: _native_mha,
    aten._transformer_encoder_layer_fwd: _transformer_encoder_layer,
    aten.native_layer_norm: _norm(2),
    aten.native_group_norm: _norm(1),
    aten.native_batch_norm: _batch_norm(5),
    aten._native_batch_norm_legit: _batch_norm(5),
    aten._native_batch_norm_legit_no_training: _batch_norm(None),
    aten._adaptive_avg_pool2d: _elementwise(1, 0),
    aten.upsample_nearest2d: _elementwise(0, 1),
    aten.upsample_bilinear2d: _elementwise(0, 4),
    aten.grid_sampler_2d: _elementwise(0, 4),
}

# Shape queries never carry work and must not be decomposed (as FlopCounterMode).
_PASSTHROUGH = {
    aten.size.default,
    aten.sym_size.default,
    aten.stride.default,
    aten.sym_stride.default,
    aten.numel.default,
    aten.sym_numel.default,
    aten.dim.default,
    aten.storage_offset.default,
    aten.sym_storage_offset.default,
    aten.is_contiguous.default,
    aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default,
    aten.is_non_overlapping_and_dense.default,
    torch.ops.prim.layout.default,
    torch.ops.prim.device.default,
}
for _name in ("sym_is_contiguous",):
    if hasattr(aten, _name):
        _PASSTHROUGH.add(getattr(aten, _name).default)


@dataclass
class MacsCount:
    """MACs of one counted call.

    Attributes:
        total: all counted multiply-accumulates.
        by_kind: the same split into ``"linear"`` (weight products), ``"attention"``
            (QK^T and AV), ``"conv"``, ``"matching"`` (everything inside the
            matcher, mostly the key-similarity product) and ``"other"`` (norms etc.).
    """

    total: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})

    def add(self, kind: str, macs: int) -> None:
        macs = int(macs)
        self.total += macs
        self.by_kind[kind] = self.by_kind.get(kind, 0) + macs

    def __add__(self, other: "MacsCount") -> "MacsCount":
        result = MacsCount()
        for count in (self, other):
            for kind, macs in count.by_kind.items():
                result.add(kind, macs)
        return result

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.total / 1e9

    def to_dict(self) -> dict:
        return {
            "macs": self.total,
            "gmacs": self.gmacs,
            "gflops": self.gflops,
            "by_kind_gmacs": {k: v / 1e9 for k, v in self.by_kind.items()},
        }


def _core_kind(frame) -> str | None:
    """``"matching"`` for an op run (at any depth) inside a matcher of
    :mod:`crossget_cli.core.matching`, ``"merge"`` inside the merge of
    :mod:`crossget_cli.core.merge`, else ``None``."""
    while frame is not None:
        code = frame.f_code
        for kind, (names, suffix) in _CORE_FUNCTIONS.items():
            if code.co_name in names:
                parts = code.co_filename.replace("\\", "/").rsplit("/", 2)
                if tuple(parts[-2:]) == suffix:
                    return kind
        frame = frame.f_back
    return None


class _MacCounterMode(TorchDispatchMode):
    """Counts MACs of every op that reaches the Python dispatcher. Ops without a
    formula are decomposed where they have a composite implementation (under
    ``inference_mode`` ``linear``, ``matmul``, ``scaled_dot_product_attention``
    arrive undecomposed), so that their matrix products are seen; every op
    that runs as a whole is counted once (its internals are not re-dispatched)."""

    def __init__(self):
        super().__init__()
        self.count = MacsCount()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            return NotImplemented  # compiled regions etc.: count the uncompiled forward
        if func in _PASSTHROUGH:
            return func(*args, **kwargs)
        formula = _FORMULAS.get(func._overloadpacket)
        if formula is None:
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        core = _core_kind(sys._getframe(1))
        if core == "merge":
            return out
        for kind, macs in formula(args, kwargs, out):
            self.count.add(core or kind, macs)
        return out


def count_macs(fn: Callable, *args, **kwargs) -> tuple[Any, MacsCount]:
    """Run ``fn(*args, **kwargs)`` once and count its multiply-accumulates.

    Returns ``(result, MacsCount)``. The call runs as it would otherwise (same
    kernels, same grad mode); wrap it in ``torch.inference_mode()`` to count the
    inference fast paths a deployed model takes.
    """
    mode = _MacCounterMode()
    with mode:
        result = fn(*args, **kwargs)
    return result, mode.count


@dataclass
class ModelMacs:
    """MACs of one image and one full-length caption through a model's towers
    (``None`` for a tower the model does not have)."""

    image: MacsCount | None
    text: MacsCount | None
    image_size: int | None = None
    context_length: int | None = None

    @property
    def image_gmacs(self) -> float | None:
        return None if self.image is None else self.image.gmacs

    @property
    def text_gmacs(self) -> float | None:
        return None if self.text is None else self.text.gmacs

    @property
    def total(self) -> int:
        return sum(c.total for c in (self.image, self.text) if c is not None)

    @property
    def gmacs(self) -> float:
        """One image plus one caption (the paper's "GFLOPs")."""
        return self.total / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.gmacs

    def by_kind(self) -> dict[str, int]:
        combined = MacsCount()
        for count in (self.image, self.text):
            if count is not None:
                combined = combined + count
        return dict(combined.by_kind)

    def to_dict(self) -> dict:
        def g(count, scale=1):
            return None if count is None else scale * count.total / 1e9

        def kinds(count):
            return None if count is None else {k: v / 1e9 for k, v in count.by_kind.items()}

        return {
            "convention": "fvcore MACs (the paper's GFLOPs); FLOPs = 2 x MACs",
            "image_size": self.image_size,
            "context_length": self.context_length,
            "image_gmacs": g(self.image),
            "text_gmacs": g(self.text),
            "gmacs": self.gmacs,
            "image_gflops": g(self.image, 2),
            "text_gflops": g(self.text, 2),
            "gflops": self.gflops,
            "by_kind_gmacs": {
                "image": kinds(self.image),
                "text": kinds(self.text),
                "pair": {k: v / 1e9 for k, v in self.by_kind().items()},
            },
        }


def _first_param(model: nn.Module) -> torch.Tensor | None:
    for tensor in model.parameters():
        return tensor
    for tensor in model.buffers():
        return tensor
    return None


def model_macs(model: nn.Module, adapter=None) -> ModelMacs:
    """MACs of ONE image at the model's resolution and ONE full-length caption
    (all ``context_length`` positions: SOT, random tokens, EOT last), counted
    through ``adapter.encode_image`` / ``adapter.encode_text`` in eval mode under
    ``torch.inference_mode`` (the paper's convention). Works on original and
    patched models and on single-tower models. The model is left as it was.
    """
    if adapter is None:
        from crossget_cli.adapters.registry import find_adapter

        adapter = find_adapter(model)
    inputs = adapter.inputs(model)
    ref = _first_param(model)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            image = text = None
            if inputs.image_size is not None:
                images = inputs.example_images(1).to(device=device, dtype=dtype)
                _, image = count_macs(adapter.encode_image, model, images)
            if inputs.context_length is not None:
                ids = inputs.example_texts(1).to(device)
                _, text = count_macs(adapter.encode_text, model, ids)
    finally:
        for module, training in modes:
            module.training = training
    return ModelMacs(image, text, inputs.image_size, inputs.context_length)
