"""Peak tensor memory of a CPU call, without the Kineto profiler.

torch has no peak-memory counter for its CPU allocator, and the profiler's
``profile_memory`` brings Kineto, which prints to the process's stderr on every
start and stop and probes for a GPU. A dispatch mode sees every tensor an op
returns; a storage counts from the first op that returns it until the last
reference to it is gone (a ``weakref.finalize`` on the storage object, which
torch keeps alive exactly as long as the storage)."""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _StorageTracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: set[int] = set()
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu":
                self._track(leaf.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self.live:  # a view, or an in-place op's result: no new memory
            return
        size = storage.nbytes()
        self.live.add(key)
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        if key in self.live:
            self.live.discard(key)
            self.current -= size


def peak_allocated_bytes(call: Callable[..., Any], *args: Any) -> int:
    """Peak of the bytes of CPU tensors allocated during ``call(*args)`` and alive
    at once, counting only tensors created inside the call (weights and inputs
    excluded). The call's result is dropped before returning."""
    tracker = _StorageTracker()
    with tracker:
        result = call(*args)
    del result
    return tracker.peak
