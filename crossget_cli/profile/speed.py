"""The library side of ``crossget profile``: MACs, throughput, latency, memory
and matching time of a model, original against CrossGET settings.

Plain Python (no printing, no CLI). :func:`profile_model` measures, per tower
(image, text) and per setting:

* MACs of one image / one full-length caption (:func:`.flops.model_macs`);
* throughput (items/s) at each batch size: warm-up, then the median of
  ``repeats`` timed forwards, with min/max and interquartile spread;
* latency at batch 1 (ms, median);
* peak memory of one forward at the largest batch size (the method is named in
  :attr:`ProfileReport.memory_method`);
* time spent in CrossGET's reduction step (matching + merging) in one profiled
  forward, and its fraction of that forward.

With ``cuda_graphs`` the timed forwards (original and compressed alike) are CUDA
graph replays (:mod:`.cuda_graphs`), captured once per setting, tower and batch
size; MACs, memory and the reduction time still come from eager forwards.

All settings are measured in the same process and **interleaved**: every
repeat times each setting once (in a rotating order), so machine noise hits
the original and the compressed models alike. Ratios to the original are
reported for every run.

The report's types are in :mod:`.results`, the measuring pieces (timing
statistics, the profiled forward) in :mod:`.timing`, and :func:`.plot.plot_report`
draws a report.
"""

from __future__ import annotations

import copy
import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import torch
from torch import nn

from crossget_cli.adapters.patching import patch, unpatch
from crossget_cli.config import parse_methods, plain_r, validate_r
from crossget_cli.core.state import REDUCE_LABEL
from crossget_cli.errors import CrossGetError
from crossget_cli.loading.formats import DTYPES
from crossget_cli.profile.cuda_graphs import capture_graph, require_cuda_graphs
from crossget_cli.profile.flops import model_macs
from crossget_cli.profile.report import tokens_per_layer
from crossget_cli.profile.results import ProfileReport, RunResult, div_or_none, ratios_to_original, run_label
from crossget_cli.profile.timing import dynamo_limits, measurement_methods, num_threads, profiled_forward, timing_stats

__all__ = [
    "DTYPES",
    "REDUCE_LABEL",
    "ProfileConfig",
    "check_cuda_graphs",
    "profile_model",
    "tokens_per_layer",
]

_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
TOWER_CHOICES = ("both", "image", "text")

Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- config


def _sweep(name: str, values) -> tuple:
    if isinstance(values, (int, bool)) or values is None:
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise CrossGetError(f"{name} must be a list of settings, got {values!r}", "e.g. vision_r=[8, 16]")
    if len(values) == 0:
        raise CrossGetError(f"{name} is empty", "give at least one value (0 means no reduction)")
    out = []
    for v in values:
        v = validate_r(name, v)
        if v not in out:
            out.append(v)
    return tuple(out)


def _check_device(device: str) -> str:
    if not isinstance(device, str):
        raise CrossGetError(f"device must be a string, got {device!r}", "use cpu, cuda or cuda:N")
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", device.strip().lower())
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise CrossGetError(f"unknown device {device!r}", "use cpu, cuda or cuda:N")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise CrossGetError(
                f"device {device!r} requested but CUDA is not available", "use --device cpu, or install a CUDA build of torch"
            )
        if index is not None and int(index) >= torch.cuda.device_count():
            raise CrossGetError(
                f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))",
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}",
            )
    return device.strip().lower()


def check_cuda_graphs(device: str, compile: bool = False) -> None:
    """Raise :class:`CrossGetError` unless CUDA graphs can time the forwards on
    ``device`` (a CUDA device, CUDA available, not combined with ``compile``).
    The CLI calls it before loading a model."""
    if compile:
        raise CrossGetError(
            "--cuda-graphs and --compile cannot be combined",
            "pick one of them: CUDA graphs replay the eager forward",
        )
    require_cuda_graphs(_check_device(device))


@dataclass(frozen=True)
class ProfileConfig:
    """What :func:`profile_model` measures.

    Attributes:
        vision_r: sweep values for the vision tower: each an integer (every
            layer) or a per-layer list. One run per (vision_r, text_r)
            combination; the original model is always measured as the baseline.
        text_r: sweep values for the text tower.
        batch_sizes: throughput batch sizes (latency is always at batch 1).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``: the copies are cast to it.
        threads: ``torch.set_num_threads`` during profiling (``None``: unchanged).
        compile: run the encoders through ``torch.compile``.
        cuda_graphs: time CUDA-graph replays of the encoder forwards (captured
            once per setting, tower and batch size) instead of eager calls;
            needs a CUDA device, excludes ``compile``.
        warmup: untimed forwards per setting, tower and batch size.
        repeats: timed forwards per setting, tower and batch size.
        towers: ``"both"``, ``"image"`` or ``"text"``.
        method: ``"crossget"`` or ``"tome"`` for every swept run, or both
            (``"crossget,tome"``): each setting runs with each method, all
            interleaved with the original in one run (:attr:`methods`).
        size_bias: the ``log(size)`` attention bias of every swept run
            (``ReductionConfig.size_bias``); off, attention runs unmasked.
    """

    vision_r: Sequence = (16,)
    text_r: Sequence = (6,)
    batch_sizes: Sequence[int] = (1, 32)
    device: str = "cpu"
    dtype: str = "fp32"
    threads: int | None = None
    compile: bool = False
    warmup: int = 3
    repeats: int = 10
    towers: str = "both"
    method: str = "crossget"
    cuda_graphs: bool = False
    size_bias: bool = True

    def __post_init__(self):
        setattr_ = functools.partial(object.__setattr__, self)
        setattr_("vision_r", _sweep("vision_r", self.vision_r))
        setattr_("text_r", _sweep("text_r", self.text_r))

        sizes = self.batch_sizes
        if isinstance(sizes, int) and not isinstance(sizes, bool):
            sizes = [sizes]
        if not isinstance(sizes, Sequence) or isinstance(sizes, str) or len(sizes) == 0:
            raise CrossGetError(f"batch_sizes must be a non-empty list, got {self.batch_sizes!r}", "e.g. batch_sizes=[1, 32]")
        for b in sizes:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise CrossGetError(f"batch size must be a positive integer, got {b!r}", "e.g. batch_sizes=[1, 32]")
        setattr_("batch_sizes", tuple(dict.fromkeys(sizes)))

        setattr_("device", _check_device(self.device))

        dtype = str(self.dtype).lower()
        dtype = _DTYPE_ALIASES.get(dtype, dtype)
        if dtype not in DTYPES:
            raise CrossGetError(f"unknown dtype {self.dtype!r}", f"choose one of: {', '.join(DTYPES)}")
        setattr_("dtype", dtype)

        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise CrossGetError(f"threads must be a positive integer, got {self.threads!r}", "omit it to keep torch's default")
        for name, low in (("warmup", 0), ("repeats", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CrossGetError(f"{name} must be an integer >= {low}, got {value!r}", "e.g. warmup=3, repeats=10")
        setattr_("method", ",".join(parse_methods(self.method)))
        if self.towers not in TOWER_CHOICES:
            raise CrossGetError(f"unknown towers {self.towers!r}", f"choose one of: {', '.join(TOWER_CHOICES)}")
        setattr_("compile", bool(self.compile))
        setattr_("cuda_graphs", bool(self.cuda_graphs))
        setattr_("size_bias", bool(self.size_bias))
        if self.cuda_graphs:
            check_cuda_graphs(self.device, self.compile)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.method.split(","))

    def settings(self) -> list[tuple]:
        """The (vision_r, text_r) combinations, in sweep order."""
        return list(product(self.vision_r, self.text_r))

    def to_dict(self) -> dict:
        return {
            "vision_r": [plain_r(r) for r in self.vision_r],
            "text_r": [plain_r(r) for r in self.text_r],
            "batch_sizes": list(self.batch_sizes),
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "compile": self.compile,
            "cuda_graphs": self.cuda_graphs,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "towers": self.towers,
            "method": self.method,
            "size_bias": self.size_bias,
        }


@dataclass
class _Variant:
    vision_r: Any
    text_r: Any
    method: str
    model: nn.Module
    calls: dict[str, Callable] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return run_label(self.vision_r, self.text_r, self.method)


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return name or type(model).__name__


def share_weights_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers are the originals' (no extra
    weight memory): patching swaps classes and registers cross tokens on the
    copy's own modules only."""
    memo = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


# --------------------------------------------------------------------------- profiling


def profile_model(
    model: nn.Module,
    config: ProfileConfig,
    progress: Progress | None = None,
    model_name: str | None = None,
    adapter=None,
) -> ProfileReport:
    """Measure ``model`` as it is (its patch state removed: the original) and
    patched with each setting of ``config``. ``model`` itself is not changed.

    Args:
        model: a model an adapter supports (patched or not).
        config: the sweep and the measurement settings.
        progress: called as ``progress(done, total, description)`` after each step.
        model_name: the name written into the report (default: from the model).
        adapter: the adapter to use (default: found from the model).
    """
    from crossget_cli.adapters.registry import find_adapter

    adapter = adapter or find_adapter(model)
    device = torch.device(config.device)
    dtype = config.torch_dtype
    inputs = adapter.inputs(model)

    available = [t for t, present in (("image", inputs.image_size), ("text", inputs.context_length)) if present is not None]
    wanted = ["image", "text"] if config.towers == "both" else [config.towers]
    towers = [t for t in wanted if t in available]
    if not towers:
        raise CrossGetError(f"the model has no {config.towers} tower to profile", f"it has: {', '.join(available) or 'none'}")

    # One converted copy holds the weights; every setting is a weight-sharing
    # copy of it, patched (trained cross tokens of a patched model are kept).
    base = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    variants = []
    for method, (vision_r, text_r) in product(config.methods, config.settings()):
        copy_ = share_weights_copy(base)
        patched = patch(copy_, vision_r=vision_r, text_r=text_r, method=method, size_bias=config.size_bias).eval()
        variants.append(_Variant(vision_r, text_r, method, patched))
    variants.insert(0, _Variant(0, 0, "none", unpatch(base).eval()))

    sizes = sorted(set(config.batch_sizes) | {1})
    profile_batch = max(config.batch_sizes)
    steps_total = len(variants) + len(towers) * len(sizes) + len(variants) * len(towers)
    steps = [0]

    def step(description: str) -> None:
        steps[0] += 1
        if progress is not None:
            progress(steps[0], steps_total, description)

    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    encoders = {"image": adapter.encode_image, "text": adapter.encode_text}
    eager_calls = {}
    for i, variant in enumerate(variants):
        for tower in towers:
            call = _encoder_call(encoders[tower], variant.model)
            eager_calls[i, tower] = call
            variant.calls[tower] = torch.compile(call, dynamic=False) if config.compile else call

    examples = {}
    for b in sizes:
        if "image" in towers:
            examples["image", b] = inputs.example_images(b).to(device=device, dtype=dtype)
        if "text" in towers:
            examples["text", b] = inputs.example_texts(b).to(device)

    results = []
    with num_threads(config.threads), dynamo_limits(4 * len(variants) * len(sizes) * len(towers) + 8, config.compile):
        # MACs and token counts (uncompiled, one image + one caption).
        for variant in variants:
            macs = model_macs(variant.model, adapter)
            kinds = macs.to_dict()["by_kind_gmacs"]
            results.append(
                RunResult(
                    vision_r=variant.vision_r,
                    text_r=variant.text_r,
                    method=variant.method,
                    image_gmacs=macs.image_gmacs,
                    text_gmacs=macs.text_gmacs,
                    gmacs=macs.gmacs,
                    macs_by_kind=kinds,
                    tokens_per_layer=tokens_per_layer(variant.model),
                )
            )
            step(f"MACs {variant.label}")

        times: dict[tuple[int, str, int], list[float]] = {}
        with torch.inference_mode():
            # Timing, interleaved: each repeat times every setting once, in a
            # rotating order.
            for tower in towers:
                for b in sizes:
                    x = examples[tower, b]
                    # CUDA graphs: one per run at this batch size, released
                    # before the next one is captured.
                    calls = [
                        capture_graph(v.calls[tower], x, warmup=max(1, config.warmup)) if config.cuda_graphs else v.calls[tower]
                        for v in variants
                    ]
                    for call in calls:
                        for _ in range(config.warmup):
                            call(x)
                    sync()
                    for rep in range(config.repeats):
                        shift = rep % len(variants)
                        for i in list(range(shift, len(variants))) + list(range(shift)):
                            sync()
                            start = time.perf_counter()
                            calls[i](x)
                            sync()
                            times.setdefault((i, tower, b), []).append(time.perf_counter() - start)
                    del calls, call  # frees the graphs of this batch size
                    step(f"timed {tower} at batch {b}")

            # One profiled (eager) forward per setting and tower: reduction
            # time and, on CPU, memory; CUDA memory from the timed callable
            # (the eager one with CUDA graphs: a replay allocates nothing).
            memory_method, matching_method = measurement_methods(cuda, profile_batch, config.compile, config.cuda_graphs)
            for i, variant in enumerate(variants):
                result, profiled_ms = results[i], {}
                for tower in towers:
                    x = examples[tower, profile_batch]
                    memory, reduce_ms, profiled_ms[tower] = profiled_forward(
                        eager_calls[i, tower], variant.calls[tower], x, cuda, sync, device
                    )
                    result.peak_memory_mb[tower] = memory
                    result.matching_ms[tower] = reduce_ms
                    result.matching_fraction[tower] = div_or_none(reduce_ms, profiled_ms[tower])
                    step(f"profiled {tower} of {variant.label}")
                if len(towers) == 2:
                    result.matching_ms["pair"] = sum(result.matching_ms[t] for t in towers)
                    result.matching_fraction["pair"] = div_or_none(result.matching_ms["pair"], sum(profiled_ms.values()))

    for i, result in enumerate(results):
        _fill_timing(result, i, times, towers, config.batch_sizes)
    for result in results:
        result.ratios = ratios_to_original(result, results[0])

    return ProfileReport(
        model=model_name or _model_name(model),
        device=str(device),
        dtype=config.dtype,
        threads=config.threads if config.threads is not None else torch.get_num_threads(),
        batch_sizes=list(config.batch_sizes),
        towers=towers,
        compile=config.compile,
        warmup=config.warmup,
        repeats=config.repeats,
        profile_batch=profile_batch,
        memory_method=memory_method,
        matching_method=matching_method,
        runs=results,
        cuda_graphs=config.cuda_graphs,
        size_bias=config.size_bias,
    )


def _encoder_call(encode: Callable, model: nn.Module) -> Callable:
    def call(x: torch.Tensor) -> torch.Tensor:
        return encode(model, x)

    return call


def _fill_timing(result: RunResult, index: int, times: dict, towers: list[str], batch_sizes: Sequence[int]) -> None:
    series: dict[tuple[str, int], list[float]] = {}
    for (i, tower, b), values in times.items():
        if i == index:
            series[tower, b] = values
    if len(towers) == 2:
        for b in {b for (_, b) in series}:
            series["pair", b] = [a + t for a, t in zip(series["image", b], series["text", b])]
    names = towers + (["pair"] if len(towers) == 2 else [])
    for name in names:
        result.throughput[name], result.throughput_spread[name], result.time_ms[name] = {}, {}, {}
        for b in sorted({b for (n, b) in series if n == name}):
            median, items_per_s, spread = timing_stats(series[name, b], b)
            result.time_ms[name][str(b)] = median * 1e3
            if b in batch_sizes:
                result.throughput[name][str(b)] = items_per_s
                result.throughput_spread[name][str(b)] = spread
            if b == 1:
                result.latency_ms[name] = median * 1e3
