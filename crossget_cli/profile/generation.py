"""Timing of generative models (captioning, VQA, multimodal LLMs), original vs
compressed: image-encoding throughput, prefill latency, decode tokens/s and
end-to-end items/s, with peak memory.

Model-agnostic: a caller hands over, per model, two callables on inputs it
prepared (:class:`GenerationCalls`): ``encode()`` runs the vision tower on the
batch, ``generate(n)`` runs ``generate`` producing exactly ``n`` new tokens
(``min_new_tokens = max_new_tokens = n``). Then

* image encoding: ``batch / t_encode`` images/s;
* prefill latency: ``t_generate(1)`` (the encoders, the prompt, one token);
* decode: ``batch * (n - 1) / (t_generate(n) - t_generate(1))`` tokens/s;
* end to end: ``batch / t_generate(n)`` items/s.

``facts`` are per-model figures the adapter knows without timing, reported as
they are (LLaVA: the visual tokens into the LLM and the prompt length).

Like :mod:`.profile`, each repeat times every model once in a rotating order
(interleaved, so drifts in clock and load hit every model alike), after
warm-up; medians are reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import torch

from crossget_cli.adapters.generation import GenerationCalls
from crossget_cli.config import parse_methods
from crossget_cli.errors import CrossGetError


@dataclass
class GenerationTiming:
    """Medians of one model's timings. Times in ms, rates per second."""

    label: str
    batch: int
    new_tokens: int
    encode_ms: float
    images_per_s: float
    prefill_ms: float
    generate_ms: float
    decode_tokens_per_s: float | None
    items_per_s: float
    peak_memory_mb: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median_times(calls: Mapping[str, Callable[[], Any]], warmup: int, repeats: int, sync: Callable[[], None]) -> dict:
    for call in calls.values():
        for _ in range(warmup):
            call()
    sync()
    labels = list(calls)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for rep in range(repeats):
        shift = rep % len(labels)
        for label in labels[shift:] + labels[:shift]:
            sync()
            start = time.perf_counter()
            calls[label]()
            sync()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def _peak_memory_mb(call: Callable[[], Any], device: torch.device) -> float | None:
    """CUDA peak memory of one call; ``None`` on the CPU (no allocator stats)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def time_generation(
    models: Mapping[str, GenerationCalls],
    batch: int,
    new_tokens: int = 20,
    warmup: int = 1,
    repeats: int = 5,
    device: str | torch.device = "cpu",
) -> list[GenerationTiming]:
    """Time every model of ``models`` (label -> calls; the first is the
    reference for the ratios) on the same prepared batch of ``batch`` items."""
    if not models:
        raise CrossGetError("nothing to time", "pass at least one model")
    if new_tokens < 2:
        raise CrossGetError(f"new_tokens must be >= 2 to separate decode from prefill, got {new_tokens}", "e.g. 20")
    if warmup < 0 or repeats < 1:
        raise CrossGetError("warmup must be >= 0 and repeats >= 1", "e.g. --warmup 1 --repeats 5")
    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        encode = _median_times({k: v.encode for k, v in models.items()}, warmup, repeats, sync)
        prefill = _median_times({k: (lambda v=v: v.generate(1)) for k, v in models.items()}, warmup, repeats, sync)
        full = _median_times({k: (lambda v=v: v.generate(new_tokens)) for k, v in models.items()}, warmup, repeats, sync)
        memory = {k: _peak_memory_mb(lambda v=v: v.generate(new_tokens), device) for k, v in models.items()}

    results = []
    for label in models:
        decode_s = full[label] - prefill[label]
        results.append(
            GenerationTiming(
                label=label,
                batch=batch,
                new_tokens=new_tokens,
                encode_ms=1e3 * encode[label],
                images_per_s=batch / encode[label],
                prefill_ms=1e3 * prefill[label],
                generate_ms=1e3 * full[label],
                decode_tokens_per_s=batch * (new_tokens - 1) / decode_s if decode_s > 0 else None,
                items_per_s=batch / full[label],
                peak_memory_mb=memory[label],
                facts=dict(models[label].facts),
            )
        )
    reference = results[0]
    for result in results:
        result.ratios = {
            name: getattr(result, name) / getattr(reference, name)
            for name in ("images_per_s", "prefill_ms", "decode_tokens_per_s", "items_per_s")
            if getattr(result, name) and getattr(reference, name)
        }
    return results


def profile_generation(
    model,
    settings: list[tuple],
    batch: int = 8,
    new_tokens: int = 20,
    warmup: int = 1,
    repeats: int = 5,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    method: str = "crossget",
    size_bias: bool = True,
) -> list[GenerationTiming]:
    """``crossget profile`` for a generative model: the original (``model``
    unpatched) and each ``(vision_r, text_r)`` setting with each of the
    ``method`` (one, or a comma list as :func:`~crossget_cli.config.parse_methods`
    reads it), through the adapter's ``generation_calls`` on one random image
    batch. ``model`` is not changed."""
    import copy
    from itertools import product

    from crossget_cli.adapters.patching import patch, unpatch
    from crossget_cli.adapters.registry import find_adapter
    from crossget_cli.profile.results import run_label
    from crossget_cli.profile.speed import share_weights_copy

    adapter = find_adapter(model)
    if not adapter.generates(model):
        raise CrossGetError(f"{adapter.name} models do not generate text", "profile them without --generation")
    base = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    images = adapter.inputs(model).example_images(batch).to(device=device, dtype=dtype)
    calls = {}
    for name, (vision_r, text_r) in product(parse_methods(method), settings):
        patched = patch(share_weights_copy(base), vision_r=vision_r, text_r=text_r, method=name, size_bias=size_bias).eval()
        calls[run_label(vision_r, text_r, name)] = adapter.generation_calls(patched, images)
    original = {"original": adapter.generation_calls(unpatch(base).eval(), images)}
    return time_generation({**original, **calls}, batch, new_tokens, warmup, repeats, device)
