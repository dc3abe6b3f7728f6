"""Fine-tuning a patched model with a task loss + L_JS (SPEC §4): the library side
of ``crossget compress --finetune``.

What is optimised is an :class:`~crossget_cli.adapters.training.Objective` (its
training items and its losses, and any modules of its own), registered by name:
``clip`` (ITC + L_JS on image-caption pairs) is in :mod:`crossget_cli.adapters.contrastive`,
``coop`` (prompt learning) in :mod:`crossget_cli.adapters.coop`; model families
register theirs in their own folders. The loop is shared: AdamW or SGD, linear
warm-up then cosine (or constant), AMP, checkpoints, DDP.

One process or several (``torchrun``: distributed data parallel, gloo on CPU,
NCCL on CUDA) run the same loop. Every rank sees the same seeded global batch
order and takes its slice; features and cross tokens are gathered (with
gradients) so the loss is the loss of the global batch, and a 2-process run
equals a 1-process run of the same global batch. Checkpoints hold everything
needed to continue exactly: model, the objective's modules, optimizer, scheduler,
gradient scaler, RNG states and the position in the data.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.training import AMP, TRAINABLE, FinetuneConfig, get_objective, world_info
from crossget_cli.errors import CrossGetError
from crossget_cli.files import write_atomic
from crossget_cli.loading.formats import unreadable_reason

if TYPE_CHECKING:
    from crossget_cli.recipes import FinetuneSpec, Recipe

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"


def recipe_settings(spec: FinetuneSpec | None, objective: str | None = None) -> dict[str, Any]:
    """The FinetuneConfig fields a recipe's ``finetune`` section sets (flags override
    them). Its ``amp`` follows the flag's rule: refused off CUDA, never dropped. Its
    ``options`` belong to its objective: they are left out when the run's ``objective``
    (a flag's) is another one."""
    if spec is None:
        return {}
    settings = dict(
        objective=spec.objective,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        schedule=spec.schedule,
        js_weight=spec.js_weight,
    )
    if spec.max_steps is not None:
        settings["max_steps"] = spec.max_steps
    if spec.trainable is not None:
        settings["trainable"] = spec.trainable
    if spec.amp in AMP:
        settings["amp"] = spec.amp
    if spec.options and objective in (None, spec.objective):
        settings["options"] = dict(spec.options)
    return settings


def finetune_config(recipe: Recipe | None = None, **flags: Any) -> FinetuneConfig:
    """A FinetuneConfig from flags over the recipe's ``finetune`` section over the
    objective's defaults over the loop's. ``flags`` are FinetuneConfig fields (``None``:
    not given); ``options`` given as flags are merged into the recipe's (the ones of
    its objective)."""
    spec = recipe.finetune if recipe is not None else None
    objective = flags.get("objective") or (spec.objective if spec is not None else "clip")
    from_recipe = recipe_settings(spec, objective)
    options = {**from_recipe.pop("options", {}), **(flags.get("options") or {})}
    given = {k: v for k, v in flags.items() if v is not None and k != "options"}
    return FinetuneConfig(**{**from_recipe, **given, "objective": objective, "options": options})


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
        trainable=config.trainable,
        amp=config.amp,
        options=dict(config.options),
        dataset=config.data,
    )


@dataclass
class FinetuneResult:
    steps: int
    final_loss: float | None
    history: list[dict]
    best: dict | None  # {"epoch", "metric", "value"} when validation ran
    config: FinetuneConfig
    validation: list[dict] = field(default_factory=list)  # per epoch: {"epoch", "step", "scores"}
    modules: dict[str, nn.Module] = field(default_factory=dict)  # the objective's trained modules (Objective.modules)

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "final_loss": self.final_loss,
            "best": self.best,
            "validation": self.validation,
            "config": asdict(self.config),
        }


def select_trainable(model: nn.Module, trainable: str) -> list[str]:
    """Freeze everything but the chosen parameters; return their names."""
    names = [n for n, _ in model.named_parameters()]
    groups = find_adapter(model).trainable_groups
    if trainable == "all":
        chosen = names
    elif trainable == "cross":
        chosen = [n for n in names if n.endswith(("cross_image", "cross_text"))]
    else:
        patterns = groups.get(trainable) or [p.strip() for p in trainable.split(",") if p.strip()]
        chosen = [n for n in names if any(p in n for p in patterns)]
    if not chosen:
        named = ", ".join([*TRAINABLE, *groups])
        raise CrossGetError(
            f"--trainable {trainable!r} selects no parameter", f"use {named}, or comma-separated substrings of parameter names"
        )
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


def build_optimizer(config: FinetuneConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``params``: weight decay on the parameters of 2 or more
    dimensions only (none on biases and norms); SGD with ``config.momentum``."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


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
    if torch.device(config.device).type != io.device.type:
        raise CrossGetError(
            f"the model is on {io.device} but the fine-tuning config asks for {config.device}",
            f"load the model with model_io(..., device={config.device!r}), or pass --device {io.device.type}",
        )
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
    modules = objective.modules(io, config, items)

    select_trainable(model, config.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    params += [p for module in modules.values() for p in module.parameters() if p.requires_grad]
    optimizer = build_optimizer(config, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.amp)

    step, epoch, position, history, best, best_state, validation = 0, 0, 0, [], None, None, []
    best_modules = None
    checkpoint = Path(config.checkpoint_dir) / CHECKPOINT_FILE if config.checkpoint_dir else None
    if config.resume:
        if not checkpoint.is_file():
            raise CrossGetError(f"no checkpoint to resume from in {config.checkpoint_dir}", "start without --resume")
        saved = load_checkpoint(checkpoint)
        _check_resumable(saved, config, settings, checkpoint)
        model.load_state_dict(saved["model"])
        _load_modules(modules, saved.get("modules", {}), checkpoint)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        step, epoch, position, best = saved["step"], saved["epoch"], saved["position"], saved["best"]
        history, best_state, best_modules = list(saved.get("history", [])), saved.get("best_state"), saved.get("best_modules")
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
            "modules": {name: module.state_dict() for name, module in modules.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
            "step": step,
            "epoch": epoch,
            "position": position,
            "best": best,
            "best_state": best_state,  # the export after an interruption must be the best epoch's
            "best_modules": best_modules,
            "history": history,
            "validation": validation,
            "config": asdict(config),
            "settings": settings,
        }
        write_atomic(checkpoint, lambda tmp: torch.save(state, tmp))

    _set_mode(model, modules, training=True)
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
                _set_mode(model, modules, training=False)
                scores = evaluate(io)
                _set_mode(model, modules, training=True)
                metric = objective.metric
                validation.append({"epoch": epoch, "step": step, "metric": metric, "scores": scores})
                if log is not None:
                    with open(log, "a") as handle:
                        handle.write(json.dumps({"step": step, "epoch": epoch, "validation": scores}) + "\n")
                if best is None or scores[metric] > best["value"]:
                    best = {"epoch": epoch, "metric": metric, "value": scores[metric], "scores": scores}
                    best_state = _copy_state(model)
                    best_modules = {name: _copy_state(module) for name, module in modules.items()}
            epoch, position = epoch + 1, 0
            save_checkpoint()
    if position:  # stopped inside an epoch (--max-steps): a later --resume goes on from here
        save_checkpoint()
    if best_state is not None:
        model.load_state_dict(best_state)
        _load_modules(modules, best_modules or {}, checkpoint)
    _set_mode(model, modules, training=False)
    for param in model.parameters():
        param.requires_grad_(True)
    return FinetuneResult(step, last_loss, history, best, config, validation, modules)


def _copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _set_mode(model: nn.Module, modules: dict[str, nn.Module], training: bool) -> None:
    for module in (model, *modules.values()):
        module.train(training)


def _load_modules(modules: dict[str, nn.Module], states: dict[str, dict], path: Path | None) -> None:
    """Load the objective's modules from a checkpoint's ``states``; each must be there."""
    for name, module in modules.items():
        if name not in states:
            raise CrossGetError(
                f"{path} holds no state for the objective's module {name!r}",
                "start without --resume (the checkpoint is of another run)",
            )
        module.load_state_dict(states[name])
