"""Fine-tuning a patched model with a task loss + L_JS (SPEC §4): the library side
of ``crossget compress --finetune``.

What is optimised is an :class:`Objective` (its training items and its losses),
registered by name: ``clip`` (ITC + L_JS on image-caption pairs) lives here; model
families add theirs with :func:`register_objective`. The loop is shared.

One process or several (``torchrun``: distributed data parallel, gloo on CPU,
NCCL on CUDA) run the same loop. Every rank sees the same seeded global batch
order and takes its slice; features and cross tokens are gathered (with
gradients) so the loss is the loss of the global batch, and a 2-process run
equals a 1-process run of the same global batch. Checkpoints hold everything
needed to continue exactly: model, optimizer, scheduler, gradient scaler, RNG
states and the position in the data.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ..errors import CrossGetError
from .encoders import ModelIO
from .files import check_writable, write_atomic
from .loading import unreadable_reason
from .losses import clip_losses

if TYPE_CHECKING:
    from ..recipes import FinetuneSpec

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"
TRAINABLE = ("all", "cross")
#: Named parameter groups of ``--trainable`` (recipes' ``finetune.trainable``).
TRAINABLE_GROUPS = {
    "cross+projector": "cross_image,cross_text,multi_modal_projector",
    "cross+projector+llm": "cross_image,cross_text,multi_modal_projector,language_model,lm_head",
}
#: The ``trainable`` values a recipe and a FinetuneConfig share (CoOp's ``prompt+cross`` is its own).
SHARED_TRAINABLE = (*TRAINABLE, *TRAINABLE_GROUPS)
AMP = ("none", "fp16", "bf16")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class FinetuneConfig:
    """Attributes mirror the ``crossget compress --finetune`` flags; defaults are
    the paper's (AdamW, lr 1e-5, weight decay 0.05, cosine to 0, ITC/L_JS 0.5/0.5)."""

    data: str
    image_root: str | None = None
    split: str = "train"
    image_column: str = "image"
    caption_column: str = "caption"
    val_data: str | None = None
    val_split: str = "val"
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps
    batch_size: int = 64  # global batch (split over processes)
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 0
    schedule: str = "cosine"
    clip_grad: float | None = None
    trainable: str = "all"  # all, cross, or comma-separated parameter-name substrings
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

    def __post_init__(self):
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
        objective = get_objective(self.objective)
        if self.js_weight is None:
            object.__setattr__(self, "js_weight", objective.default_js_weight)
        if self.task_weight is None:
            object.__setattr__(self, "task_weight", objective.task_weight_for(self.js_weight))
        for name in ("task_weight", "js_weight"):
            if not getattr(self, name) >= 0:
                raise CrossGetError(f"{name} must be >= 0, got {getattr(self, name)!r}", f"e.g. --{name.replace('_', '-')} 0.5")


def recipe_settings(spec: FinetuneSpec | None) -> dict[str, Any]:
    """The FinetuneConfig fields a recipe's ``finetune`` section sets (flags override
    them). Its ``amp`` follows the flag's rule: refused off CUDA, never dropped."""
    if spec is None:
        return {}
    settings = dict(
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        schedule=spec.schedule,
        js_weight=spec.js_weight,
    )
    if spec.max_steps is not None:
        settings["max_steps"] = spec.max_steps
    if spec.trainable in SHARED_TRAINABLE:
        settings["trainable"] = spec.trainable
    if spec.amp in AMP:
        settings["amp"] = spec.amp
    return settings


def recipe_spec(base: FinetuneSpec, config: FinetuneConfig) -> FinetuneSpec:
    """The recipe's ``finetune`` section that records ``config`` (the reverse of :func:`recipe_settings`)."""
    return replace(
        base,
        objective=config.objective,
        js_weight=config.js_weight,
        lr=config.lr,
        weight_decay=config.weight_decay,
        epochs=config.epochs,
        max_steps=config.max_steps,
        batch_size=config.batch_size,
        schedule=config.schedule,
        trainable=config.trainable if config.trainable in SHARED_TRAINABLE else base.trainable,
        amp=config.amp,
        dataset=config.data,
    )


class Objective:
    """What a fine-tune optimises: the training items and the losses of a batch of them.

    ``dataset`` returns an indexable data set of items (anything ``losses`` understands);
    ``losses`` returns the loss terms named in ``parts`` and their weighted ``"total"``,
    computed over the *global* batch when several processes train (gather what the
    loss couples across samples). ``metric`` is the validation score to maximise.
    """

    name: ClassVar[str]
    parts: ClassVar[tuple[str, ...]] = ()
    metric: ClassVar[str] = "r_mean"
    default_js_weight: ClassVar[float] = 0.5
    default_task_weight: ClassVar[float] = 1.0

    def task_weight_for(self, js_weight: float) -> float:
        """The task loss's weight when only ``js_weight`` is given."""
        return self.default_task_weight

    def dataset(self, io: ModelIO, config: FinetuneConfig) -> Dataset:
        raise NotImplementedError

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def validator(self, config: FinetuneConfig) -> Callable[[ModelIO], dict[str, float]] | None:
        """Scores of the model on ``config.val_data`` (including ``metric``), or None: no validation."""
        return None


_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Class decorator: make an :class:`Objective` available as ``--objective name``."""

    def decorate(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        _OBJECTIVES[name] = cls
        return cls

    return decorate


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> Objective:
    if name not in _OBJECTIVES:
        raise CrossGetError(f"unknown fine-tuning objective {name!r}", f"choose one of: {', '.join(list_objectives())}")
    return _OBJECTIVES[name]()


@dataclass
class FinetuneResult:
    steps: int
    final_loss: float | None
    history: list[dict]
    best: dict | None  # {"epoch", "metric", "value"} when validation ran
    config: FinetuneConfig
    validation: list[dict] = field(default_factory=list)  # per epoch: {"epoch", "step", "scores"}

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "final_loss": self.final_loss,
            "best": self.best,
            "validation": self.validation,
            "config": asdict(self.config),
        }


class _Pairs(Dataset):
    """Every (image, caption) pair of a retrieval data set; item ``i`` is caption ``i``."""

    def __init__(self, data, transform):
        self.images = data.image_dataset(transform)
        self.captions = data.captions
        self.owner = data.caption_to_image

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int):
        image_index = self.owner[index]
        return self.images[image_index][1], self.captions[index], image_index


def select_trainable(model: nn.Module, trainable: str) -> list[str]:
    """Freeze everything but the chosen parameters; return their names."""
    names = [n for n, _ in model.named_parameters()]
    if trainable == "all":
        chosen = names
    elif trainable == "cross":
        chosen = [n for n in names if n.endswith(("cross_image", "cross_text"))]
    else:
        patterns = [p.strip() for p in TRAINABLE_GROUPS.get(trainable, trainable).split(",") if p.strip()]
        chosen = [n for n in names if any(p in n for p in patterns)]
    if not chosen:
        raise CrossGetError(f"--trainable {trainable!r} selects no parameter", "use all, cross, or substrings of parameter names")
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    return chosen


def _lr_lambda(config: FinetuneConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


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


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, in rank order, with gradients flowing back to each rank."""
    if world_info()[1] == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor))


def _retrieval_data(config: FinetuneConfig, source: str, split: str, limit: int | None = None):
    from .data import load_retrieval

    return load_retrieval(
        source,
        image_root=config.image_root,
        split=split,
        image_column=config.image_column,
        caption_column=config.caption_column,
        limit=limit,
    )


@register_objective("clip")
class ClipObjective(Objective):
    """ITC with soft targets + L_JS on image-caption pairs (SPEC §4), 0.5 / 0.5 by default."""

    parts = ("itc", "js")
    default_task_weight = 0.5

    def task_weight_for(self, js_weight: float) -> float:
        return 1.0 - js_weight if js_weight <= 1 else 1.0

    def dataset(self, io: ModelIO, config: FinetuneConfig) -> Dataset:
        return _Pairs(_retrieval_data(config, config.data, config.split, config.limit), io.transform)

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        from ..adapters import find_adapter
        from ..core import contrastive_loss, js_loss

        images = torch.stack([it[0] for it in items]).to(io.device)
        texts = io.tokenize([it[1] for it in items]).to(io.device)
        image_ids = torch.tensor([it[2] for it in items], device=io.device)
        local = clip_losses(model, images, texts, image_ids, config.task_weight, config.js_weight)
        if world_info()[1] == 1:
            return local
        adapter = find_adapter(model)
        itc = contrastive_loss(
            _gather(local["image_features"]), _gather(local["text_features"]), adapter.logit_scale(model), _gather(image_ids)
        )
        if "image_cross" not in local:  # no cross tokens: ITC alone
            return {"itc": itc, "js": local["js"], "total": itc}
        # Cross rows are layer-major per rank; gathering keeps image and text rows aligned.
        js = js_loss(_gather(local["image_cross"]), _gather(local["text_cross"]))
        return {"itc": itc, "js": js, "total": config.task_weight * itc + config.js_weight * js}

    def validator(self, config: FinetuneConfig) -> Callable[[ModelIO], dict[str, float]]:
        from torch.utils.data import DataLoader

        from .retrieval import retrieval_recall

        val = _retrieval_data(config, config.val_data, config.val_split)

        def evaluate(io: ModelIO) -> dict[str, float]:
            batches = (images for _, images in DataLoader(val.image_dataset(io.transform), batch_size=64))
            return retrieval_recall(io.encode_images(batches), io.encode_texts(val.captions, 64), val.caption_to_image)

        return evaluate


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average gradients over ranks. Each rank back-propagated the *global* loss
    through gathered features, so the average is exactly the gradient of the
    global batch (DDP's bucketing is not needed for models this loop trains)."""
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad /= world


def _truncate_log(log: Path, step: int, validated: list[dict]) -> None:
    """Drop the log records written after the checkpoint being resumed (they are
    about to be run again): later steps, and a validation of the checkpoint's
    step that the checkpoint does not hold (it will be scored again)."""
    if not log.is_file():
        return
    done = {(v["epoch"], v["step"]) for v in validated}

    def keep(record: dict) -> bool:
        if "validation" in record:
            return (record["epoch"], record["step"]) in done
        return record.get("step", 0) <= step

    kept = [line for line in log.read_text().splitlines() if line.strip() and keep(json.loads(line))]
    write_atomic(log, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


#: FinetuneConfig fields a resumed run may change: where and how often it saves
#: and logs, where it runs, and when it stops.
RESUMABLE_CHANGES = frozenset({"resume", "checkpoint_dir", "checkpoint_every", "log_every", "num_workers", "device", "max_steps"})


def load_checkpoint(path: Path) -> dict:
    """Read a fine-tuning checkpoint with ``weights_only=True``: tensors and plain
    containers only, so a crafted file cannot run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError (foreign objects), EOFError/RuntimeError (truncated)
        reason = unreadable_reason(error)
        raise CrossGetError(
            f"cannot resume from {path}: not a crossget checkpoint or damaged ({reason})",
            "start without --resume, or point --checkpoint-dir at the interrupted run's folder",
        ) from error


def _check_resumable(saved: dict, config: FinetuneConfig, settings: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint written with other training or reduction settings."""
    now = {**asdict(config), **settings}
    before = {**saved.get("config", {}), **saved.get("settings", {})}
    for key in sorted(set(now) | set(before)):
        if key in RESUMABLE_CHANGES or now.get(key) == before.get(key):
            continue
        raise CrossGetError(
            f"{path} was written with {key}={before.get(key)!r}, this run has {key}={now.get(key)!r}",
            "resume with the interrupted run's settings, or start a new run without --resume",
        )


def finetune(
    io: ModelIO,
    config: FinetuneConfig,
    progress: Callable[[dict], None] | None = None,
    evaluate: Callable[[ModelIO], dict[str, float]] | None = None,
    settings: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Train ``io.model`` (already patched) in place on ``config.data`` with ``config.objective``.

    ``progress`` receives each logged record; ``evaluate`` (given when there is
    validation data) scores the model after each epoch, and the weights of the best
    epoch (by the objective's ``metric``) are restored at the end. ``settings``
    (plain values, e.g. the reduction) are stored in the checkpoint and must match
    on ``resume``, like ``config``.
    """
    settings = dict(settings or {})
    model = io.model
    objective = get_objective(config.objective)
    rank, world = world_info()
    if config.batch_size % (world * config.grad_accum):
        raise CrossGetError(
            f"batch size {config.batch_size} does not split into {world} process(es) x {config.grad_accum} accumulation steps",
            "choose a batch size divisible by both",
        )
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    items = objective.dataset(io, config)
    steps_per_epoch = len(items) // config.batch_size
    if steps_per_epoch == 0:
        raise CrossGetError(f"{len(items)} training items are fewer than one batch of {config.batch_size}", "lower --batch-size")
    total_steps = min(config.max_steps or 10**12, steps_per_epoch * config.epochs)

    select_trainable(model, config.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.amp)

    step, epoch, position, history, best, best_state, validation = 0, 0, 0, [], None, None, []
    checkpoint = Path(config.checkpoint_dir) / CHECKPOINT_FILE if config.checkpoint_dir else None
    if config.resume:
        if not checkpoint.is_file():
            raise CrossGetError(f"no checkpoint to resume from in {config.checkpoint_dir}", "start without --resume")
        saved = load_checkpoint(checkpoint)
        _check_resumable(saved, config, settings, checkpoint)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        step, epoch, position, best = saved["step"], saved["epoch"], saved["position"], saved["best"]
        history, best_state = list(saved.get("history", [])), saved.get("best_state")
        validation = list(saved.get("validation", []))
    if checkpoint is not None and rank == 0:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    log = checkpoint.parent / LOG_FILE if checkpoint is not None else None
    if config.resume and log is not None and rank == 0:
        _truncate_log(log, step, validation)

    def save_checkpoint():
        if checkpoint is None or rank != 0:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
            "step": step,
            "epoch": epoch,
            "position": position,
            "best": best,
            "best_state": best_state,  # the export after an interruption must be the best epoch's
            "history": history,
            "validation": validation,
            "config": asdict(config),
            "settings": settings,
        }
        write_atomic(checkpoint, lambda tmp: torch.save(state, tmp))

    model.train()
    local = config.batch_size // world
    micro = local // config.grad_accum
    last_loss = None
    while step < total_steps and epoch < config.epochs:
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        while position < steps_per_epoch and step < total_steps:
            started = time.perf_counter()
            batch = order[position * config.batch_size : (position + 1) * config.batch_size]
            mine = batch[rank * local : (rank + 1) * local]
            optimizer.zero_grad(set_to_none=True)
            parts = dict.fromkeys(("total", *objective.parts), 0.0)
            for start in range(0, local, micro):
                chunk = [items[int(i)] for i in mine[start : start + micro]]
                with torch.autocast(io.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    losses = objective.losses(model, io, chunk, config)
                scaler.scale(losses["total"] / config.grad_accum).backward()
                for key in parts:
                    parts[key] += losses[key].item() / config.grad_accum
            if world > 1:
                _average_gradients(params, world)
            if config.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step, position = step + 1, position + 1
            last_loss = parts["total"]
            record = {
                "step": step,
                "epoch": epoch,
                "loss": parts["total"],
                **{name: parts[name] for name in objective.parts},
                "lr": scheduler.get_last_lr()[0],
                "items_per_s": config.batch_size / (time.perf_counter() - started),
            }
            history.append(record)
            if rank == 0 and step % config.log_every == 0:
                if log is not None:
                    with open(log, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                if progress is not None:
                    progress(record)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save_checkpoint()
        if position >= steps_per_epoch:
            if evaluate is not None and rank == 0:
                model.eval()
                scores = evaluate(io)
                model.train()
                metric = objective.metric
                validation.append({"epoch": epoch, "step": step, "metric": metric, "scores": scores})
                if log is not None:
                    with open(log, "a") as handle:
                        handle.write(json.dumps({"step": step, "epoch": epoch, "validation": scores}) + "\n")
                if best is None or scores[metric] > best["value"]:
                    best = {"epoch": epoch, "metric": metric, "value": scores[metric], "scores": scores}
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            epoch, position = epoch + 1, 0
            save_checkpoint()
    if position:  # stopped inside an epoch (--max-steps): a later --resume goes on from here
        save_checkpoint()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    return FinetuneResult(step, last_loss, history, best, config, validation)


# Objectives of the other model families register themselves on import.
from . import blip_finetune, llava_finetune  # noqa: E402,F401  ("blip-*", "llava")
