"""The adapter interface, the registry, and the pieces every adapter shares.

An adapter knows one model family. It finds the towers of a model by structure
(never by class name alone), and patches *instances* only: the classes of a few
modules are swapped for subclasses created here, and one cross-token parameter
per tower is registered. :func:`Adapter.remove` undoes both exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from crossget_cli.config import ReductionConfig
from crossget_cli.core import constants, contrastive_loss, token_schedule
from crossget_cli.core.losses import MAX_LOGIT_SCALE
from crossget_cli.adapters.generation import GenerationCalls
from crossget_cli.errors import CrossGetError

CONFIG_ATTR = "crossget_config"
SCHEDULE_ATTR = "crossget_schedule"
METHOD_ATTR = "crossget_method"
#: Set (to ``False``) on a tower's holder only when the log-size bias is off.
SIZE_BIAS_ATTR = "crossget_size_bias"
PARENT_ATTR = "_crossget_parent"
#: The ``crossget eval`` tasks whose answers are generated text.
GENERATIVE_TASKS = ("captioning", "vqa", "multiple-choice")


@dataclass(frozen=True)
class Tower:
    """One encoder of a model, as the adapter found it.

    Attributes:
        modality: ``"vision"`` or ``"text"``.
        holder: the module that owns the cross-token parameter and the schedule.
        cross_name: attribute name of the cross-token parameter on ``holder``.
        num_layers: number of transformer blocks.
        width: hidden size ``D``; the cross tokens are ``[1, num_layers, D]``.
        num_heads: attention heads of each block.
        num_tokens: tokens entering the first block, the cross slot included.
        blocks: the blocks :func:`~crossget_cli.adapters.tower.run_tower` runs;
            patching gives each the :class:`ReducingBlock` mixin. Empty for a
            tower whose blocks the model itself runs (LLaVA's LLM).
        protect_first: whether token 0 is a CLS/SOT token, protected from
            merging; ``False`` for a tower without one (SigLIP), which protects
            only the cross slot (and, for text, the pooled token).
    """

    modality: str
    holder: nn.Module
    cross_name: str
    num_layers: int
    width: int
    num_heads: int
    num_tokens: int
    blocks: tuple[nn.Module, ...] = ()
    protect_first: bool = True

    @property
    def num_protected(self) -> int:
        """CLS/SOT (if the tower has one) and the cross slot, plus EOT (the
        pooled token) for text (SPEC §1)."""
        return int(self.protect_first) + (1 if self.modality == "vision" else 2)

    def token_counts(self) -> list[int]:
        """Tokens entering each block and leaving the last, at inference: the
        original has no cross slot; ToMe has none either; a CrossGET text tower
        with r = 0 everywhere keeps the original path (SPEC §5)."""
        schedule = getattr(self.holder, SCHEDULE_ATTR, None)
        method = getattr(self.holder, METHOD_ATTR, None)
        if schedule is None or (self.modality == "text" and not any(r > 0 for r in schedule)):
            return [self.num_tokens - 1] * (self.num_layers + 1)
        if method == "tome":
            return token_schedule(self.num_tokens - 1, schedule, self.num_protected - 1, bipartite=True)
        return token_schedule(self.num_tokens, schedule, self.num_protected)

    @property
    def schedule(self) -> tuple[int, ...]:
        return getattr(self.holder, SCHEDULE_ATTR)

    @property
    def cross(self) -> nn.Parameter:
        return getattr(self.holder, self.cross_name)


@dataclass(frozen=True)
class ModelInputs:
    """Shapes and special ids of a model's inputs; ``None`` where a model has no
    such tower."""

    image_size: int | None
    context_length: int | None
    vocab_size: int | None
    sot_id: int | None
    eot_id: int | None

    def example_images(self, batch: int, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, self.image_size, self.image_size, generator=gen)

    def example_texts(self, batch: int, length: int | None = None, seed: int = 0) -> torch.Tensor:
        """``[batch, context_length]`` ids: SOT, random tokens, EOT at ``length - 1``
        (a full-length caption by default, the paper's FLOPs convention)."""
        length = length or self.context_length
        gen = torch.Generator().manual_seed(seed)
        low = 1
        high = min(self.sot_id, self.eot_id)
        ids = torch.zeros(batch, self.context_length, dtype=torch.long)
        ids[:, 1 : length - 1] = torch.randint(low, high, (batch, length - 2), generator=gen)
        ids[:, 0] = self.sot_id
        ids[:, length - 1] = self.eot_id
        return ids


_PATCHED_CLASSES: dict[tuple[type, type], type] = {}


class ReducingBlock:
    """Mixin for every block of a patched tower. The block stays a module that
    is called through ``nn.Module.__call__``, so forward hooks see the reduced
    token counts, and activation checkpointing (transformers wraps ``forward``),
    FSDP wrapping and feature-extraction hooks keep working. ``crossget`` is the
    step :func:`~crossget_cli.adapters.tower.run_tower` hands each block;
    without it the block runs as the original."""

    def forward(self, *args, crossget=None, **kwargs):
        if crossget is None:
            return super().forward(*args, **kwargs)
        return crossget(self, args[0])  # run_tower (and checkpointing) pass x positionally


def swap_class(module: nn.Module, mixin: type) -> None:
    """Give ``module`` the class ``mixin + its own class`` (one cached class per pair)."""
    parent = module.__class__
    key = (mixin, parent)
    if key not in _PATCHED_CLASSES:
        _PATCHED_CLASSES[key] = type(f"CrossGET{parent.__name__}", (mixin, parent), {PARENT_ATTR: parent})
    module.__class__ = _PATCHED_CLASSES[key]


def restore_classes(model: nn.Module) -> None:
    for module in model.modules():
        parent = type(module).__dict__.get(PARENT_ATTR)
        if parent is not None:
            module.__class__ = parent


class Adapter:
    """Patches one model family. Subclasses implement :meth:`matches`,
    :meth:`towers` and :meth:`class_swaps` (and :meth:`tiny_models`, for the
    tests); apply/remove are shared."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: Adapters are asked in descending priority: a family that contains
    #: another's towers (LLaVA holds a CLIP vision tower) must be asked first.
    priority: ClassVar[int] = 0
    #: The modalities whose tokens this family merges (LLaVA: the vision tower only).
    reduces: ClassVar[tuple[str, ...]] = ("vision", "text")
    #: Generating families: default prompt template per ``crossget eval`` task,
    #: and ``generate`` settings that the eval flags leave unset.
    prompt_templates: ClassVar[dict[str, str]] = {}
    generation_defaults: ClassVar[dict[str, object]] = {}
    #: Named ``--trainable`` groups this family offers: name -> parameter-name
    #: substrings (LLaVA: the projector, the LLM).
    trainable_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Whether the text tower attends causally (CLIP): then no token attends to the
    #: text cross slot, which changes no text feature and trains through L_JS only
    #: (SPEC §3). Bidirectional text towers (BERT's, SigLIP's) attend to it.
    causal_text: ClassVar[bool] = True
    #: Whether the text tower takes a padding mask: padding then has size 0 and is
    #: merged into nothing real (``TokenState.pad``).
    masks_text_padding: ClassVar[bool] = False
    #: Whether the patched blocks run the model's own attention function, so a block
    #: that merges nothing computes exactly what the original does; False where the
    #: reduced path computes attention with another kernel (equal to rounding).
    own_attention_kernel: ClassVar[bool] = True

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        """Random-weight miniatures of the family's model classes, built in code
        without a download, by name (the model class, e.g. ``"CLIPVisionModel"``):
        the test suite sweeps every registered adapter over them. A family keeps
        its builders in its own ``tiny.py`` and imports it here, on call, so that
        importing the package stays light. A family offering none is not swept."""
        return {}

    def towers(self, model: nn.Module) -> list[Tower]:
        """The towers to patch; raises :class:`CrossGetError` on a layout this
        adapter cannot patch faithfully."""
        raise NotImplementedError

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        raise NotImplementedError

    def inputs(self, model: nn.Module) -> "ModelInputs":
        """What the model's encoders take (for example inputs, FLOPs, reports)."""
        raise NotImplementedError

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Projected image features ``[N, E]`` (not normalised)."""
        raise NotImplementedError

    def encode_text(
        self, model: nn.Module, token_ids: torch.Tensor, token_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Projected text features ``[N, E]`` (not normalised). ``token_embeddings``
        (``[N, T, D]``) replace the token-embedding lookup (prompt learning, e.g.
        CoOp); ``token_ids`` still locate EOT."""
        raise NotImplementedError

    # -- what a model of this family can do: jobs ask here, never by family name ------------

    def tasks(self, model: nn.Module) -> tuple[str, ...]:
        """The ``crossget eval`` tasks ``model`` runs. Dual encoders retrieve and
        classify; a family whose models carry task heads answers per model."""
        return ("retrieval", "zeroshot")

    def require_task(self, model: nn.Module, task: str) -> None:
        """Raise a :class:`CrossGetError` saying what ``task`` needs when ``model``
        cannot run it (families may name the model class that can)."""
        tasks = self.tasks(model)
        if task not in tasks:
            why = ": the task needs a model that generates text" if task in GENERATIVE_TASKS and not self.generates(model) else ""
            raise CrossGetError(
                f"{type(model).__name__} ({self.description}) does not run task {task!r}{why}",
                f"use --task {' or '.join(tasks)}" if tasks else "evaluate another model",
            )

    def generates(self, model: nn.Module) -> bool:
        """Whether ``model`` generates text: :meth:`generation_calls` and the generative tasks."""
        return any(task in GENERATIVE_TASKS for task in self.tasks(model))

    def reranks(self, model: nn.Module) -> bool:
        """Whether ``model`` has an image-text matching head (:meth:`itm_scores`) that
        re-ranks retrieval's ITC top k."""
        return False

    def itm_scores(self, model: nn.Module, image_tokens: torch.Tensor, sizes: torch.Tensor | None, token_ids: torch.Tensor):
        """ITM logits of captions ``token_ids`` against one image's tokens (when :meth:`reranks`)."""
        raise NotImplementedError

    def generation_calls(self, model: nn.Module, images: torch.Tensor, prompt_length: int = 8) -> GenerationCalls:
        """The prefill and decode calls ``crossget profile`` times (when :meth:`generates`)."""
        raise NotImplementedError

    def generate_captions(self, model: nn.Module, images: torch.Tensor, tokenizer=None, prompt=None, **generation) -> list[str]:
        raise NotImplementedError

    def answer_questions(
        self, model: nn.Module, images: torch.Tensor, questions, tokenizer=None, prompt=None, **generation
    ) -> list[str]:
        raise NotImplementedError

    def scores_continuations(self, model: nn.Module) -> bool:
        """Whether ``model`` scores given answers (:meth:`continuation_logprobs`), as
        log-likelihood benchmarks (lmms-eval's ``loglikelihood`` requests) need."""
        return False

    def continuation_logprobs(
        self, model: nn.Module, images: torch.Tensor, questions, continuations, tokenizer=None, prompt=None
    ) -> list[tuple[float, bool]]:
        """Per question (the template's ``{question}`` filled in, one image each): the
        log-probability of its continuation after the prompt, and whether greedy
        decoding would produce exactly that continuation (when :meth:`scores_continuations`)."""
        raise NotImplementedError(f"{type(model).__name__} ({self.description}) does not score continuations")

    def token_embedding(self, model: nn.Module) -> nn.Embedding:
        """The text tower's token lookup, which prompt learning (CoOp) replaces with its
        own embeddings (``encode_text(..., token_embeddings=...)``)."""
        raise CrossGetError(
            f"{type(model).__name__} ({self.description}) takes no learned prompts",
            "prompt learning needs a dual encoder whose text tower embeds tokens, e.g. CLIP",
        )

    def cross_norm_and_projection(self, model: nn.Module, modality: str) -> tuple[nn.LayerNorm, torch.Tensor]:
        """The LayerNorm and the ``[D, E]`` projection that map a tower's cross
        tokens into the shared embedding space for L_JS (SPEC §4: ``ln_pre`` and
        ``proj`` for vision, ``ln_final`` and ``text_projection`` for text)."""
        raise NotImplementedError

    def logit_scale(self, model: nn.Module) -> nn.Parameter:
        raise NotImplementedError

    def contrastive_loss(
        self, model: nn.Module, image_features: torch.Tensor, text_features: torch.Tensor, image_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The dual encoder's image-text contrastive loss, the task loss of the ``clip``
        objective: CLIP's symmetric softmax ITC with soft targets from equal
        ``image_ids`` (default: every image distinct) and the logit scale clamped in
        place to [0, ln 100]. A family trained with another loss (SigLIP's sigmoid)
        overrides it."""
        scale = self.logit_scale(model)
        with torch.no_grad():
            scale.clamp_(0, MAX_LOGIT_SCALE)
        return contrastive_loss(image_features, text_features, scale, image_ids)

    def project_cross(self, model: nn.Module, modality: str, tokens: torch.Tensor) -> torch.Tensor:
        """``[L*N, D]`` cross tokens -> ``[L*N, E]``, with the norm's affine and
        the projection detached, so L_JS trains only the cross tokens."""
        norm, projection = self.cross_norm_and_projection(model, modality)
        weight = None if norm.weight is None else norm.weight.detach()
        bias = None if norm.bias is None else norm.bias.detach()
        normed = F.layer_norm(tokens, norm.normalized_shape, weight, bias, norm.eps)
        return normed @ projection.detach()

    def apply(self, model: nn.Module, config: ReductionConfig) -> nn.Module:
        """Patch ``model`` in place. Patching again reconfigures: the classes are
        swapped once and trained cross tokens of the right shape are kept."""
        towers = self.towers(model)
        schedules = [config.schedule(t.modality, t.num_layers) for t in towers]
        for tower, schedule in zip(towers, schedules):
            if tower.modality not in self.reduces and any(schedule):
                raise CrossGetError(
                    f"{self.name} models merge no {tower.modality} tokens, got {tower.modality}_r={config.r_for(tower.modality)}",
                    f"reduce the {' and '.join(self.reduces)} tower only",
                )
        kept = {id(t.holder): getattr(t.holder, t.cross_name, None) for t in towers}
        self.remove(model)
        for tower, schedule in zip(towers, schedules):
            setattr(tower.holder, SCHEDULE_ATTR, schedule)
            setattr(tower.holder, METHOD_ATTR, config.method)
            if not config.size_bias:
                setattr(tower.holder, SIZE_BIAS_ATTR, False)
            if config.method != "crossget":  # ToMe has no cross tokens
                continue
            shape = (1, tower.num_layers, tower.width)
            param = kept[id(tower.holder)]
            if not isinstance(param, nn.Parameter) or tuple(param.shape) != shape:
                ref = next(tower.holder.parameters())
                param = nn.Parameter(torch.zeros(shape, dtype=ref.dtype, device=ref.device))
            tower.holder.register_parameter(tower.cross_name, param)
        for module, mixin in self.class_swaps(model):
            swap_class(module, mixin)
        for tower in towers:
            for block in tower.blocks:
                swap_class(block, ReducingBlock)
        setattr(model, CONFIG_ATTR, config)
        for tower, schedule in zip(towers, schedules):
            counts = tower.token_counts()
            reducing = [t for t, r in zip(counts, schedule) if r > 0]
            ref = next(tower.holder.parameters())
            constants.prepare(
                config.method, reducing, ref.device, ref.dtype, causal=tower.modality == "text", protect_first=tower.protect_first
            )
        return model

    def remove(self, model: nn.Module) -> nn.Module:
        restore_classes(model)
        for module in model.modules():
            if hasattr(module, SCHEDULE_ATTR):
                delattr(module, SCHEDULE_ATTR)
                delattr(module, METHOD_ATTR)
                if hasattr(module, SIZE_BIAS_ATTR):
                    delattr(module, SIZE_BIAS_ATTR)
                for name in ("cross_image", "cross_text"):
                    if name in module._parameters:
                        del module._parameters[name]
        if CONFIG_ATTR in model.__dict__:
            delattr(model, CONFIG_ATTR)
        return model
