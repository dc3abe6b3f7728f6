"""The library side of ``crossget eval``: one or more models, one task, one data
set; results per model and deltas to the first model.

Tasks: ``retrieval`` (recall@1/5/10 both ways, :mod:`.retrieval`) and
``zeroshot`` (top-1/top-5, :mod:`.zeroshot`) for CLIP-style models.
``captioning`` and ``vqa`` score generated text with :mod:`.metrics`; they need
a model adapter that generates (the :class:`Generator` protocol), which the
BLIP and LLaVA adapters provide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from torch.utils.data import DataLoader

from ..adapters import find_adapter
from ..errors import CrossGetError
from .encoders import ModelIO, model_io
from .loading import DTYPES, load_model

SCHEMA_VERSION = 1
TASKS = ("retrieval", "zeroshot", "captioning", "vqa")
Progress = Callable[[str, int, int], None]


class Generator(Protocol):
    """What a generative adapter offers ``captioning`` and ``vqa``."""

    def generate_captions(self, model, images: torch.Tensor, **generation) -> list[str]: ...

    def answer_questions(self, model, images: torch.Tensor, questions: Sequence[str], **generation) -> list[str]: ...


@dataclass(frozen=True)
class EvalConfig:
    """Attributes mirror the ``crossget eval`` flags."""

    task: str
    data: str
    image_root: str | None = None
    split: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    label_column: str = "label"
    classnames: str | None = None  # file with one class name per line (zeroshot)
    templates: str = "openai-imagenet"  # zeroshot prompts: a built-in name or a file
    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    dtype: str = "fp32"
    limit: int | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise CrossGetError(f"unknown task {self.task!r}", f"choose one of: {', '.join(TASKS)}")
        for name, low in (("batch_size", 1), ("num_workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CrossGetError(f"{name} must be an integer >= {low}, got {value!r}", f"e.g. --{name.replace('_', '-')} 64")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise CrossGetError(f"limit must be a positive integer, got {self.limit!r}", "e.g. --limit 100")
        if self.dtype not in DTYPES:
            raise CrossGetError(f"unknown dtype {self.dtype!r}", f"choose one of: {', '.join(DTYPES)}")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise CrossGetError(f"unknown device {self.device!r}", "use cpu, cuda or cuda:N")


def evaluate(
    models: Sequence[str],
    config: EvalConfig,
    pretrained: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate each model (``--model`` strings) on ``config``; the first model is
    the reference for the deltas."""
    if not models:
        raise CrossGetError("no model given", "pass one or more --model")
    data = _load_data(config)
    results: dict[str, dict[str, float]] = {}
    for source in models:
        io = model_io(load_model(source, pretrained), config.device, config.dtype)
        label = _unique_label(source, results)
        results[label] = _TASK_RUNNERS[config.task](io, data, config, _bind(progress, label))
    reference = next(iter(results.values()))
    deltas = {
        label: {metric: value - reference[metric] for metric, value in scores.items() if metric in reference}
        for label, scores in list(results.items())[1:]
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "task": config.task,
        "config": asdict(config),
        "models": list(results),
        "results": {config.task: results},
        "deltas": {config.task: deltas},
        "num_items": _num_items(data),
    }


def _unique_label(source: str, taken: dict) -> str:
    label, n = source, 2
    while label in taken:
        label, n = f"{source}#{n}", n + 1
    return label


def _bind(progress: Progress | None, label: str):
    if progress is None:
        return lambda done, total, what: None
    return lambda done, total, what: progress(f"{label}: {what}", done, total)


def _load_data(config: EvalConfig):
    from . import data

    common = dict(split=config.split, image_column=config.image_column, limit=config.limit)
    if config.task in ("retrieval", "captioning"):
        kwargs = dict(common, split=config.split or "test", caption_column=config.caption_column, image_root=config.image_root)
        return data.load_retrieval(config.data, **kwargs)
    if config.task == "zeroshot":
        classnames = _read_lines(config.classnames, "--classnames") if config.classnames else None
        loaded = data.load_classification(config.data, label_column=config.label_column, classnames=classnames, **common)
        return loaded, data.load_templates(config.templates)
    return data.load_vqa(config.data, image_root=config.image_root, split=config.split, limit=config.limit)


def _read_lines(path: str, option: str) -> list[str]:
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise CrossGetError(f"{option} file not found: {path}", "one name per line")
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def _num_items(data) -> int:
    if isinstance(data, tuple):
        data = data[0]
    for name in ("image_paths", "images", "questions"):
        if hasattr(data, name):
            return len(getattr(data, name))
    return 0


def _image_batches(io: ModelIO, dataset, config: EvalConfig, report, what: str):
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.num_workers)
    total = len(dataset)
    done = 0
    for _, images in loader:
        yield images
        done += len(images)
        report(done, total, what)


def _run_retrieval(io: ModelIO, data, config: EvalConfig, report) -> dict[str, float]:
    from .retrieval import retrieval_recall

    images = io.encode_images(_image_batches(io, data.image_dataset(io.transform), config, report, "images"))
    texts = io.encode_texts(data.captions, config.batch_size)
    report(len(data.captions), len(data.captions), "captions")
    return retrieval_recall(images, texts, data.caption_to_image)


def _run_zeroshot(io: ModelIO, data, config: EvalConfig, report) -> dict[str, float]:
    from .zeroshot import class_embeddings, topk_accuracy

    dataset, templates = data
    classes = class_embeddings(io, dataset.classnames, templates, config.batch_size)
    report(len(dataset.classnames), len(dataset.classnames), "class prompts")
    images = io.encode_images(_image_batches(io, dataset.image_dataset(io.transform), config, report, "images"))
    return topk_accuracy(images @ classes.t(), torch.as_tensor(dataset.labels))


def _generator(io: ModelIO, task: str) -> Generator:
    adapter = find_adapter(io.model)
    method = "generate_captions" if task == "captioning" else "answer_questions"
    if not hasattr(adapter, method):
        raise CrossGetError(
            f"task {task!r} needs a model that generates text; {adapter.name} models ({adapter.description}) do not",
            "use retrieval or zeroshot for CLIP-style models",
        )
    return adapter


def _run_captioning(io: ModelIO, data, config: EvalConfig, report) -> dict[str, float]:
    from .metrics.caption import caption_scores

    generator = _generator(io, "captioning")
    captions = []
    for images in _image_batches(io, data.image_dataset(io.transform), config, report, "images"):
        captions += generator.generate_captions(io.model, images.to(io.device, io.dtype))
    refs = {i: [data.captions[c] for c in caps] for i, caps in enumerate(data.image_to_captions)}
    return caption_scores(refs, dict(enumerate(captions)))


def _run_vqa(io: ModelIO, data, config: EvalConfig, report) -> dict[str, float]:
    _generator(io, "vqa")
    raise CrossGetError("VQA evaluation arrives with the generative adapters", "use retrieval or zeroshot for now")


_TASK_RUNNERS = {"retrieval": _run_retrieval, "zeroshot": _run_zeroshot, "captioning": _run_captioning, "vqa": _run_vqa}
