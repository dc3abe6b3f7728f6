"""Fine-tuning LLaVA with CE + w L_JS (SPEC §6): ``crossget compress --finetune
--objective llava`` on LLaVA-format conversations.

Data: a JSON list (or JSONL) of LLaVA-Instruct records::

    {"id": "...", "image": "relative/path.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A cat."}, ...]}

Each conversation becomes ``BOS USER: {human} ASSISTANT: {gpt}EOS USER: ...``
(LLaVA-1.5's plain ``USER:/ASSISTANT:`` turns, no system prompt); the loss is
the cross-entropy on the assistant tokens only (and their EOS). The image
placeholder (added before the first question when missing) is expanded to the
model's reduced visual-token count.

L_JS compares the vision tower's cross tokens, mapped through the *detached*
multimodal projector (no LayerNorm) and repeated to the LLM's depth (vision
layer ``i`` ``floor((i+1) L_t / L_v) - floor(i L_t / L_v)`` times), with the
LLM's prefill cross tokens, row by row (:func:`~crossget_cli.core.js_loss`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.adapters.training import FinetuneConfig, Objective, register_objective

IGNORE = -100


class Conversations(Dataset):
    """``(pixel_values [3, H, W], [(human, gpt), ...])`` per record."""

    def __init__(self, path: str, image_root: str | None, transform, limit: int | None = None):
        from crossget_cli.data.images import ImageDataset, check_images_exist, join_root
        from crossget_cli.data.records import read_records, records_root

        file = Path(path)
        if not file.is_file():
            raise CrossGetError(f"training data not found: {path}", "pass a LLaVA-format JSON/JSONL file of conversations")
        rows = read_records(file)[:limit]
        if not rows:
            raise CrossGetError(f"{file} holds no conversations", "pass a file with at least one record")
        root = records_root(image_root, file)
        self.turns = [_turns(row, f"{file} record {n}") for n, row in enumerate(rows, 1)]
        paths = []
        for n, row in enumerate(rows, 1):
            if not row.get("image"):
                raise CrossGetError(f"{file} record {n} has no image", "text-only records are not supported; drop them")
            paths.append(join_root(root, str(row["image"])))
        check_images_exist(paths, os.fspath(file), image_root)
        self.images = ImageDataset(paths, transform)

    def __len__(self) -> int:
        return len(self.turns)

    def __getitem__(self, index: int):
        return self.images[index][1], self.turns[index]


def _turns(row: dict, where: str) -> list[tuple[str, str]]:
    messages = row.get("conversations")
    if not isinstance(messages, list) or len(messages) < 2:
        raise CrossGetError(f"{where} has no conversation", "give 'conversations': [{from: human, value}, {from: gpt, value}]")
    turns = []
    for human, gpt in zip(messages[0::2], messages[1::2]):
        if not (isinstance(human, dict) and isinstance(gpt, dict)) or (human.get("from"), gpt.get("from")) != ("human", "gpt"):
            raise CrossGetError(f"{where}: turns must alternate human, gpt", "fix the conversation")
        turns.append((str(human.get("value", "")), str(gpt.get("value", ""))))
    return turns


def conversation_batch(model: nn.Module, tokenizer, conversations: list[list[tuple[str, str]]]) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels`` (assistant tokens only),
    right padded, with the image placeholder expanded to the model's count."""
    from crossget_cli.adapters.llava.adapter import image_token, num_image_tokens

    placeholder = image_token(model, tokenizer)
    count = num_image_tokens(model)
    rows, targets = [], []
    for turns in conversations:
        ids = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        labels = [IGNORE] * len(ids)
        for n, (human, gpt) in enumerate(turns):
            if n == 0 and placeholder not in human:
                human = f"{placeholder}\n{human}"
            human = human.replace(placeholder, placeholder * count)
            prompt = tokenizer(f"USER: {human} ASSISTANT:", add_special_tokens=False)["input_ids"]
            answer = tokenizer(f" {gpt}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids += prompt + answer
            labels += [IGNORE] * len(prompt) + answer
        rows.append(ids)
        targets.append(labels)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([t + [IGNORE] * (width - len(t)) for t in targets]),
    }


def llm_depth_rows(vision_layers: int, llm_layers: int) -> torch.Tensor:
    """For each LLM layer, the vision layer whose cross token it is compared with:
    vision layer ``i`` repeated ``floor((i+1) L_t / L_v) - floor(i L_t / L_v)`` times."""
    return torch.tensor(
        [i for i in range(vision_layers) for _ in range((i + 1) * llm_layers // vision_layers - i * llm_layers // vision_layers)]
    )


def llava_js(model: nn.Module, vision_cross: torch.Tensor, text_cross: torch.Tensor) -> torch.Tensor:
    """L_JS of one forward: ``vision_cross`` ``[L_v*N, D_v]`` and ``text_cross``
    ``[L_t*N, H]``, layer-major."""
    from crossget_cli.adapters.llava.adapter import llava_core
    from crossget_cli.core import js_loss

    core = llava_core(model)
    projector = core.multi_modal_projector
    frozen = {name: p.detach() for name, p in projector.named_parameters()}
    projected = torch.func.functional_call(projector, frozen, (vision_cross,))
    vision_layers = len(core.vision_tower.encoder.layers)
    llm_layers = len(core.language_model.layers)
    n = vision_cross.shape[0] // vision_layers
    rows = projected.view(vision_layers, n, -1)[llm_depth_rows(vision_layers, llm_layers).to(projected.device)]
    return js_loss(rows.reshape(llm_layers * n, -1).float(), text_cross.float())


@register_objective("llava")
class LlavaObjective(Objective):
    """CE on the assistant tokens + 0.001 L_JS (SPEC §6, LLaVA-1.5-7B)."""

    parts = ("ce", "js")
    metric = "loss"
    default_js_weight = 0.001

    def dataset(self, io: ModelIO, config: FinetuneConfig) -> Dataset:
        if io.loaded.tokenizer is None:
            raise CrossGetError("no tokenizer was saved with the LLaVA model", "save one next to it")
        return Conversations(config.data, config.image_root, io.transform, config.limit)

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        from crossget_cli.core import collect_cross_tokens

        batch = conversation_batch(model, io.loaded.tokenizer, [turns for _, turns in items])
        batch = {k: v.to(io.device) for k, v in batch.items()}
        pixels = torch.stack([image for image, _ in items]).to(io.device)
        with collect_cross_tokens() as cross:
            ce = model(**batch, pixel_values=pixels, use_cache=False).loss
        if not cross["vision"] or not cross["text"]:
            raise CrossGetError("the model has no cross tokens to train with L_JS", "fine-tune a model patched with CrossGET")
        js = llava_js(model, cross["vision"][0], cross["text"][0])
        return {"ce": ce, "js": js, "total": config.task_weight * ce + config.js_weight * js}
