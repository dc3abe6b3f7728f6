"""What :func:`.speed.profile_model` returns: one :class:`RunResult` per setting
in a :class:`ProfileReport` (``runs[0]`` the original model), their JSON form
(``to_dict`` / ``from_dict``, :data:`SCHEMA_VERSION`), run labels and the ratios
of a run to the original."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from crossget_cli.config import plain_r
from crossget_cli.errors import CrossGetError

__all__ = ["SCHEMA_VERSION", "ProfileReport", "RunResult", "div_or_none", "ratios_to_original", "run_label"]

SCHEMA_VERSION = 1


def run_label(vision_r, text_r, method: str = "crossget") -> str:
    """``"original"`` for the baseline, else e.g. ``"rv16_rl6"`` (CrossGET) or
    ``"tome_rv16_rl6"``."""
    if method == "none":
        return "original"

    def part(r):
        return str(r) if isinstance(r, int) else "[" + ",".join(map(str, r)) + "]"

    prefix = "" if method == "crossget" else f"{method}_"
    return f"{prefix}rv{part(vision_r)}_rl{part(text_r)}"


@dataclass
class RunResult:
    """One setting's measurements. Per-tower dicts are keyed ``"image"``,
    ``"text"`` and ``"pair"`` (one image + one caption, when both are measured);
    per-batch dicts by the batch size as a string (JSON keys)."""

    vision_r: Any
    text_r: Any
    method: str
    image_gmacs: float | None
    text_gmacs: float | None
    gmacs: float
    macs_by_kind: dict
    tokens_per_layer: dict[str, list[int]]
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)
    throughput_spread: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    time_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: dict[str, float | None] = field(default_factory=dict)
    matching_ms: dict[str, float | None] = field(default_factory=dict)
    matching_fraction: dict[str, float | None] = field(default_factory=dict)
    ratios: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return run_label(self.vision_r, self.text_r, self.method)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "method": self.method,
            "vision_r": plain_r(self.vision_r),
            "text_r": plain_r(self.text_r),
            "image_gmacs": self.image_gmacs,
            "text_gmacs": self.text_gmacs,
            "gmacs": self.gmacs,
            "macs_by_kind_gmacs": self.macs_by_kind,
            "tokens_per_layer": self.tokens_per_layer,
            "throughput": self.throughput,
            "throughput_spread": self.throughput_spread,
            "time_ms": self.time_ms,
            "latency_ms": self.latency_ms,
            "peak_memory_mb": self.peak_memory_mb,
            "matching_ms": self.matching_ms,
            "matching_fraction": self.matching_fraction,
            "ratios": self.ratios,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> RunResult:
        names = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["macs_by_kind"] = data.get("macs_by_kind_gmacs", {})
        return cls(**kwargs)


@dataclass
class ProfileReport:
    """The result of :func:`profile_model`; ``runs[0]`` is the original model."""

    model: str
    device: str
    dtype: str
    threads: int
    batch_sizes: list[int]
    towers: list[str]
    compile: bool
    warmup: int
    repeats: int
    profile_batch: int
    memory_method: str
    matching_method: str
    runs: list[RunResult]
    cuda_graphs: bool = False
    size_bias: bool = True  # the log(size) attention bias of the compressed runs
    torch_version: str = torch.__version__
    schema_version: int = SCHEMA_VERSION

    @property
    def original(self) -> RunResult:
        return self.runs[0]

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "compile": self.compile,
            "cuda_graphs": self.cuda_graphs,
            "size_bias": self.size_bias,
            "batch_sizes": list(self.batch_sizes),
            "towers": list(self.towers),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "profile_batch": self.profile_batch,
            "memory_method": self.memory_method,
            "matching_method": self.matching_method,
            "macs_convention": "fvcore MACs (the paper's GFLOPs): 1 image + 1 full-length caption; FLOPs = 2 x MACs",
            "timing": "interleaved round-robin over all runs; median of repeats; spread = min/max and quartiles"
            + (
                "; each timed call is a CUDA graph replay (input copy + replay), captured once per run, tower and batch size"
                if self.cuda_graphs
                else ""
            ),
            "torch_version": self.torch_version,
            "runs": [run.to_dict() for run in self.runs],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ProfileReport:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise CrossGetError(
                f"profile report schema_version {data.get('schema_version')!r} is not supported",
                f"this version reads schema_version {SCHEMA_VERSION}",
            )
        names = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in names and k != "runs"}
        return cls(runs=[RunResult.from_dict(r) for r in data["runs"]], **kwargs)


def div_or_none(a, b):
    """``a / b``, or None when either is missing or ``b`` is 0."""
    return None if a is None or b in (None, 0) else a / b


def ratios_to_original(run: RunResult, original: RunResult) -> dict:
    div = div_or_none
    return {
        "gmacs": div(run.gmacs, original.gmacs),
        "image_gmacs": div(run.image_gmacs, original.image_gmacs),
        "text_gmacs": div(run.text_gmacs, original.text_gmacs),
        "throughput": {
            name: {b: div(v, original.throughput.get(name, {}).get(b)) for b, v in per_b.items()}
            for name, per_b in run.throughput.items()
        },
        "latency": {name: div(original.latency_ms.get(name), v) for name, v in run.latency_ms.items()},
    }
