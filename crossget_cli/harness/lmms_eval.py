"""An lmms-eval model plugin: ``python -m lmms_eval --model crossget --model_args
model=M,recipe=R,vision_r=13,...`` evaluates a CrossGET model on lmms-eval's tasks.

lmms-eval (an optional dependency: ``pip install 'crossget[lmms]'``) finds it through
the ``lmms_eval.models`` entry point that ``pyproject.toml`` declares (:func:`manifest`);
``python -m crossget_cli.harness.lmms_eval ARGS`` registers it by hand and runs
lmms-eval's command line, for a checkout that is not installed.

The model is loaded as ``--model`` loads it (:func:`~crossget_cli.loading.models.load_model`),
patched with a recipe's reduction or ``vision_r``/``text_r``/``method`` (through
:func:`crossget_cli.patch`) and answers through its adapter, as ``crossget eval`` does:
``generate_until`` fills each request's context into the prompt template (the
``prompt`` model arg, else the recipe's ``eval.prompt``, else the family's ``vqa``
template) and calls :meth:`~crossget_cli.adapters.base.Adapter.answer_questions`, so an
lmms-eval request and ``crossget eval --task vqa`` give the same answer to the same
question and image. ``loglikelihood`` asks the adapter to score the continuation
(:meth:`~crossget_cli.adapters.base.Adapter.continuation_logprobs`) where the family can.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

try:
    from lmms_eval.api.model import lmms
except ImportError as err:  # the optional extra is missing: say which
    raise ImportError(f"the crossget lmms-eval plugin needs lmms-eval ({err}): pip install 'crossget[lmms]'") from err

from crossget_cli.adapters.generation import generation_kwargs
from crossget_cli.adapters.patching import patch
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.errors import CrossGetError
from crossget_cli.loading.models import load_model
from crossget_cli.loading.preprocessing import model_io
from crossget_cli.recipes import Recipe, load_recipe

#: The name lmms-eval knows the model by (``--model crossget``) and where its class lives
#: (spelled out: run with ``python -m``, this module is ``__main__``).
MODEL_NAME = "crossget"
CLASS_PATH = "crossget_cli.harness.lmms_eval.CrossGetLMM"
#: ``max_new_tokens`` when neither the request, the model args nor the recipe set it
#: (``crossget eval``'s default).
MAX_NEW_TOKENS = 20
#: The exported recipe inside a ``crossget compress`` folder.
RECIPE_FILE = "crossget.yaml"


def manifest():
    """The ``lmms_eval.models`` entry point: the manifest naming :class:`CrossGetLMM`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


class CrossGetLMM(lmms):
    """A model ``crossget`` loads, patched, behind lmms-eval's ``lmms`` interface.

    Model args: ``model`` (anything ``--model`` takes; else the recipe's
    ``model.source``), ``pretrained`` (open_clip tag, as ``--pretrained``), ``recipe``
    (a YAML file or a shipped recipe's name), ``vision_r``/``text_r`` (an int, or one
    per layer as ``1;2;3``) and ``method`` overriding the recipe's reduction,
    ``prompt`` (a template with ``{question}``; ``\\n`` is a newline), ``max_new_tokens``
    (when a task's generation kwargs leave it unset), ``device``, ``dtype``
    (fp32/fp16/bf16), ``batch_size``. Model args win over lmms-eval's own
    ``--batch_size``/``--device`` flags.
    """

    is_simple = True

    def __init__(
        self,
        model: str | None = None,
        recipe: str | None = None,
        vision_r: Any = None,
        text_r: Any = None,
        method: str | None = None,
        pretrained: str | None = None,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
        device: str = "cpu",
        dtype: str = "fp32",
        batch_size: Any = 1,
        max_batch_size: Any = None,  # lmms-eval passes it along with --batch_size; batches are fixed here
    ) -> None:
        super().__init__()
        loaded_recipe = load_recipe(str(recipe)) if recipe is not None else None
        source = str(model) if model is not None else (loaded_recipe.model.source if loaded_recipe else None)
        if source is None:
            raise CrossGetError("the crossget lmms-eval model needs a model", "pass --model_args model=<a --model string>")
        if pretrained is None and loaded_recipe is not None and source == loaded_recipe.model.source:
            pretrained = loaded_recipe.model.pretrained  # the recipe's tag belongs to the recipe's model
        loaded = load_model(source, None if pretrained is None else str(pretrained))
        exported = _exported_recipe(source)
        overrides = {"vision_r": _r_value("vision_r", vision_r), "text_r": _r_value("text_r", text_r), "method": method}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if loaded_recipe is not None or overrides:
            config = replace((loaded_recipe or exported or Recipe()).reduction, **overrides).to_config()
            patch(loaded.model, vision_r=config.vision_r, text_r=config.text_r, method=config.method)
        self.io = model_io(loaded, str(device), str(dtype))
        self.adapter = find_adapter(self.io.model)
        if not self.adapter.generates(self.io.model):
            raise CrossGetError(
                f"{type(self.io.model).__name__} ({self.adapter.description}) does not generate text",
                "evaluate a generating model (LLaVA, BLIP-2, BLIP VQA) with lmms-eval",
            )
        spec = (loaded_recipe or exported or Recipe()).eval
        defaults = dict(self.adapter.generation_defaults)
        self.prompt = _unescape(prompt) if prompt is not None else (spec.prompt if spec and spec.prompt else None)
        self.prompt = self.prompt or self.adapter.prompt_templates.get("vqa")
        self.max_new_tokens = _positive("max_new_tokens", max_new_tokens or (spec and spec.max_new_tokens) or MAX_NEW_TOKENS)
        self.num_beams = (spec.num_beams if spec else None) or defaults.get("num_beams")
        self.batch_size_per_device = _positive("batch_size", batch_size)
        self.source = source

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config: dict | None = None):
        """As lmms-eval's, except that a model arg also given by lmms-eval's flags
        (``batch_size``, ``device``: its ``--batch_size`` always has a value) wins
        instead of failing as a duplicate keyword."""
        from lmms_eval.utils import simple_parse_args_string

        args = dict(arg_string) if isinstance(arg_string, dict) else simple_parse_args_string(arg_string or "")
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    @property
    def model(self):
        return self.io.model

    @property
    def tokenizer(self):
        return self.io.loaded.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_device

    @property
    def device(self):
        return self.io.device

    # -- requests -----------------------------------------------------------------------

    def generate_until(self, requests) -> list[str]:
        """Answers in request order, batched by task, split and generation kwargs, in
        the order lmms-eval gives them (as ``crossget eval`` batches its questions)."""
        self.adapter.require_task(self.model, "vqa")
        answers: list[str | None] = [None] * len(requests)
        for indices in self._batches(requests, lambda args: json.dumps(args[1], sort_keys=True, default=str)):
            batch = [requests[i].args for i in indices]
            contexts = [args[0] for args in batch]
            until, settings = self._generation(dict(batch[0][1] or {}))
            generated = self.adapter.answer_questions(
                self.model, self._images(batch), contexts, tokenizer=self.tokenizer, prompt=self.prompt, **settings
            )
            for i, context, text in zip(indices, contexts, generated):
                answers[i] = _cut(text, until)
                self.cache_hook.add_partial("generate_until", (context, batch[0][1]), answers[i])
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(log P(continuation | prompt), is greedy)`` per request, through the
        adapter (the patched model scores the continuation after the same prompt
        that :meth:`generate_until` builds)."""
        if not self.adapter.scores_continuations(self.model):
            raise NotImplementedError(
                f"{type(self.model).__name__} ({self.adapter.description}) cannot score continuations: "
                "use generate_until tasks with this model"
            )
        scores: list[tuple[float, bool] | None] = [None] * len(requests)
        for indices in self._batches(requests, lambda args: ""):
            batch = [requests[i].args for i in indices]
            continuations = [self._continuation(args) for args in batch]
            result = self.adapter.continuation_logprobs(
                self.model,
                self._images(batch),
                [args[0] for args in batch],
                continuations,
                tokenizer=self.tokenizer,
                prompt=self.prompt,
            )
            for i, score in zip(indices, result):
                scores[i] = score
        return [_as_response(score) for score in scores]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("the crossget lmms-eval model answers single-round requests only (generate_until)")

    # -- helpers --------------------------------------------------------------------------

    def _batches(self, requests, group_key):
        """Index batches of at most ``batch_size`` requests sharing task, split and
        ``group_key(args)``, in request order within each group."""
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            args = request.args
            if len(args) < 6:
                raise CrossGetError(
                    f"request {i} has no image callback ({len(args)} arguments)",
                    "the crossget model answers image tasks; unconditional scoring (acc_mutual_info) is not supported",
                )
            groups.setdefault((args[-2], args[-1], group_key(args)), []).append(i)
        size = self.batch_size_per_device
        for indices in groups.values():
            for start in range(0, len(indices), size):
                yield indices[start : start + size]

    def _doc(self, args) -> dict:
        doc_id, task, split = args[-3:]
        return self.task_dict[task][split][doc_id]

    def _images(self, batch):
        """The batch's images, one per request from the doc's visual callback,
        preprocessed by the model's own pipeline on its device and dtype."""
        import torch
        from PIL import Image

        tensors = []
        for args in batch:
            visuals = args[2](self._doc(args))
            visuals = [v for v in (visuals or []) if v is not None]
            if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
                raise CrossGetError(
                    f"doc {args[-3]} of task {args[-2]} gives {len(visuals)} visuals, not one image",
                    "the crossget model answers about exactly one image per question",
                )
            tensors.append(self.io.transform(visuals[0].convert("RGB")))
        return torch.stack(tensors).to(self.io.device, self.io.dtype)

    def _continuation(self, args) -> str:
        target = args[1]
        return target if isinstance(target, str) else str(target(self._doc(args)))

    def _generation(self, gen: dict) -> tuple[list[str], dict]:
        """lmms-eval generation kwargs -> (stop strings, ``answer_questions`` settings):
        greedy unless ``temperature`` > 0 or ``do_sample``."""
        until = gen.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen.get("temperature") or 0)
        sample = bool(gen.get("do_sample")) or temperature > 0
        settings = {
            "max_new_tokens": int(gen.get("max_new_tokens") or self.max_new_tokens),
            "num_beams": int(gen.get("num_beams") or self.num_beams or 1),
            "do_sample": sample,
        }
        if sample:
            settings.update(temperature=temperature or None, top_p=gen.get("top_p"))
        return until, generation_kwargs(settings)


def _as_response(score: tuple[float, bool]):
    """A loglikelihood result as lmms-eval's evaluator keeps it. Its 0.7 releases pass
    every response through ``unwrap_generation_output``, which turns a ``(logprob,
    is_greedy)`` tuple into its ``str()`` and breaks the tasks' scoring; a
    ``GenerationResult`` comes through with its ``text`` untouched."""
    from lmms_eval.api import instance

    unwrap = getattr(instance, "unwrap_generation_output", None)
    if unwrap is None or unwrap(score)[0] == score:
        return score
    return instance.GenerationResult(text=score)


def _exported_recipe(source: str) -> Recipe | None:
    """The recipe a ``crossget compress`` folder was made with, or ``None``."""
    path = Path(source).expanduser() / RECIPE_FILE
    return load_recipe(path) if path.is_file() else None


def _r_value(name: str, value: Any):
    """A model-arg r: an int, or one int per layer separated by ``;`` (or a JSON list)."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    parts = [p for p in re.split(r"[;\s,\[\]]+", text) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise CrossGetError(f"{name}={value!r} is not an integer or a list of integers", f"e.g. {name}=13 or {name}=13;13;12")
    return int(parts[0]) if len(parts) == 1 and not text.startswith("[") else [int(p) for p in parts]


def _positive(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise CrossGetError(f"{name} must be a positive integer, got {value!r}", f"e.g. --model_args {name}=4")
    return number


def _unescape(prompt: str) -> str:
    # model args arrive on one command line: "\n" stands for a newline
    return str(prompt).replace("\\n", "\n")


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first stop string (greedy decoding would have stopped there)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def main(argv: list[str] | None = None) -> None:
    """``python -m crossget_cli.harness.lmms_eval ARGS``: lmms-eval's command line with
    the ``crossget`` model registered by hand (for a checkout without the entry point)."""
    import sys

    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    from lmms_eval.cli.dispatch import main as lmms_eval_main

    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    lmms_eval_main()


if __name__ == "__main__":
    main()
