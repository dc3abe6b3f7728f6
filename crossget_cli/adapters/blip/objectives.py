"""Fine-tuning objectives of the BLIP family (``crossget compress --finetune --objective``).

* ``blip-retrieval``: ITC (soft targets, BLIP's temperature 0.07) + ITM on the
  hardest in-batch negatives + L_JS between the vision and text cross tokens
  (SPEC §4), on image-caption pairs.
* ``blip-caption``: the decoder's LM loss on image-caption pairs + L_JS.
* ``blip-vqa``: the answer decoder's LM loss on VQA questions with their most
  frequent answer + L_JS.

Captioning and VQA reduce only the ViT, so no text cross token exists; their
L_JS pairs the vision cross tokens with the *text side's pooled-slot states*:
the hidden state of position 0 ([DEC] for the decoder, [CLS] for the question
encoder) entering each text layer, detached, as LLaVA's text cross token is at
position 0 (SPEC §6). Both sides go through a LayerNorm without affine (widths
must match, as in BLIP-base) and no projection; layers are aligned as SPEC §6
repeats vision layers over LLM layers. The detached target means L_JS trains
only the vision cross tokens.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.patching import reduction_config
from crossget_cli.core import collect_cross_tokens, contrastive_loss, js_loss
from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.adapters.contrastive import ClipObjective
from crossget_cli.adapters.training import FinetuneConfig, Objective, register_objective


def _require(model: nn.Module, task: str) -> None:
    adapter = find_adapter(model)
    if adapter.name != "blip":
        raise CrossGetError(f"objective for BLIP {task} on a {adapter.name} model", "use a BLIP model, or --objective clip")
    adapter.require_task(model, task)


def _crossget(model: nn.Module) -> bool:
    config = reduction_config(model)
    return config is not None and config.method == "crossget"


def _stack(items, io: ModelIO) -> torch.Tensor:
    return torch.stack([it[0] for it in items]).to(io.device)


def _cross_rows(cross: dict, modality: str) -> torch.Tensor:
    if not cross[modality]:
        raise CrossGetError("no cross tokens were injected in this forward", "patch with --method crossget and train mode")
    return cross[modality][-1]


def align_layers(rows: torch.Tensor, batch: int, num_from: int, num_to: int) -> torch.Tensor:
    """Layer-major ``[num_from * batch, D]`` rows repeated to ``num_to`` layers:
    layer ``i`` repeated ``⌊(i+1)L_t/L_v⌋ − ⌊iL_t/L_v⌋`` times (SPEC §6)."""
    if num_from == num_to:
        return rows
    layers = rows.view(num_from, batch, -1)
    index = [i for i in range(num_from) for _ in range((i + 1) * num_to // num_from - i * num_to // num_from)]
    return layers[index].reshape(num_to * batch, -1)


def _text_slot_states(layers: nn.ModuleList):
    """Context manager collecting position 0 of the input of each text layer."""
    states: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        states.append(hidden[:, 0].detach())

    class _Collect:
        def __enter__(self):
            self.handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
            return states

        def __exit__(self, *exc):
            for handle in self.handles:
                handle.remove()

    return _Collect()


def _js_to_text_slots(vision: torch.Tensor, text_states: list[torch.Tensor], batch: int) -> torch.Tensor:
    """L_JS between vision cross tokens and the text side's position-0 states."""
    text = torch.cat(text_states)  # layer-major
    num_text = len(text_states)
    num_vision = vision.shape[0] // batch
    if vision.shape[-1] != text.shape[-1]:
        raise CrossGetError(
            f"L_JS needs equal widths: vision {vision.shape[-1]} vs text {text.shape[-1]}", "use --js-weight 0 for this model"
        )
    vision = align_layers(vision, batch, num_vision, num_text)
    norm = lambda z: F.layer_norm(z, z.shape[-1:])  # noqa: E731
    return js_loss(norm(vision), norm(text))


@register_objective("blip-retrieval")
class BlipRetrievalObjective(ClipObjective):
    """ITC + ITM + L_JS on image-caption pairs; ``total = w (itc + itm) + w_js js``."""

    parts = ("itc", "itm", "js")

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        _require(model, "retrieval")
        adapter = find_adapter(model)
        images = _stack(items, io)
        texts = io.tokenize([it[1] for it in items]).to(io.device)
        image_ids = torch.tensor([it[2] for it in items], device=io.device)
        crossget = _crossget(model)
        with collect_cross_tokens() as cross:
            tokens, sizes = adapter.image_tokens(model, images)
            image_features = model.vision_proj(tokens[:, 0])
            text_features = adapter.encode_text(model, texts)
        itc = contrastive_loss(image_features, text_features, adapter.logit_scale(model), image_ids)
        itm = self._itm(model, adapter, tokens, sizes, texts, image_features, text_features, image_ids)
        js = itc.new_zeros(())
        if crossget:
            js = js_loss(
                adapter.project_cross(model, "vision", _cross_rows(cross, "vision")),
                adapter.project_cross(model, "text", _cross_rows(cross, "text")),
            )
        return {"itc": itc, "itm": itm, "js": js, "total": config.task_weight * (itc + itm) + config.js_weight * js}

    @staticmethod
    def _itm(model, adapter, tokens, sizes, texts, image_features, text_features, image_ids) -> torch.Tensor:
        """BLIP's ITM: each positive pair, and for each image its most similar
        caption of another image, and for each caption its most similar other image."""
        with torch.no_grad():
            sim = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
            same = image_ids[:, None] == image_ids[None, :]
            if bool(same.all()):
                raise CrossGetError("ITM needs captions of at least two images per batch", "raise --batch-size")
            hard_text = sim.masked_fill(same, float("-inf")).argmax(dim=1)
            hard_image = sim.t().masked_fill(same, float("-inf")).argmax(dim=1)
        n = tokens.shape[0]
        rows = torch.arange(n, device=tokens.device)
        image_idx = torch.cat([rows, rows, hard_image])
        text_idx = torch.cat([rows, hard_text, rows])
        size = None if sizes is None else sizes[image_idx]
        logits = adapter.itm_logits(model, tokens[image_idx], size, texts[text_idx])
        labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(logits.device)
        return F.cross_entropy(logits, labels)


class _Questions(Dataset):
    """(image, question, answer) of annotated VQA data; the answer is the most
    frequent human answer."""

    def __init__(self, data, transform):
        if data.answers is None:
            raise CrossGetError("VQA fine-tuning needs answers", "pass --annotations with the VQAv2 annotation JSON")
        self.images = data.image_dataset(transform)
        self.questions = data.questions
        self.answers = [Counter(a).most_common(1)[0][0] for a in data.answers]

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int):
        return self.images[index][1], self.questions[index], self.answers[index]


def _decoder_labels(io: ModelIO, texts: list[str], model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder ids (first token [DEC]), mask and labels (padding -100)."""
    tokenizer = io.loaded.tokenizer
    if tokenizer is None:
        raise CrossGetError("fine-tuning a BLIP decoder needs the model's tokenizer", "save the processor with the model")
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=40, return_tensors="pt").to(io.device)
    ids = enc["input_ids"].clone()
    ids[:, 0] = model.config.text_config.bos_token_id
    labels = ids.masked_fill(enc["attention_mask"] == 0, -100)
    return ids, enc["attention_mask"], labels


class _GenerativeObjective(Objective):
    parts = ("lm", "js")

    def _js(self, vision_rows, states, batch, crossget: bool, like: torch.Tensor) -> torch.Tensor:
        return _js_to_text_slots(vision_rows, states, batch) if crossget else like.new_zeros(())


@register_objective("blip-caption")
class BlipCaptionObjective(_GenerativeObjective):
    """LM loss of BLIP's captioning decoder + L_JS (see the module doc)."""

    def dataset(self, io: ModelIO, config: FinetuneConfig) -> Dataset:
        return ClipObjective.dataset(self, io, config)

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        _require(model, "captioning")
        images = _stack(items, io)
        ids, mask, labels = _decoder_labels(io, [it[1] for it in items], model)
        crossget = _crossget(model)
        with collect_cross_tokens() as cross, _text_slot_states(model.text_decoder.bert.encoder.layer) as states:
            lm = model(pixel_values=images, input_ids=ids, attention_mask=mask, labels=labels).loss
        js = self._js(_cross_rows(cross, "vision") if crossget else None, states, len(items), crossget, lm)
        return {"lm": lm, "js": js, "total": config.task_weight * lm + config.js_weight * js}


@register_objective("blip-vqa")
class BlipVqaObjective(_GenerativeObjective):
    """LM loss of BLIP's answer decoder + L_JS; the text side of L_JS is the
    question encoder (which cross-attends to the reduced image tokens)."""

    def dataset(self, io: ModelIO, config: FinetuneConfig) -> Dataset:
        from crossget_cli.data.vqa import load_vqa

        data = load_vqa(config.data, annotations=config.annotations, image_root=config.image_root, split=None, limit=config.limit)
        return _Questions(data, io.transform)

    def losses(self, model: nn.Module, io: ModelIO, items: list[Any], config: FinetuneConfig) -> dict[str, torch.Tensor]:
        _require(model, "vqa")
        images = _stack(items, io)
        tokenizer = io.loaded.tokenizer
        if tokenizer is None:
            raise CrossGetError("fine-tuning BLIP VQA needs the model's tokenizer", "save the processor with the model")
        question = tokenizer([it[1] for it in items], padding="longest", return_tensors="pt").to(io.device)
        answer_ids, _, labels = _decoder_labels(io, [it[2] for it in items], model)
        crossget = _crossget(model)
        with collect_cross_tokens() as cross, _text_slot_states(model.text_encoder.encoder.layer) as states:
            lm = model(
                input_ids=question["input_ids"],
                attention_mask=question["attention_mask"],
                pixel_values=images,
                decoder_input_ids=answer_ids,
                labels=labels,
            ).loss
        js = self._js(_cross_rows(cross, "vision") if crossget else None, states, len(items), crossget, lm)
        return {"lm": lm, "js": js, "total": config.task_weight * lm + config.js_weight * js}
