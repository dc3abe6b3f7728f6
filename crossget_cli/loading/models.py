"""Resolve a ``--model`` string to a model, the way a user names checkpoints.

Accepted, in this order:

* a model shipped with the package (:data:`BUILTIN_MODELS`: ``crossget-shapes-tiny``,
  a small CLIP trained here on the built-in shapes benchmark; ``--pretrained none``
  gives its architecture with random weights);
* a folder written by ``crossget compress`` (has ``crossget.yaml``): reloaded patched;
* a transformers folder (``config.json``) or ``hf:<id>`` / ``<org>/<name>`` hub id;
* an open_clip folder (``open_clip_config.json``);
* an OpenAI-style checkpoint file (``.pt``/``.pth``/``.bin`` TorchScript or state
  dict, ``.safetensors``), official CrossGET checkpoints with cross tokens included;
* an open_clip architecture name (``ViT-B-16``, or ``openclip:ViT-B-16@tag``) with
  ``pretrained`` a tag, a weights file, or ``"none"`` for random weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


from crossget_cli.errors import CrossGetError, first_line
from crossget_cli.adapters.model_io import OPEN_CLIP, TRANSFORMERS, LoadedModel
from crossget_cli.loading.formats import (
    UNREADABLE_ERRORS,
    UNREADABLE_HINT,
    build_openclip,
    hf_model_class,
    hf_preprocessors,
    openai_model_config,
    read_state_dict,
    unreadable_reason,
)
from crossget_cli.loading.hub import hub_offline, hub_reachable, is_network_error, offline_hint, openclip_tag_cached

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CROSS_KEYS = ("visual.transformer.cross_image", "transformer.cross_text")
#: Models shipped inside the package: name -> open_clip folder.
BUILTIN_MODELS = {"crossget-shapes-tiny": Path(__file__).resolve().parent.parent / "models" / "crossget-shapes-tiny"}
OPENCLIP_WEIGHTS_FILE = "open_clip_model.safetensors"


def load_model(source: str, pretrained: str | None = None) -> LoadedModel:
    """Load ``source`` (see module doc) on the CPU in eval mode."""
    if not source:
        raise CrossGetError("no model given", "pass --model (an open_clip name, an HF id or folder, or a checkpoint file)")
    if source in BUILTIN_MODELS:
        return _load_builtin(source, pretrained)
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "crossget.yaml").is_file():
            from crossget_cli.loading.exported import load_exported

            return load_exported(path)
        if (path / "config.json").is_file():
            return _load_hf(str(path), source)
        if (path / "open_clip_config.json").is_file():
            return _load_openclip(f"local-dir:{path}", source, None)
        raise CrossGetError(f"folder {path} holds no model", "expected crossget.yaml, config.json or open_clip_config.json")
    if path.suffix in CHECKPOINT_SUFFIXES or path.exists():
        if not path.is_file():
            raise CrossGetError(f"checkpoint file not found: {path}", "check the path")
        return load_openai_checkpoint(path, source)
    if _looks_like_path(source):
        raise CrossGetError(f"model path not found: {source}", "check the path (hub ids look like org/name)")
    if source.startswith("hf:"):
        return _load_hf(source[3:], source)
    name, tag = source, pretrained
    if source.startswith("openclip:"):
        name = source[len("openclip:") :]
        if "@" in name:
            name, tag = name.split("@", 1)
    import open_clip

    if name in open_clip.list_models():
        return _load_openclip(name, source, tag)
    if "/" in source and not source.startswith("openclip:"):
        return _load_hf(source, source)
    raise CrossGetError(
        f"unknown model {source!r}",
        "pass an open_clip architecture (see `python -c 'import open_clip; print(open_clip.list_models())'`), "
        "hf:<id>, an HF/open_clip/crossget folder, or a .pt/.safetensors checkpoint",
    )


def _load_builtin(name: str, pretrained: str | None) -> LoadedModel:
    folder = BUILTIN_MODELS[name]
    if pretrained == "none":  # the architecture, freshly initialised (to train it again)
        saved = json.loads((folder / "open_clip_config.json").read_text())
        model = build_openclip(saved["model_cfg"])
        model.visual.preprocess_cfg = dict(saved["preprocess_cfg"])
        return LoadedModel(model, OPEN_CLIP, name, "none", saved["model_cfg"])
    if pretrained is not None:
        raise CrossGetError(
            f"built-in model {name!r} takes no --pretrained tag", "leave it out, or pass 'none' for random weights"
        )
    if not (folder / OPENCLIP_WEIGHTS_FILE).is_file():
        raise CrossGetError(f"built-in model {name!r} has no weights in this install ({folder})", "reinstall crossget")
    return _load_openclip(f"local-dir:{folder}", name, None)


def _load_openclip(name: str, source: str, tag: str | None) -> LoadedModel:
    import open_clip

    if tag is None and not name.startswith("local-dir:"):
        tags = open_clip.list_pretrained_tags_by_model(name)
        choices = f"a tag ({', '.join(tags)}), " if tags else ""
        raise CrossGetError(
            f"open_clip model {name!r} needs --pretrained", f"pass {choices}a weights file, or 'none' for random weights"
        )
    weights = None if tag in (None, "none") else tag
    is_file = weights is not None and (weights.endswith(CHECKPOINT_SUFFIXES) or os.sep in weights or Path(weights).is_file())
    if is_file and not Path(weights).is_file():
        raise CrossGetError(f"weights file not found: {weights}", "check the --pretrained path")
    offline = weights is not None and not is_file and not hub_reachable()
    if offline and not openclip_tag_cached(name, weights):
        raise CrossGetError(
            f"cannot download open_clip weights {name}@{weights}: the hub cannot be reached and they are not cached",
            offline_hint(),
        )
    try:
        with hub_offline(offline):  # cached weights load without asking the hub
            model = open_clip.create_model(name, pretrained=weights)
    except Exception as err:  # hub/network errors come in many types
        if is_network_error(err):
            raise CrossGetError(
                f"cannot download open_clip weights {name}@{weights}: offline or not cached", offline_hint()
            ) from err
        if not isinstance(err, UNREADABLE_ERRORS):
            raise
        if name.startswith("local-dir:"):
            what = f"the weights in {name[len('local-dir:'):]}"
        else:
            what = f"weights {weights}" if is_file else f"open_clip {name!r} with pretrained={weights!r}"
        raise CrossGetError(f"cannot load {what}: {unreadable_reason(err)}", UNREADABLE_HINT) from err
    config = None if name.startswith("local-dir:") else open_clip.get_model_config(name)
    if config is None:
        config = json.loads((Path(name[len("local-dir:") :]) / "open_clip_config.json").read_text())["model_cfg"]
    return LoadedModel(model.eval(), OPEN_CLIP, source, tag, config)


def _load_hf(model_id: str, source: str) -> LoadedModel:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # stderr is for messages and errors

    # Cached files first: without a network, asking the hub only costs retries.
    local_only = True
    try:
        config = transformers.AutoConfig.from_pretrained(model_id, local_files_only=True)
    except (OSError, ValueError) as err:
        if not hub_reachable():
            raise CrossGetError(
                f"cannot load transformers model {model_id!r}: not a local folder, not in the HF cache, "
                "and the hub cannot be reached",
                offline_hint(),
            ) from err
        local_only = False
        try:
            config = transformers.AutoConfig.from_pretrained(model_id)
        except (OSError, ValueError) as err:
            raise CrossGetError(
                f"cannot load transformers model {model_id!r}: not a local folder and not in the HF cache, "
                f"and the hub did not answer ({first_line(err)})",
                offline_hint(),
            ) from err
    try:
        model = hf_model_class(config).from_pretrained(model_id, local_files_only=local_only)
    except UNREADABLE_ERRORS as err:
        hint = offline_hint() if is_network_error(err) else UNREADABLE_HINT
        raise CrossGetError(f"cannot load weights of {model_id!r}: {unreadable_reason(err)}", hint) from err
    tokenizer, processor = hf_preprocessors(model_id, local_only)
    return LoadedModel(model.eval(), TRANSFORMERS, source, tokenizer=tokenizer, image_processor=processor)


def load_openai_checkpoint(path: Path, source: str) -> LoadedModel:
    state_dict = read_state_dict(path)
    # Metadata of OpenAI's archives and the causal-mask buffer of traced models.
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
        state_dict.pop(key, None)
    config = openai_model_config(state_dict)
    extras = {k: state_dict.pop(k) for k in CROSS_KEYS if k in state_dict}
    model = build_openclip(config)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)
    if missing or unexpected:
        raise CrossGetError(
            f"checkpoint {path} does not fit an OpenAI CLIP: missing {missing[:3]}, unexpected {unexpected[:3]}",
            "pass an OpenAI-layout CLIP state dict",
        )
    return LoadedModel(model, OPEN_CLIP, source, None, config, extras)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


