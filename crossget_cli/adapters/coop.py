"""CoOp prompt learning with CrossGET (SPEC §4, last paragraph): the ``coop``
fine-tuning objective, trained by the shared loop (:func:`crossget_cli.train.loop.finetune`).

CoOp (Zhou et al. 2022, "Learning to Prompt for Vision-Language Models") learns
``n_ctx`` context vectors shared by all classes (its *unified* context) in front of
each class name: the prompt of class ``c`` is ``[SOT] [ctx_1 .. ctx_n] [name_c] [.]
[EOT]``, and the text tower encodes these embeddings instead of looked-up tokens
(:class:`~crossget_cli.adapters.prompts.PromptLearner`). The CrossGET variant trains
the context together with the model's cross tokens on

    L = (CE + js_weight * L_JS) / 2        (js_weight = 10)

where CE classifies the few-shot images against the features of every class prompt,
and L_JS pairs each image's cross tokens with the cross tokens of its ground-truth
class prompt, ``(L, C, E)[:, label]``. Everything else stays frozen (``--trainable cross``).

* :class:`CoopOptions`: ``--shots``, ``--n-ctx``, ``--ctx-init``, ``--label-column``, ``--classnames``;
* :func:`few_shot_indices`: the seeded few-shot subset;
* :func:`coop_losses`: the loss of one batch;
* :class:`CoopObjective`: CoOp's defaults (SGD lr 0.002, momentum 0.9, weight decay
  5e-4, cosine to 0, batch 32, 200 epochs; CoOp uses 50 on ImageNet), the prompts as
  the objective's module, exported as ``coop_prompts.safetensors``/``.json``.

Not reproduced from CoOp: its training augmentation (random resized crop and flip;
the model's own evaluation transform is used) and its constant-lr warm-up epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.adapters.prompts import PromptLearner, require_patched, save_prompts
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.training import FinetuneConfig, Objective, gather, register_objective, world_info
from crossget_cli.core import collect_cross_tokens, js_loss
from crossget_cli.core.losses import MAX_LOGIT_SCALE
from crossget_cli.errors import CrossGetError


def _positive(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CrossGetError(
            f"option {name} must be a positive integer, got {value!r}",
            f"e.g. --{name.replace('_', '-')} 16 (finetune.options.{name} in a recipe)",
        )


@dataclass(frozen=True)
class CoopOptions:
    """The ``coop`` objective's options (``FinetuneConfig.options``).

    ``shots``: training images per class (a seeded subset; ``None``: all);
    ``n_ctx``/``ctx_init``: see :class:`~crossget_cli.adapters.prompts.PromptLearner`
    (its ``n_ctx`` and ``init``); ``label_column``: the label column of CSV/JSONL/HF data;
    ``classnames``: a file with one class name per line (or a list of names).
    """

    shots: int | None = 16
    n_ctx: int = 16
    ctx_init: str | None = None
    label_column: str = "label"
    classnames: str | list[str] | None = None

    def __post_init__(self):
        _positive("shots", self.shots, optional=True)
        _positive("n_ctx", self.n_ctx)
        if self.ctx_init is not None and not (isinstance(self.ctx_init, str) and self.ctx_init.strip()):
            raise CrossGetError("option ctx_init must be a non-empty phrase or unset", "e.g. --ctx-init 'a photo of a'")
        if not (isinstance(self.label_column, str) and self.label_column):
            raise CrossGetError(
                f"option label_column must be a column name, got {self.label_column!r}", "e.g. --label-column label"
            )
        names = self.classnames
        listed = isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names)
        if not (names is None or isinstance(names, str) or listed):
            raise CrossGetError(
                f"option classnames must be a file of class names or a list of names, got {names!r}",
                "e.g. --classnames classes.txt",
            )


def few_shot_indices(labels: Sequence[int], num_classes: int, shots: int | None, seed: int) -> list[int]:
    """``shots`` sample indices per class, drawn with ``seed`` (sorted); all when ``shots`` is None."""
    if shots is None:
        return list(range(len(labels)))
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, members in enumerate(by_class):
        if len(members) < shots:
            raise CrossGetError(
                f"class {label} has {len(members)} training image(s), fewer than shots={shots}",
                f"lower --shots to at most {min(len(m) for m in by_class)}",
            )
        order = torch.randperm(len(members), generator=generator)[:shots]
        chosen.extend(members[int(i)] for i in order)
    return sorted(chosen)


def coop_losses(
    io: ModelIO,
    learner: PromptLearner,
    images: torch.Tensor,
    labels: torch.Tensor,
    js_weight: float = 10.0,
    task_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``{"ce", "js", "total", "logits"}`` of one batch (run the model in training mode).

    ``logits = exp(logit_scale) * norm(image) @ norm(class prompts)^T`` over all
    classes (the scale clamped in place to [0, ln 100]); ``ce`` their cross-entropy
    with ``labels``; ``js`` L_JS between the image cross tokens ``[L*N, E]`` and the
    cross tokens of each image's ground-truth class prompt, ``(L, C, E)[:, labels]``
    (layer-major); ``total = (task_weight * ce + js_weight * js) / 2``. Under several
    processes the image rows of every rank are gathered, so both terms are those of the
    global batch (``logits`` stay this rank's).
    """
    require_patched(io)
    model = io.model
    adapter = find_adapter(model)
    images = images.to(io.device, io.dtype)
    labels = torch.as_tensor(labels, device=io.device).long()
    scale = adapter.logit_scale(model)
    with torch.no_grad():
        scale.clamp_(0, MAX_LOGIT_SCALE)
    with collect_cross_tokens() as cross:
        image_features = adapter.encode_image(model, images)
        embeddings, ids = learner()
        text_features = adapter.encode_text(model, ids, token_embeddings=embeddings)
    if not cross["vision"] or not cross["text"]:
        raise CrossGetError("no cross tokens were injected in this forward", "call model.train() before computing losses")
    n, c = images.shape[0], ids.shape[0]
    image_cross = adapter.project_cross(model, "vision", cross["vision"][-1])
    text_cross = adapter.project_cross(model, "text", cross["text"][-1])
    layers_v, layers_t = image_cross.shape[0] // n, text_cross.shape[0] // c
    if layers_v != layers_t:
        raise CrossGetError(
            f"L_JS needs towers of equal depth: {layers_v} vision vs {layers_t} text layers",
            "use a model whose towers have the same number of layers (SPEC §4)",
        )
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    logits = scale.exp().float() * image_features @ text_features.t()
    # Rows of the ground-truth class prompt, layer-major like the image rows.
    text_cross = text_cross.view(layers_t, c, -1)[:, labels].reshape(layers_t * n, -1)
    every = logits if world_info()[1] == 1 else scale.exp().float() * gather(image_features) @ text_features.t()
    ce = F.cross_entropy(every, gather(labels))
    js = js_loss(gather(image_cross.float()), gather(text_cross.float()))
    return {"ce": ce, "js": js, "total": (task_weight * ce + js_weight * js) / 2, "logits": logits}


class LabelledImages(Dataset):
    """The samples ``indices`` of classification data: ``(pixels [3, H, W], label)``."""

    def __init__(self, data, indices: Sequence[int], transform):
        self.images = data.image_dataset(transform)
        self.labels = data.labels
        self.classnames = list(data.classnames)
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        sample = self.indices[index]
        return self.images[sample][1], self.labels[sample]


@register_objective("coop")
class CoopObjective(Objective):
    """CoOp prompt learning on classification data: CE + 10 L_JS, halved; the learned
    context is the objective's module ``"prompts"``, exported next to the model."""

    parts = ("ce", "js")
    metric = "top1"
    default_js_weight = 10.0
    defaults: ClassVar[Mapping[str, Any]] = {
        "optimizer": "sgd",
        "momentum": 0.9,
        "lr": 0.002,
        "weight_decay": 5e-4,
        "epochs": 200,
        "batch_size": 32,
        "trainable": "cross",
    }
    Options = CoopOptions

    def dataset(self, io: ModelIO, config: FinetuneConfig) -> Dataset:
        from crossget_cli.data.classification import load_classification

        require_patched(io)
        options = self.parsed_options(config)
        # An ImageFolder without a <split>/ subfolder is the training set itself.
        folder = Path(config.data)
        split = None if folder.is_dir() and not (folder / config.split).is_dir() else config.split
        data = load_classification(
            config.data,
            split=split,
            image_column=config.image_column,
            label_column=options.label_column,
            classnames=options.classnames,
            image_root=config.image_root,
            limit=config.limit,
        )
        if len(data) == 0:
            raise CrossGetError("the training data holds no images", "pass a data set with images")
        subset = few_shot_indices(data.labels, len(data.classnames), options.shots, config.seed)
        return LabelledImages(data, subset, io.transform)

    def modules(self, io: ModelIO, config: FinetuneConfig, items: Dataset) -> dict[str, nn.Module]:
        options = self.parsed_options(config)
        self.learner = PromptLearner(io, items.classnames, options.n_ctx, options.ctx_init, config.seed)
        return {"prompts": self.learner}

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        pixels = torch.stack([item[0] for item in items])
        labels = torch.tensor([item[1] for item in items])
        return coop_losses(io, self.learner, pixels, labels, config.js_weight, config.task_weight)

    def export_files(self, modules: Mapping[str, nn.Module], folder: Path) -> None:
        save_prompts(modules["prompts"], folder)


__all__ = ["CoopObjective", "CoopOptions", "LabelledImages", "coop_losses", "few_shot_indices"]
