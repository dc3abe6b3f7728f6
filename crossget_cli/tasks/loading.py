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

import contextlib
import functools
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import CrossGetError, first_line

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CROSS_KEYS = ("visual.transformer.cross_image", "transformer.cross_text")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Models shipped inside the package: name -> open_clip folder.
BUILTIN_MODELS = {"crossget-shapes-tiny": Path(__file__).resolve().parent.parent / "models" / "crossget-shapes-tiny"}
OPENCLIP_WEIGHTS_FILE = "open_clip_model.safetensors"


@dataclass
class LoadedModel:
    """A model and what is needed to rebuild it.

    Attributes:
        model: the ``nn.Module`` (eval mode).
        family: ``"openclip"`` or ``"hf-clip"``.
        source: the ``--model`` string as given.
        pretrained: the open_clip tag/file/"none", if any.
        model_config: open_clip's model config dict (for ``open_clip_config.json``);
            ``None`` for transformers models, whose config lives on the model.
        state_dict_extras: cross-token tensors found in a checkpoint, loaded
            once the model is patched.
    """

    model: nn.Module
    family: str
    source: str
    pretrained: str | None = None
    model_config: dict | None = None
    state_dict_extras: dict[str, torch.Tensor] = field(default_factory=dict)
    tokenizer: Any = None  # transformers tokenizer saved with an HF model, if any
    image_processor: Any = None  # transformers image processor saved with an HF model, if any


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise CrossGetError(f"unknown dtype {name!r}", f"choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def load_model(source: str, pretrained: str | None = None) -> LoadedModel:
    """Load ``source`` (see module doc) on the CPU in eval mode."""
    if not source:
        raise CrossGetError("no model given", "pass --model (an open_clip name, an HF id or folder, or a checkpoint file)")
    if source in BUILTIN_MODELS:
        return _load_builtin(source, pretrained)
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "crossget.yaml").is_file():
            from .export import load_exported

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
        return LoadedModel(model, "openclip", name, "none", saved["model_cfg"])
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
    if offline and not _openclip_tag_cached(name, weights):
        raise CrossGetError(
            f"cannot download open_clip weights {name}@{weights}: the hub cannot be reached and they are not cached",
            _offline_hint(),
        )
    try:
        with _hub_offline(offline):  # cached weights load without asking the hub
            model = open_clip.create_model(name, pretrained=weights)
    except Exception as err:  # hub/network errors come in many types
        if _is_network_error(err):
            raise CrossGetError(
                f"cannot download open_clip weights {name}@{weights}: offline or not cached", _offline_hint()
            ) from err
        if not isinstance(err, UNREADABLE_ERRORS):
            raise
        if name.startswith("local-dir:"):
            what = f"the weights in {name[len('local-dir:'):]}"
        else:
            what = f"weights {weights}" if is_file else f"open_clip {name!r} with pretrained={weights!r}"
        raise CrossGetError(f"cannot load {what}: {unreadable_reason(err)}", _UNREADABLE_HINT) from err
    config = None if name.startswith("local-dir:") else open_clip.get_model_config(name)
    if config is None:
        config = json.loads((Path(name[len("local-dir:") :]) / "open_clip_config.json").read_text())["model_cfg"]
    return LoadedModel(model.eval(), "openclip", source, tag, config)


def _openclip_tag_cached(name: str, tag: str) -> bool:
    """Whether the weights of an open_clip pretrained tag are on disk already
    (HF cache for hub-hosted tags, open_clip's download folder for URL ones)."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        return True  # an unknown tag: open_clip's own error says so
    if cfg.get("file"):
        return Path(cfg["file"]).is_file()
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith(".bin"):
            candidates.insert(0, filename[: -len(".bin")] + ".safetensors")
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in candidates)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """``HF_HUB_OFFLINE`` semantics for the duration: hub lookups answer from the cache."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


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
                _offline_hint(),
            ) from err
        local_only = False
        try:
            config = transformers.AutoConfig.from_pretrained(model_id)
        except (OSError, ValueError) as err:
            raise CrossGetError(
                f"cannot load transformers model {model_id!r}: not a local folder and not in the HF cache, "
                f"and the hub did not answer ({first_line(err)})",
                _offline_hint(),
            ) from err
    try:
        model = hf_model_class(config).from_pretrained(model_id, local_files_only=local_only)
    except UNREADABLE_ERRORS as err:
        hint = _offline_hint() if _is_network_error(err) else _UNREADABLE_HINT
        raise CrossGetError(f"cannot load weights of {model_id!r}: {unreadable_reason(err)}", hint) from err
    tokenizer, processor = hf_preprocessors(model_id, local_only)
    return LoadedModel(model.eval(), "hf-clip", source, tokenizer=tokenizer, image_processor=processor)


def hf_preprocessors(model_id: str, local_only: bool = True):
    """The tokenizer and image processor saved with a transformers model, each
    ``None`` when there is none (a vision- or text-only model, or bare weights)."""
    import transformers

    found = []
    for auto in (transformers.AutoTokenizer, transformers.AutoImageProcessor):
        try:
            found.append(auto.from_pretrained(model_id, local_files_only=local_only))
        except Exception:  # absent files surface later, as a clear error where they are needed
            found.append(None)
    return tuple(found)


def hf_model_class(config) -> type:
    import transformers

    for name in getattr(config, "architectures", None) or []:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoModel


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, a (possibly nested) state dict,
    or a TorchScript archive (OpenAI's ``.pt`` releases)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except RuntimeError as err:
            if "TorchScript" not in str(err) and "constants.pkl" not in str(err):
                raise
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as err:  # whatever the reader raises, the file is at fault
        raise CrossGetError(f"cannot read checkpoint {path}: {unreadable_reason(err)}", _UNREADABLE_HINT) from err
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CrossGetError(f"checkpoint {path} holds no state dict", "save the model with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def openai_model_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """open_clip model config of an OpenAI-layout ViT CLIP state dict. Heads are
    ``width // 64`` for both towers, as OpenAI's ``build_model`` derives them."""
    if "visual.proj" not in state_dict or "visual.conv1.weight" not in state_dict:
        raise CrossGetError(
            "checkpoint is not an OpenAI-layout ViT CLIP (no visual.proj / visual.conv1)", "use a ViT CLIP checkpoint"
        )
    vision_width = state_dict["visual.conv1.weight"].shape[0]
    patch = state_dict["visual.conv1.weight"].shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state_dict["ln_final.weight"].shape[0]

    def depth(prefix: str) -> int:
        return len({k.split(".")[len(prefix.split("."))] for k in state_dict if k.startswith(prefix + ".")})

    return {
        "embed_dim": state_dict["text_projection"].shape[1],
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": patch * grid,
            "layers": depth("visual.transformer.resblocks"),
            "width": vision_width,
            "patch_size": patch,
        },
        "text_cfg": {
            "context_length": state_dict["positional_embedding"].shape[0],
            "vocab_size": state_dict["token_embedding.weight"].shape[0],
            "width": text_width,
            "heads": max(1, text_width // 64),
            "layers": depth("transformer.resblocks"),
        },
    }


def build_openclip(model_config: dict) -> nn.Module:
    """An open_clip ``CLIP`` in float32 from a model config (random weights)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg = dict(model_config)
    vision = CLIPVisionCfg(**cfg.pop("vision_cfg"))
    text = CLIPTextCfg(**cfg.pop("text_cfg"))
    cfg.pop("custom_text", None)
    return CLIP(vision_cfg=vision, text_cfg=text, **cfg).eval()


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
    return LoadedModel(model, "openclip", source, None, config, extras)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source



def unreadable_reason(err: BaseException) -> str:
    """Why a weights file could not be read, in words a user can act on."""
    if isinstance(err, pickle.UnpicklingError):
        # torch's own message suggests loading it unsafely; say what it is instead
        if "GLOBAL" in str(err):
            return "it holds objects other than tensors and plain containers, and loading it could run code"
        return "not a PyTorch checkpoint (unreadable pickle data)"
    return first_line(err)[:160]


#: What reading a damaged, truncated or foreign weights file raises, by library.
UNREADABLE_ERRORS = (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, OSError, SafetensorError)

_UNREADABLE_HINT = "check that the file is complete and a PyTorch/safetensors checkpoint; re-save a pickle with safetensors"


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be asked at all: not in offline mode
    (``HF_HUB_OFFLINE``) and its endpoint answers within 1.5 s. The endpoint is
    asked once per process, so that an offline machine fails in a second instead
    of retrying."""
    from huggingface_hub import constants

    return not constants.is_offline_mode() and _answers(constants.ENDPOINT)


@functools.cache
def _answers(endpoint: str) -> bool:
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=1.5)
    except Exception:  # DNS, refused, timeout, proxy: all mean "not now"
        return False
    return True


def _is_network_error(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    return bool(
        names
        & {
            "ConnectionError",
            "LocalEntryNotFoundError",
            "OfflineModeIsEnabled",
            "HfHubHTTPError",
            "ConnectError",
            "MaxRetryError",
        }
    )


def _chain(err: BaseException | None):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _offline_hint() -> str:
    return "without network access, pass a local folder or checkpoint file (or --pretrained none for random weights)"


def describe(loaded: LoadedModel) -> dict[str, Any]:
    return {"source": loaded.source, "pretrained": loaded.pretrained, "family": loaded.family}
