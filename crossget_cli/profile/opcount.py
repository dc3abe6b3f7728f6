"""Count the aten ops a forward dispatches (a proxy for GPU kernel launches).

On a GPU, a reduction step made of many small ops is bound by launch overhead,
not by arithmetic: what makes it fast is dispatching few ops and never waiting
for the device. Both can be checked on a CPU with a ``TorchDispatchMode``, which
sees every aten op below autograd:

* *compute ops*: everything but views (``view``, ``transpose``, ``expand``,
  slicing, ...), bare allocations (``empty*``) and aliasing no-ops (``detach``,
  ``lift_fresh``); each is about one CUDA kernel (a few for ``sort``);
* *host syncs*: ops that make the CPU wait for the device to read a value or a
  data-dependent shape (``item``, ``nonzero``, boolean-mask indexing,
  ``repeat_interleave`` without ``output_size``, ...).

The counter exists only inside :func:`count_ops`: a normal forward pays nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCount", "count_ops", "HOST_SYNC_OPS"]

aten = torch.ops.aten

_NOT_COMPUTE = frozenset(
    {
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "detach",
        "lift_fresh",
        "alias",
        "_unsafe_view",  # a view that autograd sees as an op
    }
)

#: ops whose result the host must wait for (a value or a data-dependent shape).
HOST_SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), bool(tensor), int(tensor)
        "nonzero",
        "nonzero_static",  # static shape, but CUDA still copies the count back
        "masked_select",
        "_assert_async",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
        "equal",
        "allclose",
        "is_nonzero",
    }
)


def _is_view(func) -> bool:
    return bool(getattr(func, "is_view", False)) or func._schema.name.split("::")[-1] in ("view", "reshape")


def _base_name(func) -> str:
    return func.overloadpacket.__name__


def _is_host_sync(func, args, kwargs) -> bool:
    name = _base_name(func)
    if name in HOST_SYNC_OPS:
        return True
    if name == "repeat_interleave":  # the output length is read back unless given
        return kwargs.get("output_size") is None
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
    return False


@dataclass
class OpCount:
    """What one call dispatched.

    Attributes:
        compute: compute ops by aten name (views and bare allocations left out).
        host_syncs: the host-sync ops, in call order.
    """

    compute: Counter = field(default_factory=Counter)
    host_syncs: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.compute.values())

    def __sub__(self, other: "OpCount") -> "OpCount":
        return OpCount(self.compute - other.compute, [s for s in self.host_syncs if s not in other.host_syncs])

    def as_dict(self) -> dict[str, Any]:
        return {"compute_ops": self.total, "by_op": dict(self.compute.most_common()), "host_syncs": list(self.host_syncs)}


class _Counter(TorchDispatchMode):
    def __init__(self, result: OpCount):
        super().__init__()
        self.result = result

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _base_name(func)
        if func.namespace == "aten" and not _is_view(func) and name not in _NOT_COMPUTE:
            self.result.compute[name] += 1
            if _is_host_sync(func, args, kwargs):
                self.result.host_syncs.append(name)
        return func(*args, **kwargs)


def count_ops(fn: Callable[..., Any], *args, **kwargs) -> tuple[OpCount, Any]:
    """Run ``fn(*args, **kwargs)`` once and count what it dispatched.

    Returns ``(count, result)``. Ops run under ``no_grad`` or not as the caller
    decides; autograd's own bookkeeping dispatches nothing counted here.
    """
    result = OpCount()
    with _Counter(result):
        out = fn(*args, **kwargs)
    return result, out
