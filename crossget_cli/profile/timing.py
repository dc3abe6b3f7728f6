"""The measuring pieces of :func:`.speed.profile_model`: timing statistics
(median and spread of repeated forwards), the torch thread count and dynamo
recompile limits for the run, and the one profiled forward that gives a
setting's peak memory and reduction time (with the description of both
methods written into the report)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from crossget_cli.core.state import REDUCE_LABEL, time_reductions
from crossget_cli.profile.cpu_memory import peak_allocated_bytes

__all__ = ["dynamo_limits", "measurement_methods", "num_threads", "profiled_forward", "timing_stats"]

_FORWARD_LABEL = "crossget.forward"


def _percentile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def timing_stats(times: list[float], items: int) -> tuple[float, float, dict]:
    """(median seconds, items/s at the median, spread of items/s)."""
    s = sorted(times)
    median = _percentile(s, 0.5)
    spread = {
        "min": items / s[-1],
        "q1": items / _percentile(s, 0.75),
        "q3": items / _percentile(s, 0.25),
        "max": items / s[0],
    }
    return median, items / median, spread


@contextmanager
def num_threads(threads: int | None):
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def dynamo_limits(entries: int, enabled: bool):
    """Every setting is one more cache entry for the same code objects: raise
    dynamo's recompile limits for the run so that no setting falls back to eager."""
    if not enabled:
        yield
        return
    import torch._dynamo.config as dynamo_config

    saved = {}
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            saved[name] = getattr(dynamo_config, name)
            setattr(dynamo_config, name, max(saved[name], entries))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(dynamo_config, name, value)


def _top_level(events, name: str):
    """Events named ``name`` that are not nested in another event of that name."""
    found = []
    for event in events:
        if event.name != name:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name != name:
            parent = parent.cpu_parent
        if parent is None:
            found.append(event)
    return found


def measurement_methods(cuda: bool, batch: int, compiled: bool, graphed: bool = False) -> tuple[str, str]:
    eager = " (eager, uncompiled forward)" if compiled else " (eager forward, not a CUDA graph replay)" if graphed else ""
    if cuda:
        memory = (
            f"cuda: torch.cuda.max_memory_allocated() during one forward at batch {batch}, after "
            "reset_peak_memory_stats(), minus memory_allocated() before it (activations and workspaces; weights excluded)"
            + (" (eager forward: a CUDA graph replay allocates nothing)" if graphed else "")
        )
        matching = (
            f"device time of the '{REDUCE_LABEL}' record_function ranges (matching + merging) in one torch.profiler "
            f"forward at batch {batch}{eager}; fraction of that forward's device time"
        )
    else:
        memory = (
            f"cpu: peak of the bytes of tensors created during one forward at batch {batch} and alive at once "
            "(a dispatch mode tracking each storage from the op that returns it to its release); weights and inputs "
            f"excluded; not the process RSS (allocator caching and memory BLAS/oneDNN take outside tensors are not seen){eager}"
        )
        matching = (
            f"CPU wall time of the reduction steps (matching + merging; host timers, no profiler) in one forward "
            f"at batch {batch}{eager}; fraction of that forward's wall time"
        )
    return memory, matching


def profiled_forward(
    call: Callable, timed_call: Callable, x: torch.Tensor, cuda: bool, sync: Callable, device
) -> tuple[float | None, float, float]:
    """(peak memory MB, reduction ms, forward ms): the reduction time and the
    forward time from one instrumented run of ``call``; the memory from one run
    of ``timed_call`` (the callable that was timed) on CUDA, of ``call`` on the CPU.

    The CPU needs no profiler: host timers are the measure there, and a dispatch
    mode counts the memory (Kineto would print to stderr and probe for a GPU)."""
    if not cuda:
        with time_reductions() as steps:
            start = time.perf_counter()
            call(x)
            forward_s = time.perf_counter() - start
        memory = peak_allocated_bytes(call, x) / 2**20
        return memory, sum(steps) * 1e3, forward_s * 1e3

    from torch.profiler import ProfilerActivity, profile, record_function

    sync()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    timed_call(x)
    sync()
    memory = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function(_FORWARD_LABEL):
            call(x)
        sync()
    events = prof.events()

    def total_us(event) -> float:
        return event.device_time_total or event.cpu_time_total

    reduce_us = sum(total_us(e) for e in _top_level(events, REDUCE_LABEL))
    forward_us = sum(total_us(e) for e in _top_level(events, _FORWARD_LABEL))
    return memory, reduce_us / 1e3, forward_us / 1e3
