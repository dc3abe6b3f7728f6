"""What a model family's fine-tuning objective sees: the training settings
(:class:`FinetuneConfig`), the :class:`Objective` protocol and its registry, and
the process-group helpers a loss needs to cover the global batch.

The loop that runs an objective lives in :mod:`crossget_cli.train`; objectives
live with their family (``adapters/<family>/``) or, when they fit every dual
encoder, next to this module (:mod:`.contrastive`: ``clip``; :mod:`.coop`: ``coop``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.errors import CrossGetError
from crossget_cli.files import check_writable
from crossget_cli.registry import Registry

#: ``--trainable`` values every model has; families add named groups
#: (:attr:`Adapter.trainable_groups`), and any comma-separated list of
#: parameter-name substrings works too.
TRAINABLE = ("all", "cross")
AMP = ("none", "fp16", "bf16")
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "sgd")

#: The settings an objective may give other defaults (:attr:`Objective.defaults`), with
#: the loop's own: the paper's CLIP fine-tune (AdamW, lr 1e-5, weight decay 0.05, batch 64).
LOOP_DEFAULTS: Mapping[str, Any] = {
    "epochs": 1,
    "batch_size": 64,
    "lr": 1e-5,
    "weight_decay": 0.05,
    "optimizer": "adamw",
    "momentum": 0.9,
    "trainable": "all",
}


@dataclass(frozen=True)
class FinetuneConfig:
    """Attributes mirror the ``crossget compress --finetune`` flags.

    A setting left ``None`` takes the objective's default (:attr:`Objective.defaults`,
    ``default_js_weight``, ``task_weight_for``), else the loop's (:data:`LOOP_DEFAULTS`:
    AdamW, lr 1e-5, weight decay 0.05, cosine to 0; ITC/L_JS 0.5/0.5 for ``clip``).
    ``options`` are the objective's own settings (:attr:`Objective.Options`), checked and
    completed with their defaults by :meth:`Objective.check_options`.
    """

    data: str
    image_root: str | None = None
    split: str = "train"
    image_column: str = "image"
    caption_column: str = "caption"
    val_data: str | None = None
    val_split: str = "val"
    epochs: int | None = None
    max_steps: int | None = None  # stop after this many optimizer steps
    batch_size: int | None = None  # global batch (split over processes)
    grad_accum: int = 1
    lr: float | None = None
    weight_decay: float | None = None  # not on biases and norms (parameters under 2-D)
    optimizer: str | None = None  # adamw or sgd (with momentum)
    momentum: float | None = None  # sgd only
    warmup_steps: int = 0
    schedule: str = "cosine"
    clip_grad: float | None = None
    trainable: str | None = None  # all, cross, a family's group, or comma-separated parameter-name substrings
    amp: str = "none"  # none, fp16 (with a gradient scaler), bf16; CUDA only
    objective: str = "clip"  # a registered Objective: what the loss is and what data it reads
    task_weight: float | None = None  # weight of the task loss (ITC for clip); None: the objective's default
    js_weight: float | None = None  # weight of L_JS; None: the objective's default
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None  # steps; a checkpoint is also written at each epoch end
    resume: bool = False
    log_every: int = 1
    limit: int | None = None  # use only the first N training images
    annotations: str | None = None  # VQA answers (VQAv2 annotation JSON) for VQA objectives
    options: dict[str, Any] = field(default_factory=dict)  # the objective's own settings (Objective.Options)

    def __post_init__(self):
        objective = get_objective(self.objective)
        for name, value in {**LOOP_DEFAULTS, **objective.defaults}.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        positive = ("epochs", "batch_size", "grad_accum", "log_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CrossGetError(f"{name} must be a positive integer, got {value!r}", f"e.g. --{name.replace('_', '-')} 1")
        for name in ("max_steps", "checkpoint_every", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CrossGetError(f"{name} must be a positive integer, got {value!r}", "or leave it unset")
        if not (self.lr > 0):
            raise CrossGetError(f"lr must be > 0, got {self.lr!r}", "e.g. --lr 1e-5")
        if not (
            isinstance(self.weight_decay, (int, float)) and not isinstance(self.weight_decay, bool) and self.weight_decay >= 0
        ):
            raise CrossGetError(f"weight_decay must be >= 0, got {self.weight_decay!r}", "e.g. --weight-decay 0.05")
        if self.optimizer not in OPTIMIZERS:
            raise CrossGetError(f"unknown optimizer {self.optimizer!r}", f"choose one of: {', '.join(OPTIMIZERS)}")
        if not (isinstance(self.momentum, (int, float)) and not isinstance(self.momentum, bool) and 0 <= self.momentum < 1):
            raise CrossGetError(f"momentum must be in [0, 1), got {self.momentum!r}", "e.g. momentum=0.9")
        if self.schedule not in SCHEDULES:
            raise CrossGetError(f"unknown schedule {self.schedule!r}", f"choose one of: {', '.join(SCHEDULES)}")
        if self.amp not in AMP:
            raise CrossGetError(f"unknown amp {self.amp!r}", f"choose one of: {', '.join(AMP)}")
        if self.amp != "none" and not self.device.startswith("cuda"):
            raise CrossGetError(
                f"amp {self.amp} (--amp, or the recipe's finetune.amp) needs a CUDA device",
                "pass --amp none to train in float32 on the CPU (it overrides the recipe), or --device cuda",
            )
        if self.resume and not self.checkpoint_dir:
            raise CrossGetError("--resume needs --checkpoint-dir", "pass the folder of the interrupted run")
        if self.checkpoint_dir:  # found now, not when the first checkpoint is due
            check_writable(self.checkpoint_dir, "--checkpoint-dir", folder=True)
        object.__setattr__(self, "options", objective.check_options(self.options))
        if self.js_weight is None:
            object.__setattr__(self, "js_weight", objective.default_js_weight)
        if self.task_weight is None:
            object.__setattr__(self, "task_weight", objective.task_weight_for(self.js_weight))
        for name in ("task_weight", "js_weight"):
            if not getattr(self, name) >= 0:
                raise CrossGetError(f"{name} must be >= 0, got {getattr(self, name)!r}", f"e.g. --{name.replace('_', '-')} 0.5")


class Objective:
    """What a fine-tune optimises: the training items and the losses of a batch of them.

    ``dataset`` returns an indexable data set of items (anything ``losses`` understands);
    ``losses`` returns the loss terms named in ``parts`` and their weighted ``"total"``,
    computed over the *global* batch when several processes train (gather what the
    loss couples across samples). ``metric`` is the validation score to maximise.

    Optional, for an objective that needs more than the model's parameters:

    * :attr:`defaults`: other defaults for the loop's settings (its optimizer, lr, epochs,
      batch size, ``--trainable`` group); flags and recipe keys still override them;
    * :attr:`Options` / :meth:`check_options`: settings of its own (``FinetuneConfig.options``,
      ``finetune.options`` in a recipe), validated with one :class:`CrossGetError` naming
      the bad option;
    * :meth:`modules`: trainable modules of its own (e.g. learned prompts), optimised,
      checkpointed and resumed with the model's selected parameters;
    * :meth:`export_files`: files of its own in the exported folder (e.g. the prompts).

    The loop makes one instance per run and calls ``dataset``, then ``modules``, then
    ``losses`` for each batch: an instance may keep what the first two built.
    """

    name: ClassVar[str]
    parts: ClassVar[tuple[str, ...]] = ()
    metric: ClassVar[str] = "r_mean"
    default_js_weight: ClassVar[float] = 0.5
    default_task_weight: ClassVar[float] = 1.0
    #: :data:`LOOP_DEFAULTS` keys this objective trains with by default, e.g.
    #: ``{"optimizer": "sgd", "lr": 2e-3, "trainable": "cross"}``.
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: The objective's options: a dataclass whose fields name them and give their
    #: defaults (plain values: they are stored in checkpoints and recipes) and whose
    #: ``__post_init__`` raises :class:`CrossGetError` on a bad value, naming the option.
    #: ``None``: the objective takes no options.
    Options: ClassVar[type | None] = None

    def task_weight_for(self, js_weight: float) -> float:
        """The task loss's weight when only ``js_weight`` is given."""
        return self.default_task_weight

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.Options)) if self.Options is not None else ()

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` checked (unknown names, then values through :attr:`Options`) and
        completed with the defaults: what ``FinetuneConfig.options`` holds."""
        if not isinstance(options, Mapping):
            raise CrossGetError(
                f"the options of objective {self.name!r} must be a mapping, got {options!r}", "e.g. {'shots': 16}"
            )
        names = self.option_names()
        for key in options:
            if key not in names:
                flag = f"--{str(key).replace('_', '-')}"
                if not names:
                    raise CrossGetError(
                        f"fine-tuning objective {self.name!r} takes no option {key!r}",
                        f"drop {flag} (finetune.options.{key} in a recipe), or choose the --objective it belongs to",
                    )
                raise CrossGetError(
                    f"fine-tuning objective {self.name!r} has no option {key!r}", f"its options: {', '.join(names)}"
                )
        return asdict(self.Options(**options)) if self.Options is not None else {}

    def parsed_options(self, config: FinetuneConfig) -> Any:
        """``config.options`` as an :attr:`Options` instance."""
        return self.Options(**config.options) if self.Options is not None else None

    def dataset(self, io: ModelIO, config: FinetuneConfig) -> Dataset:
        raise NotImplementedError

    def modules(self, io: ModelIO, config: FinetuneConfig, items: Dataset) -> dict[str, nn.Module]:
        """Trainable modules the objective owns besides the model, by name, on ``io.device``
        (built once the training ``items`` are known; ``losses`` uses them). The loop
        optimises their parameters that require grad with the model's selected ones, saves
        their ``state_dict`` in each checkpoint and loads it on resume, keeps the best
        epoch's with validation, and returns them in ``FinetuneResult.modules``."""
        return {}

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def export_files(self, modules: Mapping[str, nn.Module], folder: Path) -> None:
        """Write what an export keeps of the trained ``modules`` into ``folder`` (the
        folder being written; it is renamed into place afterwards)."""

    def validator(self, config: FinetuneConfig) -> Callable[[ModelIO], dict[str, float]] | None:
        """Scores of the model on ``config.val_data`` (including ``metric``), or None: no validation."""
        return None


OBJECTIVES: Registry[type[Objective]] = Registry("fine-tuning objective")


def register_objective(name: str):
    """Class decorator: make an :class:`Objective` available as ``--objective name``."""
    return OBJECTIVES.register(name)


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


def get_objective(name: str) -> Objective:
    return OBJECTIVES.get(name)()


def world_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, in rank order, with gradients flowing back to each rank."""
    if world_info()[1] == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor))
