"""Reading a folder that ``crossget compress`` wrote (the writer is
:mod:`crossget_cli.export`): the file names both sides share, and
:func:`load_exported`, the exact reverse of an export."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from crossget_cli.adapters.model_io import OPEN_CLIP, TRANSFORMERS, LoadedModel
from crossget_cli.adapters.patching import patch
from crossget_cli.errors import CrossGetError
from crossget_cli.files import sha256
from crossget_cli.loading.formats import build_openclip, hf_model_class, hf_preprocessors, parse_dtype
from crossget_cli.recipes import ModelSpec, load_recipe

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "crossget.yaml"
REPORT_FILE = "report.json"
OPENCLIP_CONFIG_FILE = "open_clip_config.json"


def load_exported(path: str | Path) -> LoadedModel:
    """Rebuild a folder written by :func:`export`: same architecture, same
    reduction, same weights, so outputs are bit-identical."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_weights

    path = Path(path)
    recipe = load_recipe(path / RECIPE_FILE)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CrossGetError(f"{path} has no {WEIGHTS_FILE}", "re-run crossget compress")
    expected = (recipe.provenance or {}).get("weights_sha256")
    if expected and sha256(weights) != expected:
        raise CrossGetError(
            f"{weights} does not match the hash in {RECIPE_FILE}", "the file is corrupt or was changed; re-export it"
        )
    spec: ModelSpec = recipe.model
    tokenizer = processor = None
    if (path / OPENCLIP_CONFIG_FILE).is_file():
        checkpoint_format = OPEN_CLIP
        saved = json.loads((path / OPENCLIP_CONFIG_FILE).read_text())
        model_config = saved["model_cfg"]
        model = build_openclip(model_config)
        if "preprocess_cfg" in saved:
            model.visual.preprocess_cfg = saved["preprocess_cfg"]
    elif (path / "config.json").is_file():  # any transformers family
        checkpoint_format = TRANSFORMERS
        model, model_config = _build_hf(path, spec.attn_implementation), None
        tokenizer, processor = hf_preprocessors(str(path))
    else:
        raise CrossGetError(
            f"{path} has neither {OPENCLIP_CONFIG_FILE} nor config.json", "re-run crossget compress"
        )
    if spec.dtype:
        model = model.to(parse_dtype(spec.dtype))
    config = recipe.reduction.to_config()
    patch(model, vision_r=config.vision_r, text_r=config.text_r, method=config.method, size_bias=config.size_bias)
    try:
        load_weights(model, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CrossGetError(f"cannot load {weights}: {str(err).splitlines()[0]}", "the file is corrupt; re-export it") from err
    return LoadedModel(
        model.eval(), checkpoint_format, str(path), spec.pretrained, model_config, tokenizer=tokenizer, image_processor=processor
    )


def _build_hf(path: Path, attn_implementation: str | None) -> nn.Module:
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(path))
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return hf_model_class(config)._from_config(config, **kwargs)
