"""CoOp prompt learning with CrossGET (SPEC §4, last paragraph).

CoOp (Zhou et al. 2022, "Learning to Prompt for Vision-Language Models") learns
``n_ctx`` context vectors shared by all classes (its *unified* context) in front of
each class name: the prompt of class ``c`` is ``[SOT] [ctx_1 .. ctx_n] [name_c] [.]
[EOT]``, and the text tower encodes these embeddings instead of looked-up tokens.
The CrossGET variant trains the context together with the model's cross tokens on

    L = (CE + js_weight * L_JS) / 2        (js_weight = 10)

where CE classifies the few-shot images against the features of every class prompt,
and L_JS pairs each image's cross tokens with the cross tokens of its ground-truth
class prompt, ``(L, C, E)[:, label]``. Everything else stays frozen.

* :class:`PromptLearner`: the learnable context and the tokenized class prompts;
* :func:`coop_losses`: the loss of one batch;
* :class:`CoopConfig` / :func:`train_coop`: few-shot sampling and the SGD + cosine loop;
* :func:`coop_classifier` / :func:`evaluate_coop`: class features and top-1/top-5;
* :func:`save_prompts` / :func:`load_prompts`: ``coop_prompts.safetensors`` + ``.json``.

Not reproduced from CoOp: its training augmentation (random resized crop and flip;
the model's own evaluation transform is used) and its constant-lr warm-up epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.patching import is_patched
from crossget_cli.core import collect_cross_tokens, js_loss
from crossget_cli.core.losses import MAX_LOGIT_SCALE
from crossget_cli.errors import CrossGetError
from crossget_cli.data.classification import ClassificationData
from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.files import write_atomic

PROMPTS_FILE = "coop_prompts.safetensors"
PROMPTS_META = "coop_prompts.json"
PROMPTS_FORMAT = "crossget-coop-prompts"
PLACEHOLDER = "X"
CROSS_SUFFIXES = ("cross_image", "cross_text")

# Where the token-embedding table lives: open_clip CLIP, open_clip CustomTextCLIP,
# transformers CLIPModel / CLIPTextModel(WithProjection), a bare CLIPTextTransformer.
_EMBEDDING_PATHS = (
    "token_embedding",
    "text.token_embedding",
    "text_model.embeddings.token_embedding",
    "embeddings.token_embedding",
)


def token_embedding(model: nn.Module) -> nn.Embedding:
    """The text tower's token-embedding table of ``model``."""
    for path in _EMBEDDING_PATHS:
        module: object = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.Embedding):
            return module
    raise CrossGetError(
        f"cannot find the token embedding of {type(model).__name__}",
        "CoOp needs a CLIP text tower: an open_clip CLIP/CustomTextCLIP with CLIP's tokenizer, "
        "or a transformers CLIPModel/CLIPTextModel",
    )


def _eot_positions(ids: torch.Tensor) -> torch.Tensor:
    """Position of EOT in each row: the first occurrence of the highest id (CLIP's
    EOT is the last id of its vocabulary; HF pads with it, and pooling takes the first)."""
    return ids.argmax(dim=-1)


class PromptLearner(nn.Module):
    """CoOp's unified context: ``ctx`` ``[n_ctx, D]`` learnable, shared by all classes.

    The prompt of each class is ``"<prefix> <classname>."`` tokenized with the model's
    own tokenizer (``io.tokenize``), the prefix being ``n_ctx`` placeholders ``"X X .. X"``
    (or the init phrase); the placeholder positions ``1 .. n_ctx`` get ``ctx``.

    Args:
        io: the model and its tokenizer.
        classnames: one name per class (``_`` read as a space, as CoOp does).
        n_ctx: number of context vectors (ignored when ``init`` is given: CoOp then
            uses as many as the phrase has tokens).
        init: a phrase like ``"a photo of a"`` whose token embeddings initialise
            ``ctx``; ``None``: normal with std 0.02 (seeded by ``seed``).
        seed: seed of the random initialisation.

    ``forward()`` returns ``(token_embeddings [C, T, D], token_ids [C, T])``; the ids
    keep the placeholder tokens and locate EOT for pooling.
    """

    def __init__(self, io: ModelIO, classnames: Sequence[str], n_ctx: int = 16, init: str | None = None, seed: int = 0):
        super().__init__()
        classnames = list(classnames)
        if not classnames:
            raise CrossGetError("CoOp needs at least one class name", "pass the class names of the data set")
        if not all(isinstance(name, str) and name.strip() for name in classnames):
            raise CrossGetError("class names must be non-empty strings", "check the class names of the data set")
        if init is not None and not (isinstance(init, str) and init.strip()):
            raise CrossGetError("the context init phrase is empty", "pass a phrase like 'a photo of a', or none")
        embedding = token_embedding(io.model)
        device = embedding.weight.device
        context = io.tokenize([""]).shape[1]

        if init is not None:
            prefix = " ".join(init.replace("_", " ").split())
            n_ctx = self._count_tokens(io, prefix)
        elif isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise CrossGetError(f"n_ctx must be a positive integer, got {n_ctx!r}", "e.g. --n-ctx 16")
        else:
            prefix = " ".join([PLACEHOLDER] * n_ctx)
        if n_ctx + 3 > context:
            raise CrossGetError(
                f"{n_ctx} context tokens leave no room for class names in a {context}-token prompt",
                f"use n_ctx <= {context - 3} (or a shorter init phrase)",
            )
        if init is None and self._count_tokens(io, prefix) != n_ctx:
            raise CrossGetError(f"the tokenizer does not read {PLACEHOLDER!r} as one token", "use a model with CLIP's tokenizer")
        prefix_ids = io.tokenize([prefix])[0, 1 : 1 + n_ctx].to(device)
        period = io.tokenize(["."])[0, 1].item()

        self.classnames = classnames
        self.n_ctx = n_ctx
        self.init = init
        self.template = prefix + " {}."
        prompts = [self.template.format(" ".join(name.replace("_", " ").split())) for name in classnames]
        ids = io.tokenize(prompts).to(device)
        if not torch.equal(ids[:, 1 : 1 + n_ctx], prefix_ids.expand(len(prompts), -1)):
            raise CrossGetError("the context tokens do not start every prompt", "use a model with CLIP's tokenizer")
        eot = _eot_positions(ids)
        truncated = (eot == ids.shape[1] - 1) & (ids[:, -2] != period)
        if truncated.any():
            name = classnames[int(truncated.nonzero()[0])]
            raise CrossGetError(
                f"the prompt of class {name!r} does not fit in {ids.shape[1]} tokens with {n_ctx} context tokens",
                "use a smaller n_ctx or shorter class names",
            )

        with torch.no_grad():
            embedded = embedding(ids)
            if init is not None:
                start = embedded[0, 1 : 1 + n_ctx].float().clone()
            else:
                generator = torch.Generator().manual_seed(seed)
                start = torch.randn(n_ctx, embedding.embedding_dim, generator=generator) * 0.02
        self.ctx = nn.Parameter(start.to(device))
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx :].clone(), persistent=False)

    @staticmethod
    def _count_tokens(io: ModelIO, text: str) -> int:
        """Tokens of ``text`` between SOT and EOT (at most context - 2: truncated
        phrases are then rejected by the room check)."""
        return int(_eot_positions(io.tokenize([text]))[0]) - 1

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.token_prefix
        ctx = self.ctx.to(prefix.dtype).unsqueeze(0).expand(prefix.shape[0], -1, -1)
        return torch.cat([prefix, ctx, self.token_suffix], dim=1), self.token_ids


# --------------------------------------------------------------------------- loss


def _check_model(io: ModelIO) -> None:
    if not is_patched(io.model):
        raise CrossGetError("CoOp with CrossGET needs a model patched with CrossGET", "call crossget_cli.patch(model, ...) first")


def coop_losses(
    io: ModelIO,
    learner: PromptLearner,
    images: torch.Tensor,
    labels: torch.Tensor,
    js_weight: float = 10.0,
) -> dict[str, torch.Tensor]:
    """``{"ce", "js", "total", "logits"}`` of one batch (run the model in training mode).

    ``logits = exp(logit_scale) * norm(image) @ norm(class prompts)^T`` over all
    classes (the scale clamped in place to [0, ln 100]); ``ce`` their cross-entropy
    with ``labels``; ``js`` L_JS between the image cross tokens ``[L*N, E]`` and the
    cross tokens of each image's ground-truth class prompt, ``(L, C, E)[:, labels]``
    (layer-major); ``total = (ce + js_weight * js) / 2``.
    """
    _check_model(io)
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
    ce = F.cross_entropy(logits, labels)
    # Rows of the ground-truth class prompt, layer-major like the image rows.
    text_cross = text_cross.view(layers_t, c, -1)[:, labels].reshape(layers_t * n, -1)
    js = js_loss(image_cross.float(), text_cross.float())
    return {"ce": ce, "js": js, "total": (ce + js_weight * js) / 2, "logits": logits}


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class CoopConfig:
    """CoOp's defaults (ViT-B/16, 16 shots): SGD lr 0.002, momentum 0.9, weight decay
    5e-4, cosine to 0, batch 32, 200 epochs (CoOp uses 50 on ImageNet); L_JS weight 10.

    ``shots``: training images per class (a seeded subset; ``None``: all);
    ``n_ctx``/``init``: see :class:`PromptLearner`; ``max_steps`` stops early.
    """

    shots: int | None = 16
    n_ctx: int = 16
    init: str | None = None
    epochs: int = 200
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    js_weight: float = 10.0
    seed: int = 0
    device: str = "cpu"
    max_steps: int | None = None

    def __post_init__(self):
        def positive(name, value, optional=False):
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CrossGetError(f"{name} must be a positive integer, got {value!r}", f"e.g. --{name.replace('_', '-')} 16")

        positive("shots", self.shots, optional=True)
        positive("n_ctx", self.n_ctx)
        positive("epochs", self.epochs)
        positive("batch_size", self.batch_size)
        positive("max_steps", self.max_steps, optional=True)
        if self.init is not None and not (isinstance(self.init, str) and self.init.strip()):
            raise CrossGetError("init must be a non-empty phrase or unset", "e.g. --init 'a photo of a'")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise CrossGetError(f"lr must be > 0, got {self.lr!r}", "e.g. --lr 0.002")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise CrossGetError(f"momentum must be in [0, 1), got {self.momentum!r}", "e.g. --momentum 0.9")
        for name in ("weight_decay", "js_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
                raise CrossGetError(f"{name} must be >= 0, got {value!r}", f"e.g. --{name.replace('_', '-')} 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise CrossGetError(f"seed must be an integer, got {self.seed!r}", "e.g. --seed 0")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise CrossGetError(f"unknown device {self.device!r}", "e.g. --device cpu or cuda") from None


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


def _cosine(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))


def train_coop(
    io: ModelIO,
    data: ClassificationData,
    config: CoopConfig,
    progress: Callable[[dict], None] | None = None,
) -> tuple[PromptLearner, list[dict]]:
    """Learn CoOp prompts (and the model's cross tokens, in place) on a few-shot
    subset of ``data``. Only ``learner.ctx`` and the parameters named ``cross_image``
    / ``cross_text`` train; the model's ``requires_grad`` flags are restored and it
    is left in eval mode. Returns the learner and one record per step
    (``step``, ``epoch``, ``loss``, ``ce``, ``js``, ``lr``, ``items_per_s``)."""
    _check_model(io)
    model = io.model
    if torch.device(config.device).type != io.device.type:
        raise CrossGetError(
            f"the model is on {io.device} but the CoOp config asks for {config.device}",
            f"load the model with model_io(..., device={config.device!r})",
        )
    if len(data) == 0:
        raise CrossGetError("the training data holds no images", "pass a data set with images")
    torch.manual_seed(config.seed)
    subset = few_shot_indices(data.labels, len(data.classnames), config.shots, config.seed)
    learner = PromptLearner(io, data.classnames, config.n_ctx, config.init, config.seed)
    images = data.image_dataset(io.transform)
    labels = torch.as_tensor(data.labels)

    steps_per_epoch = max(1, len(subset) // config.batch_size)
    total_steps = min(config.max_steps or 10**12, steps_per_epoch * config.epochs)

    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    cross = [p for name, p in model.named_parameters() if name.endswith(CROSS_SUFFIXES)]
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith(CROSS_SUFFIXES))
    learner.ctx.requires_grad_(True)
    params = [learner.ctx, *cross]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total_steps))

    history: list[dict] = []
    model.train()
    learner.train()
    try:
        step, epoch = 0, 0
        while step < total_steps:
            order = torch.randperm(len(subset), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
            for position in range(steps_per_epoch):
                if step >= total_steps:
                    break
                started = time.perf_counter()
                batch = [subset[int(i)] for i in order[position * config.batch_size : (position + 1) * config.batch_size]]
                pixels = torch.stack([images[i][1] for i in batch])
                losses = coop_losses(io, learner, pixels, labels[batch], config.js_weight)
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                optimizer.step()
                scheduler.step()
                step += 1
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": losses["total"].item(),
                    "ce": losses["ce"].item(),
                    "js": losses["js"].item(),
                    "lr": scheduler.get_last_lr()[0],
                    "items_per_s": len(batch) / (time.perf_counter() - started),
                }
                history.append(record)
                if progress is not None:
                    progress(record)
            epoch += 1
    finally:
        model.eval()
        learner.eval()
        for name, param in model.named_parameters():
            param.requires_grad_(flags.get(name, True))
    return learner, history


# --------------------------------------------------------------------------- evaluation


def coop_classifier(io: ModelIO, learner: PromptLearner, batch_size: int = 256) -> torch.Tensor:
    """``[C, E]`` L2-normalised class features of the learned prompts (eval mode,
    no gradients), float32 on the CPU."""
    _check_model(io)
    model = io.model
    adapter = find_adapter(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            embeddings, ids = learner()
            out = [
                adapter.encode_text(model, ids[s : s + batch_size], token_embeddings=embeddings[s : s + batch_size]).float()
                for s in range(0, ids.shape[0], batch_size)
            ]
    finally:
        model.train(was_training)
    return F.normalize(torch.cat(out), dim=-1).cpu()


def evaluate_coop(
    io: ModelIO, learner: PromptLearner, data: ClassificationData, batch_size: int = 64, num_workers: int = 0
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of the learned prompts on ``data``."""
    from torch.utils.data import DataLoader

    from crossget_cli.evaluation.zeroshot import topk_accuracy

    if list(data.classnames) != learner.classnames:
        raise CrossGetError(
            "the data's classes differ from the classes the prompts were learned for",
            "evaluate on data with the same class names, in the same order",
        )
    classes = coop_classifier(io, learner)
    loader = DataLoader(data.image_dataset(io.transform), batch_size=batch_size, num_workers=num_workers)
    was_training = io.model.training
    io.model.eval()
    try:
        images = io.encode_images(batch for _, batch in loader)
    finally:
        io.model.train(was_training)
    return topk_accuracy(images @ classes.t(), torch.as_tensor(data.labels))


# --------------------------------------------------------------------------- files


def save_prompts(learner: PromptLearner, folder: str | os.PathLike) -> Path:
    """Write ``coop_prompts.safetensors`` (``ctx``) and ``coop_prompts.json`` (class
    names, ``n_ctx``, init phrase, prompt template) into ``folder``, each atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ctx = learner.ctx.detach().float().cpu().contiguous()
    meta = {
        "format": PROMPTS_FORMAT,
        "version": 1,
        "classnames": learner.classnames,
        "n_ctx": learner.n_ctx,
        "init": learner.init,
        "template": learner.template,
        "width": int(ctx.shape[1]),
    }
    write_atomic(folder / PROMPTS_FILE, lambda p: save_file({"ctx": ctx}, str(p), metadata={"format": PROMPTS_FORMAT}))
    write_atomic(folder / PROMPTS_META, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"))
    return folder


def load_prompts(io: ModelIO, folder: str | os.PathLike) -> PromptLearner:
    """Rebuild the :class:`PromptLearner` saved by :func:`save_prompts` for ``io``'s model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, meta_path = folder / PROMPTS_FILE, folder / PROMPTS_META
    for path in (weights, meta_path):
        if not path.is_file():
            raise CrossGetError(f"{path} not found", "pass the folder save_prompts wrote (coop_prompts.*)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CrossGetError(f"{meta_path} is not valid JSON: {err}", "save the prompts again") from None
    if not isinstance(meta, dict) or meta.get("format") != PROMPTS_FORMAT:
        raise CrossGetError(f"{meta_path} is not a CoOp prompt file", "pass the folder save_prompts wrote")
    try:
        ctx = load_file(str(weights))["ctx"]
    except (SafetensorError, KeyError, OSError) as err:
        raise CrossGetError(f"cannot read the context vectors in {weights}: {err}", "save the prompts again") from None
    learner = PromptLearner(io, meta["classnames"], n_ctx=meta["n_ctx"], init=meta.get("init"))
    if learner.template != meta.get("template") or tuple(ctx.shape) != tuple(learner.ctx.shape):
        raise CrossGetError(
            f"the prompts in {folder} (context {tuple(ctx.shape)}, template {meta.get('template')!r}) do not fit this model "
            f"(context {tuple(learner.ctx.shape)}, template {learner.template!r})",
            "load them with the model (and tokenizer) they were learned with",
        )
    with torch.no_grad():
        learner.ctx.copy_(ctx.to(learner.ctx.device, learner.ctx.dtype))
    return learner


__all__ = [
    "CoopConfig",
    "PromptLearner",
    "coop_classifier",
    "coop_losses",
    "evaluate_coop",
    "few_shot_indices",
    "load_prompts",
    "save_prompts",
    "token_embedding",
    "train_coop",
]


@dataclass(frozen=True)
class CoopRun:
    """A CoOp fine-tune as ``crossget compress --finetune --objective coop`` runs it:
    the training configuration and where the classification data comes from."""

    config: CoopConfig
    data: str
    split: str | None = None
    image_root: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    classnames: str | None = None  # file with one class name per line


def run_coop(io: ModelIO, run: CoopRun, progress: Callable[[dict], None] | None = None) -> tuple[PromptLearner, list[dict]]:
    """Load ``run.data`` (ImageFolder, CSV/JSONL, HF datasets) and train CoOp on it."""
    from crossget_cli.data.classification import load_classification

    data = load_classification(
        run.data,
        split=run.split,
        image_column=run.image_column,
        label_column=run.label_column,
        classnames=run.classnames,
        image_root=run.image_root,
    )
    return train_coop(io, data, run.config, progress)
