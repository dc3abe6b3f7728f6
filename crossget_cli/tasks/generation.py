"""Timing of generative models (``crossget profile`` for LLaVA): model-agnostic,
given models and their prepared ``generate`` inputs.

Per run, interleaved with the others and as the median of ``repeats`` after
``warmup`` untimed rounds:

* prefill latency: ``generate(max_new_tokens=1)`` (image encoding + prefill);
* decode tokens/s: ``batch * (N - 1) / (t(N) - t(1))``, with ``min_new_tokens=N``
  so every run generates exactly N tokens;
* end-to-end answers/s: ``batch / t(N)``;
* peak memory of ``generate(N)`` (CUDA; ``None`` on the CPU);
* optionally image encoding latency, and whatever per-run facts the caller
  adds (LLaVA: visual tokens into the LLM).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import CrossGetError


@dataclass
class GenerationRun:
    """One model to time. ``inputs`` are ``generate`` keyword arguments (on the
    model's device); ``encode`` optionally times the image encoder alone."""

    label: str
    model: nn.Module
    inputs: dict[str, torch.Tensor]
    encode: Callable[[], Any] | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationConfig:
    new_tokens: int = 32
    warmup: int = 1
    repeats: int = 5
    pad_token_id: int | None = None

    def __post_init__(self):
        for name, low in (("new_tokens", 2), ("warmup", 0), ("repeats", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CrossGetError(f"{name} must be an integer >= {low}, got {value!r}", f"e.g. --{name.replace('_', '-')} 5")


@dataclass
class GenerationResult:
    label: str
    batch: int
    prompt_tokens: int
    prefill_ms: float
    generate_ms: float
    decode_tokens_per_s: float | None
    answers_per_s: float
    image_encoding_ms: float | None = None
    peak_memory_mb: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)  # vs the first run


def _timer(cuda: bool) -> Callable[[Callable[[], Any]], float]:
    def timed(fn: Callable[[], Any]) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return timed


def profile_generation(runs: Sequence[GenerationRun], config: GenerationConfig) -> list[GenerationResult]:
    """Time every run; the first is the reference of ``ratios``."""
    if not runs:
        raise CrossGetError("nothing to profile", "pass at least one model")
    device = next(runs[0].model.parameters()).device
    cuda = device.type == "cuda"
    timed = _timer(cuda)
    n = config.new_tokens
    extra = {} if config.pad_token_id is None else {"pad_token_id": config.pad_token_id}

    def generate(run: GenerationRun, tokens: int):
        return run.model.generate(**run.inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **extra)

    calls: dict[str, Callable[[GenerationRun], Any]] = {
        "prefill": lambda run: generate(run, 1),
        "generate": lambda run: generate(run, n),
    }
    if all(run.encode is not None for run in runs):
        calls["encode"] = lambda run: run.encode()
    times: dict[tuple[int, str], list[float]] = {}
    peak: dict[int, float | None] = {}
    with torch.inference_mode():
        for _ in range(config.warmup):
            for run in runs:
                for call in calls.values():
                    call(run)
        for rep in range(config.repeats):
            shift = rep % len(runs)
            order = list(range(shift, len(runs))) + list(range(shift))
            for what, call in calls.items():
                for i in order:
                    times.setdefault((i, what), []).append(timed(lambda: call(runs[i])))
        for i, run in enumerate(runs):
            peak[i] = None
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                generate(run, n)
                peak[i] = torch.cuda.max_memory_allocated(device) / 2**20

    results = []
    for i, run in enumerate(runs):
        med = {what: statistics.median(times[i, what]) for what in calls}
        batch = int(run.inputs["input_ids"].shape[0])
        decode = med["generate"] - med["prefill"]
        results.append(
            GenerationResult(
                label=run.label,
                batch=batch,
                prompt_tokens=int(run.inputs["input_ids"].shape[1]),
                prefill_ms=1000 * med["prefill"],
                generate_ms=1000 * med["generate"],
                decode_tokens_per_s=batch * (n - 1) / decode if decode > 0 else None,
                answers_per_s=batch / med["generate"],
                image_encoding_ms=1000 * med["encode"] if "encode" in med else None,
                peak_memory_mb=peak[i],
                facts=dict(run.facts),
            )
        )
    for result in results:
        result.ratios = _ratios(result, results[0])
    return results


def _ratios(result: GenerationResult, reference: GenerationResult) -> dict[str, float]:
    """Speed-ups (> 1 is faster) and memory ratio against the reference."""
    pairs = {
        "prefill_speedup": (reference.prefill_ms, result.prefill_ms),
        "answers_per_s_speedup": (result.answers_per_s, reference.answers_per_s),
        "decode_speedup": (result.decode_tokens_per_s, reference.decode_tokens_per_s),
        "image_encoding_speedup": (reference.image_encoding_ms, result.image_encoding_ms),
        "memory_ratio": (result.peak_memory_mb, reference.peak_memory_mb),
    }
    return {k: a / b for k, (a, b) in pairs.items() if a is not None and b}


def generation_report(model_name: str, config: GenerationConfig, results: list[GenerationResult], device, dtype) -> dict:
    return {
        "schema_version": 1,
        "kind": "generation",
        "model": model_name,
        "device": str(device),
        "dtype": dtype,
        "config": asdict(config),
        "runs": [asdict(r) for r in results],
    }


def profile_generative(
    model: nn.Module, config, new_tokens: int = 32, model_name: str | None = None, adapter=None
) -> dict[str, Any]:
    """``crossget profile`` for a generative model: the original and each
    setting of ``config`` (a :class:`~crossget_cli.tasks.profile.ProfileConfig`;
    its largest batch size is used) on the adapter's example prompts."""
    import copy

    from ..adapters import find_adapter
    from ..api import patch, unpatch
    from .profile import _model_name, _share_weights_copy, run_label

    adapter = adapter or find_adapter(model)
    device = torch.device(config.device)
    batch = max(config.batch_sizes)
    base = copy.deepcopy(model).to(device=device, dtype=config.torch_dtype).eval()
    variants = [("original", unpatch(base))]
    for vision_r, text_r in config.settings():
        patched = patch(_share_weights_copy(base), vision_r=vision_r, text_r=text_r, method=config.method).eval()
        variants.append((run_label(vision_r, text_r, config.method), patched))
    runs = []
    for label, variant in variants:
        inputs = adapter.generation_inputs(variant, batch)
        inputs = {k: v.to(device, config.torch_dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
        runs.append(
            GenerationRun(
                label,
                variant,
                inputs,
                encode=lambda v=variant, x=inputs: adapter.image_features(v, x["pixel_values"]),
                facts=adapter.generation_facts(variant),
            )
        )
    settings = GenerationConfig(new_tokens=new_tokens, warmup=config.warmup, repeats=config.repeats, pad_token_id=None)
    results = profile_generation(runs, settings)
    return generation_report(model_name or _model_name(model), settings, results, device, config.dtype)
