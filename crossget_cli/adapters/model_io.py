"""A loaded model as the jobs hand it around: the module with what rebuilds it
(:class:`LoadedModel`), and the module on a device with its own preprocessing and
tokenizer (:class:`ModelIO`). Plain containers: the loaders that fill them live in
:mod:`crossget_cli.loading`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from crossget_cli.adapters.registry import find_adapter


#: :attr:`LoadedModel.checkpoint_format` values.
OPEN_CLIP = "open_clip"
TRANSFORMERS = "transformers"


@dataclass
class LoadedModel:
    """A model and what is needed to rebuild it.

    Attributes:
        model: the ``nn.Module`` (eval mode).
        checkpoint_format: how it is stored and rebuilt: :data:`OPEN_CLIP` (an
            open_clip config + state dict) or :data:`TRANSFORMERS` (``save_pretrained``).
            Which adapter patches it is a separate question (``find_adapter``).
        source: the ``--model`` string as given.
        pretrained: the open_clip tag/file/"none", if any.
        model_config: open_clip's model config dict (for ``open_clip_config.json``);
            ``None`` for transformers models, whose config lives on the model.
        state_dict_extras: cross-token tensors found in a checkpoint, loaded
            once the model is patched.
    """

    model: nn.Module
    checkpoint_format: str
    source: str
    pretrained: str | None = None
    model_config: dict | None = None
    state_dict_extras: dict[str, torch.Tensor] = field(default_factory=dict)
    tokenizer: Any = None  # transformers tokenizer saved with an HF model, if any
    image_processor: Any = None  # transformers image processor saved with an HF model, if any


@dataclass
class ModelIO:
    """Preprocessing and encoding for one model on one device.

    Attributes:
        transform: PIL image -> ``[3, H, W]`` tensor, as the model was trained.
        tokenize: list of strings -> ``[N, context]`` int64 ids.
    """

    loaded: LoadedModel
    transform: Callable
    tokenize: Callable[[Sequence[str]], torch.Tensor]
    device: torch.device
    dtype: torch.dtype

    @property
    def model(self):
        return self.loaded.model

    @torch.inference_mode()
    def encode_images(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """L2-normalised image features of every batch, concatenated, float32 on CPU."""
        adapter = find_adapter(self.model)
        out = [adapter.encode_image(self.model, b.to(self.device, self.dtype)).float() for b in batches]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        """L2-normalised text features, float32 on CPU."""
        adapter = find_adapter(self.model)
        out = []
        for start in range(0, len(texts), batch_size):
            ids = self.tokenize(list(texts[start : start + batch_size])).to(self.device)
            out.append(adapter.encode_text(self.model, ids).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu()
