"""Learned prompts for contrastive models (CoOp, Zhou et al. 2022): context vectors
that replace tokens of the text tower's input, shared by the jobs that train them
(the ``coop`` objective, :mod:`.coop`) and the ones that use them (zero-shot
evaluation of an export).

* :class:`PromptLearner`: the learnable context and the tokenized class prompts;
* :func:`coop_classifier`: class features of the learned prompts;
* :func:`save_prompts` / :func:`load_prompts`: ``coop_prompts.safetensors`` + ``.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.adapters.patching import is_patched
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.errors import CrossGetError
from crossget_cli.files import write_atomic

PROMPTS_FILE = "coop_prompts.safetensors"
PROMPTS_META = "coop_prompts.json"
PROMPTS_FORMAT = "crossget-coop-prompts"
PLACEHOLDER = "X"


def token_embedding(model: nn.Module) -> nn.Embedding:
    """The text tower's token-embedding table of ``model`` (its adapter's)."""
    return find_adapter(model).token_embedding(model)


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


def require_patched(io: ModelIO) -> None:
    """Learned prompts with CrossGET need the model patched (its cross tokens)."""
    if not is_patched(io.model):
        raise CrossGetError("CoOp with CrossGET needs a model patched with CrossGET", "call crossget_cli.patch(model, ...) first")


def coop_classifier(io: ModelIO, learner: PromptLearner, batch_size: int = 256) -> torch.Tensor:
    """``[C, E]`` L2-normalised class features of the learned prompts (eval mode,
    no gradients), float32 on the CPU."""
    require_patched(io)
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
    "PROMPTS_FILE",
    "PROMPTS_META",
    "PromptLearner",
    "coop_classifier",
    "load_prompts",
    "require_patched",
    "save_prompts",
    "token_embedding",
]
