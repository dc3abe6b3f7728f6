"""``crossget train``: train or fine-tune a model *without* compressing it, and save
it in its own format (an open_clip folder, or a transformers folder).

It runs the fine-tuning loop (:func:`crossget_cli.train.loop.finetune`) on the
unpatched model (the ``clip`` objective is then plain ITC), so it serves two jobs:
training a small CLIP from scratch (``--pretrained none``; that is how the built-in
``crossget-shapes-tiny`` was made), and the *control* of an accuracy study: the
original model fine-tuned for the same steps as a compressed one. It sits with the
exports (above ``train``): it trains, then writes a folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from crossget_cli.adapters.model_io import OPEN_CLIP, LoadedModel
from crossget_cli.adapters.patching import is_patched
from crossget_cli.adapters.training import FinetuneConfig
from crossget_cli.errors import CrossGetError
from crossget_cli.export.compress import check_output, save_model_config
from crossget_cli.files import write_folder
from crossget_cli.loading.formats import DTYPES
from crossget_cli.loading.models import OPENCLIP_WEIGHTS_FILE, load_model

TRAINING_FILE = "training.json"


@dataclass
class TrainResult:
    output: Path
    training: dict[str, Any]  # what training.json holds; empty on non-zero ranks


def train(
    source: str,
    output: str | Path | None,
    config: FinetuneConfig,
    *,
    pretrained: str | None = None,
    save_dtype: str = "fp32",
    overwrite: bool = False,
    progress: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Load ``source`` (seeded, so ``--pretrained none`` initialises reproducibly),
    train it with ``config`` and save it to ``output`` with its weights in
    ``save_dtype``, its preprocessing and tokenizer, and ``training.json``."""
    from crossget_cli.adapters.training import get_objective, init_distributed, world_info
    from crossget_cli.files import sha256
    from crossget_cli.loading.preprocessing import model_io
    from crossget_cli.train.loop import finetune

    if save_dtype not in DTYPES:
        raise CrossGetError(f"unknown --save-dtype {save_dtype!r}", f"choose one of: {', '.join(DTYPES)}")
    if output is None:
        raise CrossGetError("no output folder given", "pass --output DIR")
    output = Path(output)
    check_output(output, overwrite)
    torch.manual_seed(config.seed)
    loaded = load_model(source, pretrained)
    if is_patched(loaded.model):
        raise CrossGetError(
            f"{source} is a compressed model", "fine-tune it with `crossget compress --finetune`; `train` takes an original"
        )
    init_distributed(config.device)
    io = model_io(loaded, config.device)
    objective = get_objective(config.objective)
    evaluate = objective.validator(config) if config.val_data else None
    result = finetune(io, config, progress=progress, evaluate=evaluate)
    loaded.model.to("cpu", torch.float32)
    modules = {name: module.cpu() for name, module in result.modules.items()}
    if world_info()[0] != 0:
        return TrainResult(output, {})
    training = {**result.to_dict(), "history": result.history, "source": source, "pretrained": pretrained}

    def fill(tmp: Path) -> None:
        weights = save_native(loaded, tmp, DTYPES[save_dtype])
        training["weights_sha256"] = sha256(weights)
        training["save_dtype"] = save_dtype
        (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=2, default=str))
        objective.export_files(modules, tmp)

    write_folder(output, fill)
    return TrainResult(output, training)


def save_native(loaded: LoadedModel, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write an unpatched model as its library saves it: ``open_clip_config.json`` +
    ``open_clip_model.safetensors`` (loadable by ``open_clip.create_model("local-dir:...")``),
    or a transformers folder with its tokenizer and image processor. Returns the weights file."""
    from safetensors.torch import save_file

    model = loaded.model
    save_model_config(loaded, folder)
    if loaded.checkpoint_format == OPEN_CLIP:
        state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / OPENCLIP_WEIGHTS_FILE), metadata={"format": "pt"})
        return folder / OPENCLIP_WEIGHTS_FILE
    model.to(dtype).save_pretrained(str(folder))  # rewrites config.json with the saved dtype
    model.to(torch.float32)
    return folder / "model.safetensors"
