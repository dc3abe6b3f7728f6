"""CUDA-graph capture of an inference forward, for ``crossget profile --cuda-graphs``.

On a GPU the eager CrossGET reduction step is bound by kernel launches: dozens
of small kernels per layer whose launch cost exceeds their run time. A CUDA graph
records the kernels of one forward once and replays them with one launch, so
the host no longer sits on the critical path.

:func:`capture_graph` follows the recipe of the PyTorch CUDA-graphs notes: a few
warm-up calls on a side stream (lazy initialisation, cuBLAS workspaces and the
reduction step's cached constant tensors happen there, outside the capture),
then one call captured under ``torch.cuda.graph``. Everything runs under
``torch.inference_mode()``; training is not graphed (it stays eager).

A graph's shapes are static: one graph serves one input shape, dtype and device.
Calling it with another input raises :class:`~crossget_cli.errors.CrossGetError`;
capture one graph per batch size instead (``crossget profile`` captures one per
run, tower and batch size).

The forward must not synchronise with the host (``.item()``, ``.cpu()``,
data-dependent shapes) nor change Python state the next call depends on: only
its kernels are replayed. The patched CLIP towers satisfy this.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from crossget_cli.errors import CrossGetError, first_line

__all__ = ["CapturedGraph", "capture_graph", "require_cuda_graphs"]


def require_cuda_graphs(device: "torch.device | str") -> None:
    """Raise :class:`CrossGetError` unless CUDA graphs can run on ``device``."""
    device = torch.device(device)
    if device.type != "cuda":
        raise CrossGetError(
            f"CUDA graphs (--cuda-graphs) need a CUDA device, got device {str(device)!r}",
            "use --device cuda, or drop --cuda-graphs",
        )
    if not torch.cuda.is_available():
        raise CrossGetError(
            "CUDA graphs (--cuda-graphs) need CUDA, but CUDA is not available",
            "run on a GPU with a CUDA build of torch, or drop --cuda-graphs",
        )


def _describe(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, {str(x.dtype).removeprefix('torch.')} on {x.device}"


class CapturedGraph:
    """A forward captured as a CUDA graph; call it like the forward.

    ``graphed(x)`` copies ``x`` into the graph's static input buffer, replays the
    graph and returns the static output: **the same tensor(s) every call,
    overwritten by the next replay** (``.clone()`` what you keep). ``x`` must
    have the shape, dtype and device the graph was captured with; the replay is
    asynchronous, like any CUDA work (synchronise before reading the clock).

    Attributes:
        graph: the ``torch.cuda.CUDAGraph``.
        static_input: the buffer the graph reads.
        static_output: what the captured call returned (tensors the graph writes).
    """

    def __init__(self, graph: "torch.cuda.CUDAGraph", static_input: torch.Tensor, static_output: Any):
        self.graph = graph
        self.static_input = static_input
        self.static_output = static_output

    def __call__(self, x: torch.Tensor) -> Any:
        static = self.static_input
        if not isinstance(x, torch.Tensor) or x.shape != static.shape or x.dtype != static.dtype or x.device != static.device:
            got = _describe(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise CrossGetError(
                f"a CUDA graph replays one input shape: captured with {_describe(static)}, got {got}",
                "capture one graph per batch size and dtype (capture_graph(fn, example_of_that_shape))",
            )
        with torch.inference_mode():
            if x is not static:
                static.copy_(x)
            self.graph.replay()
        return self.static_output


def capture_graph(fn: Callable[[torch.Tensor], Any], example: torch.Tensor, warmup: int = 3) -> CapturedGraph:
    """Capture ``fn(static_input)`` as a CUDA graph and return a callable that replays it.

    Args:
        fn: an inference forward of one tensor (e.g. an encoder call); it returns
            a tensor or a structure of tensors.
        example: an input of the shape, dtype and device to capture for (a CUDA
            tensor); it is copied, not kept.
        warmup: calls of ``fn`` on a side stream before the capture (at least 1:
            lazily built state must not be created inside the capture, where
            kernels are recorded but do not run).

    Returns:
        A :class:`CapturedGraph`; its output is overwritten by the next replay.

    Raises:
        CrossGetError: CUDA is unavailable, ``example`` is not on a CUDA device,
            or the capture failed (the forward synchronised with the host).
    """
    if not isinstance(example, torch.Tensor):
        raise CrossGetError(f"capture_graph needs an example tensor, got {type(example).__name__}", "pass a CUDA tensor")
    require_cuda_graphs(example.device)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise CrossGetError(f"warmup must be an integer >= 1, got {warmup!r}", "e.g. warmup=3")
    device = example.device
    with torch.cuda.device(device), torch.inference_mode():
        static_input = example.detach().clone()
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(static_input)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_output = fn(static_input)
        except RuntimeError as err:
            raise CrossGetError(
                f"CUDA graph capture failed: {first_line(err)}",
                "the forward must not synchronise with the host (.item(), .cpu(), data-dependent shapes); "
                "run it eagerly (drop --cuda-graphs)",
            ) from err
        # The capture only recorded the kernels: run them once so that the
        # static output holds this input's result right away.
        graph.replay()
    return CapturedGraph(graph, static_input, static_output)
