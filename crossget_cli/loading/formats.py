"""The on-disk formats a model comes in: dtypes by name, state-dict files
(safetensors, pickles read with ``weights_only``, TorchScript archives), open_clip
model configs (OpenAI layouts included) and transformers classes by config."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from crossget_cli.errors import CrossGetError, first_line


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise CrossGetError(f"unknown dtype {name!r}", f"choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


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
        raise CrossGetError(f"cannot read checkpoint {path}: {unreadable_reason(err)}", UNREADABLE_HINT) from err
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
    """An open_clip ``CLIP`` (``CustomTextCLIP`` when the config says
    ``custom_text``, e.g. SigLIP) in float32 from a model config (random weights)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    cfg = dict(model_config)
    vision = CLIPVisionCfg(**cfg.pop("vision_cfg"))
    text = CLIPTextCfg(**cfg.pop("text_cfg"))
    cls = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    return cls(vision_cfg=vision, text_cfg=text, **cfg).eval()


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


UNREADABLE_HINT = "check that the file is complete and a PyTorch/safetensors checkpoint; re-save a pickle with safetensors"
