"""``crossget compress`` as a library: load, patch, export; and the exact reverse.

An exported folder holds:

* ``model.safetensors``: every weight, cross tokens included;
* the model's own config: ``open_clip_config.json`` or transformers' ``config.json``;
* ``crossget.yaml``: the recipe that made it plus provenance (versions, weights hash);
* ``report.json``: tokens per layer and GMACs, original and compressed;
* after a fine-tune, the files its objective exports (``coop``: ``coop_prompts.*``).

It is written to a temporary sibling folder and renamed into place, so a failed
run leaves nothing half-written.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from crossget_cli.adapters.model_io import OPEN_CLIP, LoadedModel
from crossget_cli.adapters.patching import patch, reduction_config
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.config import plain_r
from crossget_cli.errors import CrossGetError
from crossget_cli.files import check_writable, sha256, write_folder
from crossget_cli.loading.exported import OPENCLIP_CONFIG_FILE, RECIPE_FILE, REPORT_FILE, WEIGHTS_FILE
from crossget_cli.loading.formats import dtype_name
from crossget_cli.loading.models import load_model
from crossget_cli.recipes import FinetuneSpec, Recipe, ReductionSpec, load_recipe
from crossget_cli.version import __version__

if TYPE_CHECKING:
    from crossget_cli.adapters.training import FinetuneConfig


@dataclass
class CompressResult:
    output: Path
    recipe: Recipe
    report: dict[str, Any]
    model: nn.Module


def compress(
    source: str | None = None,
    output: str | Path | None = None,
    *,
    pretrained: str | None = None,
    recipe: str | Path | Recipe | None = None,
    vision_r=None,
    text_r=None,
    method: str | None = None,
    size_bias: bool | None = None,
    overwrite: bool = False,
    measure_speed: bool = True,
    finetune: FinetuneConfig | None = None,
    progress=None,
) -> CompressResult:
    """Load ``source``, patch it with CrossGET and export it to ``output``.

    ``vision_r``/``text_r`` (and ``method``, ``size_bias``) override the recipe's reduction; ``source`` and
    ``pretrained`` override its model section. With ``measure_speed`` the report
    also holds a short ``crossget profile`` run (batch 1, original vs compressed).
    With ``finetune``, the patched model is fine-tuned with its objective first (ITC
    + L_JS for ``clip``), and the objective's files join the export (under
    ``torchrun`` only rank 0 writes the output).
    """
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    recipe = recipe or _exported_reduction(source) or Recipe()
    if source is None or source == recipe.model.source:  # the recipe's tag belongs to the recipe's model
        source = recipe.model.source
        pretrained = pretrained if pretrained is not None else recipe.model.pretrained
    if output is None:
        raise CrossGetError("no output folder given", "pass --output DIR")
    output = Path(output)
    check_output(output, overwrite)
    reduction = replace(
        recipe.reduction,
        **{k: v for k, v in {"vision_r": vision_r, "text_r": text_r, "method": method}.items() if v is not None},
    )
    if size_bias is not None:  # None (not False) is the default's spelling: see ReductionSpec
        reduction = replace(reduction, size_bias=None if size_bias else False)
    config = reduction.to_config()

    loaded = load_model(source, pretrained)
    patch(loaded.model, vision_r=config.vision_r, text_r=config.text_r, method=config.method, size_bias=config.size_bias)
    if loaded.state_dict_extras:
        _load_cross_tokens(loaded)
    recipe = replace(
        recipe, model=replace(recipe.model, source=source, pretrained=pretrained), reduction=reduction, provenance=None
    )
    trained, extra_files = None, None
    if finetune is not None:
        settings = {"source": source, "pretrained": pretrained, **asdict(reduction)}
        trained, extra_files = _finetune(loaded, finetune, progress, settings=settings)
        from crossget_cli.train.loop import recipe_spec

        recipe = replace(recipe, finetune=recipe_spec(recipe.finetune or FinetuneSpec(), finetune))
        if trained.get("rank", 0) != 0:
            return CompressResult(output, recipe, {}, loaded.model)
    report = build_report(loaded.model, measure_speed=measure_speed, model_name=source)
    if trained is not None:
        report["finetune"] = trained
    export(loaded, output, recipe, report, overwrite=overwrite, extra_files=extra_files)
    return CompressResult(output, load_recipe(output / RECIPE_FILE), report, loaded.model)


def _exported_reduction(source: str | None) -> Recipe | None:
    """Re-compressing an export starts from the reduction it was made with, so that
    ``--vision-r`` alone changes only ``vision_r`` (its ``text_r``, method and
    per-layer settings stay)."""
    exported = Path(source).expanduser() / RECIPE_FILE if source else None
    return Recipe(reduction=load_recipe(exported).reduction) if exported and exported.is_file() else None


def _finetune(
    loaded: LoadedModel, config: FinetuneConfig, progress, settings: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Callable[[Path], None]]:
    """Fine-tune in place; the report's ``finetune`` section and what writes the
    objective's files into the export."""
    from crossget_cli.adapters.training import get_objective, init_distributed, world_info
    from crossget_cli.loading.preprocessing import model_io
    from crossget_cli.train.loop import finetune

    init_distributed(config.device)
    io = model_io(loaded, config.device)
    objective = get_objective(config.objective)
    evaluate = objective.validator(config) if config.val_data else None
    result = finetune(io, config, progress=progress, evaluate=evaluate, settings=settings)
    io.model.to("cpu", torch.float32)
    modules = {name: module.cpu() for name, module in result.modules.items()}
    report = {**result.to_dict(), "rank": world_info()[0], "history": result.history}
    return report, lambda folder: objective.export_files(modules, folder)


def _load_cross_tokens(loaded: LoadedModel) -> None:
    """Cross tokens of an official CrossGET checkpoint, loaded after patching."""
    params = dict(loaded.model.named_parameters())
    for name, value in loaded.state_dict_extras.items():
        if name not in params:
            continue
        if params[name].shape != value.shape:
            raise CrossGetError(
                f"checkpoint's {name} has shape {tuple(value.shape)}, the model expects {tuple(params[name].shape)}",
                "the checkpoint was trained for another model",
            )
        with torch.no_grad():
            params[name].copy_(value)


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an output folder that cannot be written, or exists (without ``overwrite``)."""
    check_writable(output, folder=True)
    if output.exists() and not overwrite:
        raise CrossGetError(f"output {output} already exists", "pass --overwrite to replace it, or choose another --output")


def build_report(model: nn.Module, measure_speed: bool = False, model_name: str | None = None) -> dict[str, Any]:
    """Tokens per layer and GMACs of one image and one caption, original and
    compressed (the compressed model is measured as it is, the original on an
    unpatched copy); with ``measure_speed``, also the ``crossget profile``
    report of the two at batch 1 under ``"profile"``."""
    from crossget_cli.profile.report import reduction_report
    from crossget_cli.profile.speed import ProfileConfig, profile_model

    report = reduction_report(model)
    if measure_speed:
        config = reduction_config(model)
        sweep = ProfileConfig(
            vision_r=[config.vision_r],
            text_r=[config.text_r],
            batch_sizes=[1],
            warmup=1,
            repeats=3,
            method=config.method,
            size_bias=config.size_bias,
        )
        report["profile"] = profile_model(model, sweep, model_name=model_name).to_dict()
    return report


def export(
    loaded: LoadedModel,
    output: Path,
    recipe: Recipe,
    report: dict,
    overwrite: bool = False,
    extra_files: Callable[[Path], None] | None = None,
) -> None:
    """Write the folder described in the module doc; ``extra_files(folder)`` adds
    files (a fine-tune objective's, e.g. learned prompts) before the folder is renamed into place."""
    from safetensors.torch import save_model

    model = loaded.model
    check_output(output, overwrite)

    def fill(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "crossget": __version__})
        save_model_config(loaded, tmp)
        dtype = next(model.parameters()).dtype
        model_spec = replace(
            recipe.model,
            family=find_adapter(model).name,
            attn_implementation=getattr(getattr(model, "config", None), "_attn_implementation", None),
            dtype=dtype_name(dtype),
        )
        provenance = _provenance(tmp / WEIGHTS_FILE)
        tokens = report.get("tokens_per_layer") or {}
        provenance["effective_r"] = {m: [a - b for a, b in zip(c, c[1:])] for m, c in tokens.items()}
        exported = replace(recipe, model=model_spec, provenance=provenance)
        config = reduction_config(model)
        reduction = ReductionSpec(
            config.method, plain_r(config.vision_r), plain_r(config.text_r), size_bias=None if config.size_bias else False
        )
        exported = replace(exported, reduction=reduction)
        from crossget_cli.recipes import save_recipe

        save_recipe(exported, tmp / RECIPE_FILE)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
        if extra_files is not None:
            extra_files(tmp)

    write_folder(output, fill)


def save_model_config(loaded: LoadedModel, folder: Path) -> None:
    """The model's own config, as its library reads it back: ``open_clip_config.json``
    (with the preprocessing) or transformers' ``config.json`` with the tokenizer and
    image processor saved with the model."""
    model = loaded.model
    if loaded.checkpoint_format == OPEN_CLIP:
        config = {"model_cfg": loaded.model_config}
        preprocess = getattr(model.visual, "preprocess_cfg", None)
        if preprocess:
            config["preprocess_cfg"] = dict(preprocess)
        (folder / OPENCLIP_CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return
    model.config.save_pretrained(str(folder))
    for preprocessor in (loaded.tokenizer, loaded.image_processor):
        if preprocessor is not None:
            preprocessor.save_pretrained(str(folder))


def _provenance(weights: Path) -> dict[str, Any]:
    import open_clip
    import transformers

    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "weights_sha256": sha256(weights),
        "versions": {
            "crossget": __version__,
            "torch": str(torch.__version__),
            "open_clip": open_clip.__version__,
            "transformers": transformers.__version__,
        },
    }
