"""``crossget profile`` as one call: load a model, choose what to sweep, measure the
encoders (:mod:`.speed`) and, for a model that generates text, generation
(:mod:`.generation`). The command line only parses, writes and prints."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from crossget_cli.adapters.patching import reduction_config
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.loading.models import load_model
from crossget_cli.profile.results import ProfileReport
from crossget_cli.profile.speed import ProfileConfig, profile_model

#: Sweeps when none is given for an original model: SPEC §5's vision and text settings.
DEFAULT_VISION_R, DEFAULT_TEXT_R = 16, 6


@dataclass
class ProfileResult:
    report: ProfileReport  # the encoder sweep
    data: dict[str, Any]  # what --json prints: the report, plus "generation" when timed


def default_sweeps(model, vision_r: list | None, text_r: list | None) -> tuple[list, list]:
    """The (vision, text) sweeps to run when some are not given: a compressed model is
    profiled at its own setting; an original one at SPEC §5's (r_v 16, r_l 6 where the
    family merges text tokens), the tower whose sweep is given alone when one is."""
    current = reduction_config(model)
    if vision_r is None and text_r is None and current is not None:
        return [current.vision_r], [current.text_r]
    reduces_text = "text" in find_adapter(model).reduces
    vision = vision_r if vision_r is not None else [DEFAULT_VISION_R] if text_r is None else [0]
    text = text_r if text_r is not None else [DEFAULT_TEXT_R] if vision_r is None and reduces_text else [0]
    return vision, text


def run_profile(
    source: str,
    config: ProfileConfig | None = None,
    *,
    pretrained: str | None = None,
    vision_r: list | None = None,
    text_r: list | None = None,
    size_bias: bool | None = None,
    method: str | None = None,
    generation: bool | None = None,
    new_tokens: int = 20,
    progress: Callable[[int, int, str], None] | None = None,
) -> ProfileResult:
    """Profile ``source`` (anything ``--model`` takes) over the sweeps ``vision_r`` x
    ``text_r`` (``None``: :func:`default_sweeps`) with the other settings of ``config``;
    ``size_bias`` and ``method`` (``None``: as the compressed model was exported, else
    ``config``'s).
    ``generation`` (default: whether the model generates text) also times prefill,
    decode and end-to-end generation of ``new_tokens`` tokens."""
    config = config or ProfileConfig()  # validated on construction, before a model is loaded
    loaded = load_model(source, pretrained)
    vision, text = default_sweeps(loaded.model, vision_r, text_r)
    current = reduction_config(loaded.model)
    if size_bias is None:
        size_bias = current.size_bias if current is not None else config.size_bias
    if method is None:
        method = current.method if current is not None else config.method
    config = replace(config, vision_r=vision, text_r=text, size_bias=size_bias, method=method)
    report = profile_model(loaded.model, config, progress=progress, model_name=loaded.source)
    data = report.to_dict()
    if generation is None:
        generation = find_adapter(loaded.model).generates(loaded.model)
    if generation:
        from crossget_cli.profile.generation import profile_generation

        timings = profile_generation(
            loaded.model,
            config.settings(),
            batch=max(config.batch_sizes),
            new_tokens=new_tokens,
            warmup=config.warmup,
            repeats=config.repeats,
            device=config.device,
            dtype=config.torch_dtype,
            method=config.method,
            size_bias=config.size_bias,
        )
        data["generation"] = [t.to_dict() for t in timings]
    return ProfileResult(report, data)
