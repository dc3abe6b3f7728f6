"""Reduction settings: a frozen, validated dataclass shared by every adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from crossget_cli.errors import CrossGetError

RSpec = Union[int, Sequence[int]]

METHODS = ("crossget", "tome")
MODALITIES = ("vision", "text")


def validate_r(name: str, value: RSpec) -> int | tuple[int, ...]:
    """An int for every layer or a per-layer tuple; raises :class:`CrossGetError`."""

    def check(v) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise CrossGetError(f"{name} must be a non-negative integer, got {v!r}", "pass e.g. 16, or one integer per layer")
        if v < 0:
            raise CrossGetError(f"{name} must be >= 0, got {v}", "r is the number of tokens merged per layer")
        return v

    if isinstance(value, (list, tuple)):
        if not value:
            raise CrossGetError(f"{name} is an empty list", "give one integer per layer, or a single integer")
        return tuple(check(v) for v in value)
    return check(value)


def parse_r(text: str, name: str = "r", separator: str = ",") -> int | tuple[int, ...]:
    """An r setting written as text: ``"16"`` -> 16, ``"16,16,8"`` -> (16, 16, 8) (one
    value per layer; ``separator`` joins them). Raises :class:`CrossGetError` naming ``name``."""
    try:
        numbers = [int(part) for part in text.strip().split(separator)]
    except ValueError:
        raise CrossGetError(
            f"{name} must be an integer or {separator!r}-separated integers (one per layer), got {text!r}", f"e.g. {name} 16"
        ) from None
    return validate_r(name, numbers[0] if len(numbers) == 1 else tuple(numbers))


def parse_methods(value: "str | Sequence[str]", name: str = "method") -> tuple[str, ...]:
    """Methods to compare: ``"crossget"``, ``"tome"``, a comma list (``"crossget,tome"``)
    or a sequence of names -> the methods in the order given, each once. Raises
    :class:`CrossGetError` naming ``name``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    methods = tuple(dict.fromkeys(str(item).strip() for item in items))
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise CrossGetError(
            f"unknown {name} {(unknown[0] if unknown else value)!r}",
            f"choose {' or '.join(METHODS)}, or both: {','.join(METHODS)}",
        )
    return methods


def parse_r_sweep(text: str, name: str = "r") -> list[int | tuple[int, ...]]:
    """A sweep of r settings: ``"0,4,8"`` -> [0, 4, 8]; a per-layer setting joins its
    values with ``/`` (``"16,4/4/2/2"`` -> [16, (4, 4, 2, 2)])."""
    return [parse_r(item, name, separator="/") for item in text.split(",")]


@dataclass(frozen=True)
class ReductionConfig:
    """How many tokens each layer of each tower merges.

    Attributes:
        vision_r: tokens merged per vision layer: one int for every layer
            (clamped at run time, SPEC §1) or one value per layer.
        text_r: the same for the text tower.
        method: ``"crossget"`` (SPEC §1-§2: cross tokens, cross-guided matching and
            ensemble) or ``"tome"`` (ToMe's bipartite soft matching with
            proportional attention, no cross tokens; a baseline).
        size_bias: whether attention adds ``log(size)`` of each merged key
            (proportional attention, SPEC §7), in the towers and in whatever
            cross-attends to merged tokens (BLIP's image consumers, a MAP head).
            ``False`` is ToMe's ``prop_attn=False``: sizes are still tracked and
            still weigh the merges (SPEC §2), but attention takes no additive
            mask where the model has no other, so SDPA may pick its flash kernel.
    """

    vision_r: int | tuple[int, ...] = 0
    text_r: int | tuple[int, ...] = 0
    method: str = "crossget"
    size_bias: bool = True

    def __post_init__(self):
        object.__setattr__(self, "vision_r", validate_r("vision_r", self.vision_r))
        object.__setattr__(self, "text_r", validate_r("text_r", self.text_r))
        if self.method not in METHODS:
            raise CrossGetError(f"unknown method {self.method!r}", f"choose one of: {', '.join(METHODS)}")
        if not isinstance(self.size_bias, bool):
            raise CrossGetError(f"size_bias must be true or false, got {self.size_bias!r}", "omit it to keep the size bias")

    def r_for(self, modality: str) -> int | tuple[int, ...]:
        return self.vision_r if modality == "vision" else self.text_r

    def schedule(self, modality: str, num_layers: int) -> tuple[int, ...]:
        """Per-layer r for a tower of ``num_layers`` blocks."""
        r = self.r_for(modality)
        if isinstance(r, int):
            return (r,) * num_layers
        if len(r) != num_layers:
            raise CrossGetError(
                f"{modality}_r lists {len(r)} values but the {modality} tower has {num_layers} layers",
                f"give {num_layers} values or a single integer",
            )
        return r

    def to_dict(self) -> dict:
        """JSON form; ``size_bias`` appears only when off, so the reports of the
        default setting read as they always have."""
        out = {"method": self.method, "vision_r": plain_r(self.vision_r), "text_r": plain_r(self.text_r)}
        if not self.size_bias:
            out["size_bias"] = False
        return out


def plain_r(r: int | Sequence[int]) -> int | list[int]:
    """An r setting as JSON/YAML writes it: an int or a list."""
    return r if isinstance(r, int) else list(r)
