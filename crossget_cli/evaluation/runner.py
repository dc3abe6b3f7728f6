"""The library side of ``crossget eval``: one or more models, one task, one data
set; results per model and deltas to the first model.

Tasks: ``retrieval`` (recall@1/5/10 both ways, :mod:`.retrieval`) and
``zeroshot`` (top-1/top-5, :mod:`.zeroshot`) for CLIP-style models.
``multiple-choice`` (ScienceQA/MMBench style, :mod:`.choice`) asks a generative
model to pick an option letter and scores accuracy.
``captioning`` and ``vqa`` score generated text with :mod:`.metrics`: either
text a model generates through its adapter (which says what a model can do:
:meth:`~crossget_cli.adapters.base.Adapter.tasks`) or prediction files written elsewhere
(COCO caption results, VQAv2 results), scored with :func:`evaluate_predictions`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader

from crossget_cli.adapters.base import Adapter
from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.errors import CrossGetError
from crossget_cli.loading.formats import DTYPES
from crossget_cli.loading.models import load_model
from crossget_cli.loading.preprocessing import model_io

if TYPE_CHECKING:
    from crossget_cli.recipes import Recipe

SCHEMA_VERSION = 1
TASKS = ("retrieval", "zeroshot", "captioning", "vqa", "multiple-choice")
Progress = Callable[[str, int, int], None]
#: The ``eval`` settings a recipe gives defaults for (its task, data and split name what
#: the paper evaluated, not this run's).
RECIPE_SETTINGS = ("itm_k", "max_new_tokens", "min_new_tokens", "num_beams", "prompt")


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
    annotations: str | None = None  # VQAv2 annotation JSON (vqa)
    vqa_variant: str = "official"  # official (current vqaEval.py) or legacy (2016 code, as BLIP/LAVIS)
    itm_k: int = 128  # retrieval with an ITM head: re-rank the ITC top k (0: ITC only)
    max_new_tokens: int = 20  # captioning/vqa/multiple-choice generation settings
    min_new_tokens: int | None = None
    num_beams: int | None = None  # None: the model family's default (Adapter.generation_defaults)
    prompt: str | None = None  # caption prefix, or a VQA template with {question}
    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    dtype: str = "fp32"
    limit: int | None = None

    @classmethod
    def from_recipe(cls, recipe: Recipe | None = None, **fields: Any) -> EvalConfig:
        """Fields over the recipe's ``eval`` section (its generation and re-ranking
        settings) over the defaults; a field given as ``None`` is not given."""
        spec = recipe.eval if recipe is not None else None
        from_recipe = {n: getattr(spec, n) for n in RECIPE_SETTINGS if spec is not None and getattr(spec, n) is not None}
        return cls(**{**from_recipe, **{k: v for k, v in fields.items() if v is not None}})

    def __post_init__(self):
        if self.task not in TASKS:
            raise CrossGetError(f"unknown task {self.task!r}", f"choose one of: {', '.join(TASKS)}")
        optional = ("min_new_tokens", "num_beams")
        checks = (
            ("batch_size", 1),
            ("num_workers", 0),
            ("itm_k", 0),
            ("max_new_tokens", 1),
            ("min_new_tokens", 0),
            ("num_beams", 1),
        )
        for name, low in checks:
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CrossGetError(f"{name} must be an integer >= {low}, got {value!r}", f"e.g. --{name.replace('_', '-')} 64")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise CrossGetError(f"limit must be a positive integer, got {self.limit!r}", "e.g. --limit 100")
        if self.vqa_variant not in ("official", "legacy"):
            raise CrossGetError(f"unknown VQA variant {self.vqa_variant!r}", "use official or legacy")
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
    notes: list[str] = []
    for source in models:
        io = model_io(load_model(source, pretrained), config.device, config.dtype)
        find_adapter(io.model).require_task(io.model, config.task)
        label = _unique_label(source, results)
        results[label] = _TASK_RUNNERS[config.task](io, data, config, _bind(progress, label), notes)
    return _report(config, results, data, notes)


def evaluate_predictions(predictions: Sequence[str], config: EvalConfig) -> dict[str, Any]:
    """Score prediction files against the references of ``config.data``: COCO
    caption results (``[{"image_id", "caption"}]`` or ``{image_id: caption}``) for
    ``captioning``, VQAv2 results (``[{"question_id", "answer"}]``) for ``vqa``."""
    if config.task not in ("captioning", "vqa"):
        raise CrossGetError(f"--predictions scores captioning or vqa, not {config.task}", "evaluate models with --model instead")
    data = _load_data(config, check_images=False)  # the official evaluators read JSON only
    results = {}
    notes: list[str] = []
    for path in predictions:
        label = _unique_label(path, results)
        loaded = _read_predictions(path)
        if config.task == "captioning":
            results[label] = _caption_metrics(data, _keyed(loaded, "image_id", "caption", path), notes)
        else:
            results[label] = _vqa_metrics(data, _keyed(loaded, "question_id", "answer", path), config)
    return _report(config, results, data, notes)


def _read_predictions(path: str):
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise CrossGetError(f"predictions file not found: {path}", "pass a JSON results file")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CrossGetError(f"predictions file {path} is not valid JSON: {err}", "fix the file") from None


def _keyed(loaded, key: str, value: str, path: str) -> dict[str, str]:
    """Results as ``{str(id): text}`` from a list of records or a mapping."""
    if isinstance(loaded, dict):
        return {str(k): str(v) for k, v in loaded.items()}
    if isinstance(loaded, list) and all(isinstance(r, dict) and key in r and value in r for r in loaded):
        return {str(r[key]): str(r[value]) for r in loaded}
    raise CrossGetError(
        f"predictions file {path} is not a list of {{{key!r}, {value!r}}} records", f'e.g. [{{"{key}": 1, "{value}": "..."}}]'
    )


def _caption_metrics(data, captions: dict[str, str], notes: list[str]) -> dict[str, float]:
    """BLEU, CIDEr, ROUGE-L always; METEOR and SPICE each when it can be computed
    (pycocoevalcap and Java installed; SPICE also needs CoreNLP), else skipped
    with a note of its own."""
    from crossget_cli.metrics.caption import caption_scores
    from crossget_cli.metrics.java_metrics import java_requirements_missing

    ids = [str(i) for i in (data.image_ids or range(len(data.image_paths)))]
    unknown = sorted(set(captions) - set(ids))
    if unknown:
        raise CrossGetError(
            f"{len(unknown)} predicted image id(s) are not in the references, e.g. {unknown[0]!r}", "use the image ids of --data"
        )
    refs = {i: data.references[n] for n, i in enumerate(ids) if i in captions}
    if java_requirements_missing():
        _note(notes, "METEOR and SPICE skipped: they need pycocoevalcap (pip install 'crossget[coco]') and a Java runtime")
        return caption_scores(refs, captions)
    return caption_scores(refs, captions, meteor_spice=True, on_skip=lambda name, err: _note(notes, f"{name} skipped: {err}"))


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


def _vqa_metrics(data, answers: dict[str, str], config: EvalConfig) -> dict[str, Any]:
    """Overall and per-answer-type accuracy, and (a breakdown, not a column) per
    question type when the annotations carry VQAv2's ``question_type``."""
    from crossget_cli.metrics.vqa import vqa_accuracy

    if data.answers is None:
        raise CrossGetError("the VQA data has no answers to score against", "pass --annotations with the VQAv2 annotation JSON")
    n = len(data.answers)
    question_types = data.question_types or [None] * n
    typed = any(t is not None for t in question_types)  # then the official code buckets every question
    records = []
    answer_types = data.answer_types or [None] * n
    for qid, answers_, kind, question_type in zip(data.question_ids, data.answers, answer_types, question_types):
        record = {"question_id": str(qid), "answers": answers_, "answer_type": kind or "other"}
        if typed:
            record["question_type"] = question_type or ""
        records.append(record)
    scores = vqa_accuracy(answers, records, variant=config.vqa_variant)
    out: dict[str, Any] = {"overall": scores["overall"], **scores["per_answer_type"]}
    if "per_question_type" in scores:
        out["per_question_type"] = scores["per_question_type"]
    return out


def _report(config: EvalConfig, results: dict, data, notes: Sequence[str] = ()) -> dict[str, Any]:
    # Scores are columns; nested breakdowns (VQA per question type) are reported apart.
    breakdowns = {label: {k: v for k, v in scores.items() if isinstance(v, dict)} for label, scores in results.items()}
    results = {label: {k: v for k, v in scores.items() if not isinstance(v, dict)} for label, scores in results.items()}
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
        **({"breakdowns": {config.task: breakdowns}} if any(breakdowns.values()) else {}),
        "num_items": _num_items(data),
        **({"num_classes": len(data[0].classnames)} if config.task == "zeroshot" else {}),
        "notes": list(notes),
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


def _load_data(config: EvalConfig, check_images: bool = True):
    from crossget_cli.data.captions import load_captions
    from crossget_cli.data.classification import load_classification, load_templates
    from crossget_cli.data.retrieval import load_retrieval
    from crossget_cli.data.vqa import load_vqa

    common = dict(split=config.split, image_column=config.image_column, limit=config.limit)
    if config.task in ("retrieval", "captioning"):
        kwargs = dict(
            common,
            split=config.split or "test",
            caption_column=config.caption_column,
            image_root=config.image_root,
            check_images=check_images,
        )
        loader = load_retrieval if config.task == "retrieval" else load_captions
        return loader(config.data, **kwargs)
    if config.task == "zeroshot":
        classnames = _read_lines(config.classnames, "--classnames") if config.classnames else None
        loaded = load_classification(config.data, label_column=config.label_column, classnames=classnames, **common)
        return loaded, load_templates(config.templates)
    if config.task == "multiple-choice":
        from crossget_cli.data.choice import load_multiple_choice

        return load_multiple_choice(config.data, image_root=config.image_root, limit=config.limit)
    return load_vqa(
        config.data,
        annotations=config.annotations,
        image_root=config.image_root,
        split=config.split,
        limit=config.limit,
        check_images=check_images,
    )


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


def _run_retrieval(io: ModelIO, data, config: EvalConfig, report, notes: list[str]) -> dict[str, float]:
    from crossget_cli.metrics.retrieval import retrieval_recall

    images = io.encode_images(_image_batches(io, data.image_dataset(io.transform), config, report, "images"))
    texts = io.encode_texts(data.captions, config.batch_size)
    report(len(data.captions), len(data.captions), "captions")
    adapter = find_adapter(io.model)
    if config.itm_k > 0 and adapter.reranks(io.model):
        rerank = _itm_reranker(io, adapter, data, config, report)
        _note(notes, f"retrieval re-ranks the ITC top {config.itm_k} with the ITM head (--itm-k)")
        scores = retrieval_recall(images, texts, data.caption_to_image, rerank=rerank, rerank_k=config.itm_k)
    else:
        scores = retrieval_recall(images, texts, data.caption_to_image)
    if data.hard_negatives:
        scores["hard_neg_acc"] = _hard_negative_accuracy(io, data, images, texts, config)
    return scores


def _hard_negative_accuracy(io: ModelIO, data, images: torch.Tensor, texts: torch.Tensor, config: EvalConfig) -> float:
    """Each image's first caption against its hard negatives (:func:`.retrieval.hard_negative_accuracy`)."""
    from crossget_cli.metrics.retrieval import hard_negative_accuracy

    negatives = [caption for group in data.hard_negatives for caption in group]
    owner = [i for i, group in enumerate(data.hard_negatives) for _ in group]
    true_captions = texts[[captions[0] for captions in data.image_to_captions]]
    return hard_negative_accuracy(images, true_captions, io.encode_texts(negatives, config.batch_size), owner)


def _itm_reranker(io: ModelIO, adapter, data, config: EvalConfig, report):
    """Pairwise ITM scores over the (reduced) image tokens of every image, kept
    with their token sizes, and the tokenized captions."""
    tokens, sizes = [], []
    with torch.inference_mode():
        for images in _image_batches(io, data.image_dataset(io.transform), config, report, "image tokens for ITM"):
            embeds, size = adapter.image_tokens(io.model, images.to(io.device, io.dtype))
            tokens.append(embeds)
            sizes.append(size)
    tokens = torch.cat(tokens)
    sizes = None if sizes[0] is None else torch.cat(sizes)
    ids = torch.cat(
        [io.tokenize(data.captions[s : s + config.batch_size]) for s in range(0, len(data.captions), config.batch_size)]
    )

    @torch.inference_mode()
    def score(image_idx: torch.Tensor, caption_idx: torch.Tensor) -> torch.Tensor:
        flat_i, flat_c = image_idx.reshape(-1), caption_idx.reshape(-1)
        out = []
        for s in range(0, flat_i.numel(), config.batch_size):
            i, c = flat_i[s : s + config.batch_size].to(io.device), flat_c[s : s + config.batch_size]
            size = None if sizes is None else sizes[i]
            out.append(adapter.itm_scores(io.model, tokens[i], size, ids[c].to(io.device)).float().cpu())
        return torch.cat(out).view(image_idx.shape)

    return score


def _run_zeroshot(io: ModelIO, data, config: EvalConfig, report, notes: list[str]) -> dict[str, float]:
    from crossget_cli.evaluation.zeroshot import class_embeddings, classification_scores

    dataset, templates = data
    learned = _learned_prompts(io, dataset.classnames)
    if learned is not None:
        from crossget_cli.adapters.prompts import coop_classifier

        classes = coop_classifier(io, learned)
        _note(notes, f"{io.loaded.source}: class prompts are the learned CoOp prompts saved with the model, not --templates")
    else:
        classes = class_embeddings(io, dataset.classnames, templates, config.batch_size)
    report(len(dataset.classnames), len(dataset.classnames), "class prompts")
    images = io.encode_images(_image_batches(io, dataset.image_dataset(io.transform), config, report, "images"))
    return classification_scores(images @ classes.t(), torch.as_tensor(dataset.labels))


def _learned_prompts(io: ModelIO, classnames: Sequence[str]):
    """The CoOp prompts exported with a model (``coop_prompts.json``), if any;
    they must have been learned for the same classes."""
    from pathlib import Path

    from crossget_cli.adapters.prompts import PROMPTS_META, load_prompts

    folder = Path(io.loaded.source)
    if not (folder / PROMPTS_META).is_file():
        return None
    learner = load_prompts(io, folder)

    def normal(names):
        return [" ".join(name.replace("_", " ").split()) for name in names]

    if normal(learner.classnames) != normal(classnames):
        raise CrossGetError(
            f"{folder} holds CoOp prompts for other classes ({len(learner.classnames)} classes)",
            "evaluate on the classes the prompts were learned for",
        )
    return learner


def _generation(io: ModelIO, config: EvalConfig, generator, task: str) -> dict[str, Any]:
    """Generation settings and the model's tokenizer to decode. Each setting is
    the flag, else the evaluated model's exported recipe (its ``eval`` section),
    else the family's default (``prompt_templates[task]``, ``generation_defaults``)."""
    exported = _exported_eval_spec(io.loaded.source)
    defaults = {**getattr(generator, "generation_defaults", {}), "prompt": getattr(generator, "prompt_templates", {}).get(task)}
    settings: dict[str, Any] = {"tokenizer": io.loaded.tokenizer}
    for name in ("prompt", "max_new_tokens", "min_new_tokens", "num_beams"):
        value = getattr(config, name)
        if value is None and exported is not None:
            value = getattr(exported, name)
        settings[name] = defaults.get(name) if value is None else value
    return settings


def _exported_eval_spec(source: str):
    """The ``eval`` section of an exported model's ``crossget.yaml``, or ``None``."""
    from pathlib import Path

    from crossget_cli.recipes import load_recipe

    recipe_file = Path(source) / "crossget.yaml"
    return load_recipe(recipe_file).eval if recipe_file.is_file() else None


def _generator(io: ModelIO, task: str) -> Adapter:
    adapter = find_adapter(io.model)
    adapter.require_task(io.model, task)
    return adapter


def _run_captioning(io: ModelIO, data, config: EvalConfig, report, notes: list[str]) -> dict[str, float]:
    generator = _generator(io, "captioning")
    settings = _generation(io, config, generator, "captioning")
    captions = []
    for images in _image_batches(io, data.image_dataset(io.transform), config, report, "images"):
        captions += generator.generate_captions(io.model, images.to(io.device, io.dtype), **settings)
    ids = [str(i) for i in (data.image_ids or range(len(data.image_paths)))]
    return _caption_metrics(data, dict(zip(ids, captions)), notes)


def _answers(io: ModelIO, data, questions: Sequence[str], config: EvalConfig, task: str, report) -> list[str]:
    """Generated answers to ``questions`` (one per image of ``data``), in order."""
    generator = _generator(io, task)
    settings = _generation(io, config, generator, task)
    answers: list[str] = []
    loader = DataLoader(data.image_dataset(io.transform), batch_size=config.batch_size, num_workers=config.num_workers)
    for indices, images in loader:
        batch = [questions[i] for i in indices.tolist()]
        answers += generator.answer_questions(io.model, images.to(io.device, io.dtype), batch, **settings)
        report(len(answers), len(questions), "questions")
    return answers


def _run_vqa(io: ModelIO, data, config: EvalConfig, report, notes: list[str]) -> dict[str, float]:
    answers = _answers(io, data, data.questions, config, "vqa", report)
    return _vqa_metrics(data, {str(q): a for q, a in zip(data.question_ids, answers)}, config)


def _run_multiple_choice(io: ModelIO, data, config: EvalConfig, report, notes: list[str]) -> dict[str, float]:
    from crossget_cli.data.choice import choice_accuracy, format_options, parse_choice

    questions = [f"{q}\n{format_options(options)}" for q, options in zip(data.questions, data.options)]
    answers = _answers(io, data, questions, config, "multiple-choice", report)
    return choice_accuracy([parse_choice(a, o) for a, o in zip(answers, data.options)], data.answers)


_TASK_RUNNERS = {
    "retrieval": _run_retrieval,
    "zeroshot": _run_zeroshot,
    "captioning": _run_captioning,
    "vqa": _run_vqa,
    "multiple-choice": _run_multiple_choice,
}
