"""CLIP_benchmark (github.com/LAION-AI/CLIP_benchmark, ``pip install clip-benchmark``)
interop, both ways:

* **our results in its format**: :func:`clip_benchmark_results` turns a ``crossget eval``
  report (retrieval, zeroshot) into the JSON documents ``clip_benchmark eval`` writes
  (``{"dataset", "model", "pretrained", "task", "metrics", "language"}``, metrics as
  fractions under its names), which ``clip_benchmark build`` collects into a table;
  :func:`write_clip_benchmark` writes them (``crossget eval --format clip-benchmark``).
* **our models in its runner**: :func:`load_crossget` is a CLIP_benchmark model loader
  (``(model, transform, tokenizer)``) for any ``--model`` crossget loads, compressed
  exports included. CLIP_benchmark 1.6 keeps its loaders in a hard-coded dict
  (``clip_benchmark.models.TYPE2FUNC``, no entry points) and checks ``--model_type``
  against ``MODEL_TYPES``, so :func:`register` adds ``crossget`` to both, in place;
  ``python -m crossget_cli.harness.clip_benchmark eval --model_type crossget ...``
  registers it and runs CLIP_benchmark's own command line.

CLIP_benchmark is optional (``pip install 'crossget[clip-benchmark]'``): only
:func:`register` and :func:`main` import it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossget_cli.adapters.registry import find_adapter
from crossget_cli.errors import CrossGetError
from crossget_cli.files import check_writable, write_atomic

MODEL_TYPE = "crossget"
#: ``crossget eval`` task -> CLIP_benchmark task.
TASKS = {"retrieval": "zeroshot_retrieval", "zeroshot": "zeroshot_classification"}
#: CLIP_benchmark metric -> ``crossget eval`` metric (percent). Its ``text_retrieval`` is
#: image-to-text (our ``txt_r``: an image is a hit when any of its captions is in its
#: top k), ``image_retrieval`` text-to-image (our ``img_r``).
RETRIEVAL_METRICS = {
    **{f"image_retrieval_recall@{k}": f"img_r{k}" for k in (1, 5, 10)},
    **{f"text_retrieval_recall@{k}": f"txt_r{k}" for k in (1, 5, 10)},
}
CLASSIFICATION_METRICS = {"acc1": "top1", "acc5": "top5", "mean_per_class_recall": "mean_per_class_recall"}
#: CLIP_benchmark's default ``--output`` template, the file names of one result per model.
OUTPUT_TEMPLATE = "{dataset}_{pretrained}_{model}_{language}_{task}.json"


def clip_benchmark_results(report: dict[str, Any], pretrained: str | None = None, language: str = "en") -> list[dict]:
    """One CLIP_benchmark result document per model of a ``crossget eval`` report,
    in the report's model order. ``pretrained`` is the ``--pretrained`` the models
    were loaded with (``""`` when none was given: CLIP_benchmark's table joins
    ``model`` and ``pretrained`` into ``model_fullname``, so it must be a string)."""
    task = report["task"]
    if task not in TASKS:
        raise CrossGetError(
            f"--format clip-benchmark writes retrieval and zeroshot results, not {task}", "use --task retrieval or zeroshot"
        )
    names = RETRIEVAL_METRICS if task == "retrieval" else CLASSIFICATION_METRICS
    documents = []
    for model, scores in report["results"][task].items():
        missing = [ours for ours in names.values() if ours not in scores]
        if missing:
            raise CrossGetError(f"the {task} results of {model} have no {', '.join(missing)}", "re-run crossget eval")
        metrics = {theirs: scores[ours] / 100.0 for theirs, ours in names.items()}
        if task == "zeroshot" and report.get("num_classes", 5) < 5:
            metrics["acc5"] = float("nan")  # as CLIP_benchmark reports top-5 of fewer than 5 classes
        documents.append(
            {
                "dataset": report["config"]["data"],
                "model": model,
                "pretrained": pretrained or "",
                "task": TASKS[task],
                "metrics": metrics,
                "language": language,
            }
        )
    return documents


def result_file_name(document: dict) -> str:
    """CLIP_benchmark's default file name of a result, with ``/`` and ``:`` (paths,
    ``builtin:`` data, ``hf:`` ids) made safe for one file."""
    slug = {k: re.sub(r"[/:\\]+", "_", str(document[k])).strip("_") for k in ("dataset", "pretrained", "model", "language")}
    return OUTPUT_TEMPLATE.format(task=document["task"], **slug)


def check_output(output: str | Path, num_models: int) -> None:
    """Refuse, before evaluating, an ``--output`` that cannot take the results: a
    ``.json`` file holds one model's, a folder one file per model."""
    path = Path(output)
    if path.suffix == ".json":
        if num_models > 1:
            raise CrossGetError(
                f"--output {output} is one file, but {num_models} models write one CLIP_benchmark result each",
                "pass a folder (one file per model) or evaluate one --model",
            )
        check_writable(path)
    else:
        check_writable(path, folder=True)


def write_clip_benchmark(documents: Sequence[dict], output: str | Path) -> list[Path]:
    """Write the documents where :func:`check_output` accepts: ``output`` itself (a
    ``.json`` file, one model) or one file per model in the folder ``output``,
    named as CLIP_benchmark names them. Returns the files written."""
    check_output(output, len(documents))
    path = Path(output)
    targets = [path] if path.suffix == ".json" else [path / result_file_name(d) for d in documents]
    if len(set(targets)) != len(targets):
        raise CrossGetError("two models would write the same CLIP_benchmark file", "evaluate them in separate runs")
    for target, document in zip(targets, documents):
        text = json.dumps(document)
        write_atomic(target, lambda tmp, text=text: tmp.write_text(text))
    return targets


def json_lines(documents: Sequence[dict]) -> str:
    """The documents as JSON Lines (one per model), as ``crossget eval --format
    clip-benchmark`` prints them: each line is what CLIP_benchmark writes to a file."""
    return "".join(json.dumps(d) + "\n" for d in documents)


class EncoderPair(nn.Module):
    """A loaded crossget model as CLIP_benchmark calls one: ``encode_image(images)``
    and ``encode_text(token_ids)``, unnormalised (it normalises), through the
    model's adapter, so any family crossget evaluates works (transformers models
    have no ``encode_image`` of their own). Inputs are cast to the model's dtype."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.adapter = find_adapter(model)

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.adapter.encode_image(self.model, images.to(self._dtype()))
        return nn.functional.normalize(out, dim=-1) if normalize else out

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.adapter.encode_text(self.model, token_ids)
        return nn.functional.normalize(out, dim=-1) if normalize else out


def load_crossget(model_name: str, pretrained: str | None = None, cache_dir: str | None = None, device="cpu"):
    """CLIP_benchmark loader: ``(model, transform, tokenizer)`` for ``model_name``, any
    ``--model`` of crossget (an exported folder from ``crossget compress``, the built-in
    ``crossget-shapes-tiny``, an open_clip name, an HF id or folder).

    ``pretrained`` is crossget's ``--pretrained`` (an open_clip tag or weights file;
    ``"none"``: random weights of an architecture name, ignored by an exported
    folder); ``""`` passes none. ``cache_dir`` is unused (hub caches apply). The model
    is in eval mode on ``device``; ``transform`` maps a PIL image to its input tensor
    and ``tokenizer`` a list of strings to ``[N, context]`` ids, both the model's own.
    """
    from crossget_cli.loading.models import load_model
    from crossget_cli.loading.preprocessing import model_io

    io = model_io(load_model(model_name, pretrained or None), str(device))
    return EncoderPair(io.model).eval(), io.transform, io.tokenize


def register() -> None:
    """Make ``--model_type crossget`` known to CLIP_benchmark (idempotent). Its loader
    table and the list ``--model_type`` is checked against are module globals, so
    they are extended in place; call this before ``clip_benchmark.cli`` parses."""
    try:
        from clip_benchmark import models
    except ImportError as err:
        raise CrossGetError("CLIP_benchmark is not installed", "pip install 'crossget[clip-benchmark]'") from err
    models.TYPE2FUNC[MODEL_TYPE] = load_crossget
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)


def main(argv: Sequence[str] | None = None) -> int:
    """``clip_benchmark``'s command line with ``--model_type crossget`` registered;
    ``argv`` as its arguments (default: this process's)."""
    register()
    from clip_benchmark import cli

    saved = sys.argv
    sys.argv = ["clip_benchmark", *(sys.argv[1:] if argv is None else argv)]
    try:
        return cli.main() or 0
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
