"""transformers BLIP: ``BlipForImageTextRetrieval``, ``BlipForConditionalGeneration``
and ``BlipForQuestionAnswering`` (and the BLIP-style ViT that BLIP-2 shares, see
:mod:`.blip2`).

What is reduced:

* the ViT (``vision_model``) of every class, with a vision cross token and
  cross-guided importance (SPEC §1-§3). Its output keeps the merged tokens; the
  token sizes travel with it;
* the unimodal text encoder of the retrieval class (``text_encoder`` without
  ``encoder_hidden_states``: the ITC features), with a text cross token. BERT
  attends bidirectionally and pools at [CLS] (position 0), so [CLS] is the
  guide and pooled token (the role EOT plays in CLIP) and the text cross token
  *is* attended to by every text token, unlike CLIP's causal text tower.

The module that cross-attends to the image tokens (the text decoder for
captioning, the text encoder for VQA and ITM, the Q-Former of BLIP-2) gets the
merged image tokens with ``log(size)`` added to its cross-attention logits, as
a 4-D additive ``encoder_attention_mask``, so a merged token keeps its weight.
The sizes are handed from the vision tower to that module through a scope that
the patched top-level ``forward``/``generate`` open; beam search repeats the
encoder states per beam, and the bias is repeated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.base import Adapter, ModelInputs, Tower
from crossget_cli.adapters.generation import decode, generation_kwargs
from crossget_cli.adapters.blip.modules import (
    ImageConsumer,
    ImageSizesScope,
    ReducingTextEncoder,
    ReducingVisionTower,
    consumer_sizes,
    consumer_swaps,
    image_attention_bias,
)
from crossget_cli.adapters.registry import register_adapter

# -- structure --------------------------------------------------------------------------


def is_blip_vision_tower(module: nn.Module) -> bool:
    """A BLIP-style ViT: embeddings with a patch embedding, ``encoder.layers`` of
    pre-norm blocks with a packed ``qkv`` attention, and ``post_layernorm``."""
    layers = getattr(getattr(module, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or not hasattr(module, "post_layernorm"):
        return False
    if not hasattr(getattr(module, "embeddings", None), "patch_embedding"):
        return False
    return all(
        isinstance(getattr(getattr(layer, "self_attn", None), "qkv", None), nn.Linear)
        and isinstance(getattr(layer.self_attn, "projection", None), nn.Linear)
        and hasattr(layer, "layer_norm1")
        and hasattr(layer, "layer_norm2")
        for layer in layers
    )


def _is_bert_encoder(module: nn.Module) -> bool:
    layers = getattr(getattr(module, "encoder", None), "layer", None)
    return (
        isinstance(layers, nn.ModuleList)
        and len(layers) > 0
        and hasattr(module, "embeddings")
        and all(hasattr(getattr(layer, "attention", None), "self") for layer in layers)
    )


def vision_tower(model: nn.Module) -> nn.Module:
    module = getattr(model, "vision_model", None)
    if module is None or not is_blip_vision_tower(module):
        raise CrossGetError(f"{type(model).__name__} has no BLIP-style vision_model", "use a BLIP or BLIP-2 model")
    return module


def vision_tower_spec(module: nn.Module) -> Tower:
    attn = module.encoder.layers[0].self_attn
    tokens = module.embeddings.num_positions + 1  # + the cross slot
    layers = module.encoder.layers
    return Tower("vision", module.encoder, "cross_image", len(layers), attn.embed_dim, attn.num_heads, tokens, tuple(layers))


def _kind(model: nn.Module) -> str | None:
    """``retrieval``, ``captioning`` or ``vqa`` for a BLIP model, by structure."""
    if not is_blip_vision_tower(getattr(model, "vision_model", nn.Module())) or hasattr(model, "qformer"):
        return None
    encoder, decoder = getattr(model, "text_encoder", None), getattr(model, "text_decoder", None)
    if encoder is not None and _is_bert_encoder(encoder) and hasattr(model, "itm_head") and hasattr(model, "vision_proj"):
        return "retrieval"
    if decoder is not None and _is_bert_encoder(getattr(decoder, "bert", nn.Module())):
        return "vqa" if encoder is not None else "captioning"
    return None


TASK_HEADS = {
    "retrieval": "BlipForImageTextRetrieval (ITC/ITM heads)",
    "captioning": "BlipForConditionalGeneration (a text decoder on the image)",
    "vqa": "BlipForQuestionAnswering (a question encoder and an answer decoder)",
}


def require_task(model: nn.Module, task: str, kind: str | None) -> None:
    """Raise a clear error when a model has no head for ``task``."""
    ok = {"retrieval": ("retrieval",), "captioning": ("captioning",), "vqa": ("vqa",)}.get(task, ())
    if kind not in ok:
        name = type(model).__name__
        raise CrossGetError(
            f"{name} has no head for task {task!r} (it is a {kind or 'model without a known head'} model)",
            f"{task} needs {TASK_HEADS.get(task, task)}; evaluate {name} with --task {kind}" if kind else "use another model",
        )


def special_id(config, *names: str, default: int | None = None) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


@register_adapter("blip")
class BlipAdapter(Adapter):
    description = "transformers BlipForImageTextRetrieval, BlipForConditionalGeneration, BlipForQuestionAnswering"
    causal_text = False  # BERT
    masks_text_padding = True
    own_attention_kernel = False  # SDPA where transformers runs its eager BLIP attention
    generation_defaults = {"num_beams": 3}  # beam search, as BLIP evaluates

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return _kind(model) is not None

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        from crossget_cli.adapters.blip import tiny

        return dict(tiny.MODELS)

    def tasks(self, model: nn.Module) -> tuple[str, ...]:
        kind = _kind(model)  # one task head per model class
        return (kind,) if kind else ()

    def reranks(self, model: nn.Module) -> bool:
        return _kind(model) == "retrieval"

    def towers(self, model: nn.Module) -> list[Tower]:
        towers = [vision_tower_spec(vision_tower(model))]
        if _kind(model) == "retrieval":
            text = model.text_encoder
            attn = text.encoder.layer[0].attention.self
            context = min(text.config.max_position_embeddings, 35)
            towers.append(
                Tower(
                    "text",
                    text.encoder,
                    "cross_text",
                    len(text.encoder.layer),
                    attn.all_head_size,
                    attn.num_attention_heads,
                    context + 1,
                    tuple(text.encoder.layer),
                )
            )
        return towers

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        kind = _kind(model)
        swaps = [(model, ImageSizesScope), (model.vision_model, ReducingVisionTower)]
        if kind == "retrieval":
            return swaps + consumer_swaps(model.text_encoder, ReducingTextEncoder)
        if kind == "vqa":
            return swaps + consumer_swaps(model.text_encoder, ImageConsumer)
        return swaps + consumer_swaps(model.text_decoder.bert, ImageConsumer)

    def inputs(self, model: nn.Module) -> ModelInputs:
        """The image size; the text side only for retrieval (the text encoder
        that runs alone, for ITC; generative models' text runs in ``generate``)."""
        vision = model.config.vision_config
        text = model.config.text_config
        if _kind(model) != "retrieval":
            return ModelInputs(vision.image_size, None, None, None, None)
        context = min(text.max_position_embeddings, 35)
        sot = special_id(text, "bos_token_id", default=1)
        eot = special_id(text, "sep_token_id", "eos_token_id", default=2)
        return ModelInputs(vision.image_size, context, text.vocab_size, sot, eot)

    def require_task(self, model: nn.Module, task: str) -> None:
        require_task(model, task, _kind(model))

    # -- retrieval (ITC/ITM) ---------------------------------------------------------------

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The ITC image feature (retrieval), else the vision tower's pooled output
        (image encoding of a generative model, for FLOPs and throughput)."""
        out = model.vision_model(pixel_values=images)
        if _kind(model) != "retrieval":
            return out.pooler_output
        return model.vision_proj(out.last_hidden_state[:, 0])

    def encode_text(
        self, model: nn.Module, token_ids: torch.Tensor, token_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        require_task(model, "retrieval", _kind(model))
        mask = (token_ids != special_id(model.config.text_config, "pad_token_id", default=0)).long()
        extra = {} if token_embeddings is None else {"inputs_embeds": token_embeddings}
        out = model.text_encoder(input_ids=token_ids, attention_mask=mask, **extra)
        return model.text_proj(out.last_hidden_state[:, 0])

    def image_tokens(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (reduced) image tokens ``[N, T, D]`` and their sizes ``[N, T]``
        (``None``: all 1, or the size bias off), for ITM re-ranking."""
        out = model.vision_model(pixel_values=images)
        return out.last_hidden_state, consumer_sizes(model.vision_model, getattr(out, "token_sizes", None))

    def itm_scores(
        self, model: nn.Module, image_embeds: torch.Tensor, sizes: torch.Tensor | None, token_ids: torch.Tensor
    ) -> torch.Tensor:
        """ITM logit of "match" for each (image tokens, caption) row pair."""
        return self.itm_logits(model, image_embeds, sizes, token_ids)[:, 1]

    def itm_logits(
        self, model: nn.Module, image_embeds: torch.Tensor, sizes: torch.Tensor | None, token_ids: torch.Tensor
    ) -> torch.Tensor:
        """``[N, 2]`` ITM logits (no match, match) of row-aligned image tokens
        (with their sizes, ``None``: all 1) and captions; [CLS] becomes [ENC] as
        in BLIP's image-grounded text encoder."""
        require_task(model, "retrieval", _kind(model))
        text_cfg = model.config.text_config
        mask = (token_ids != special_id(text_cfg, "pad_token_id", default=0)).long()
        ids = token_ids.clone()
        enc = getattr(model.config, "enc_token_id", None) or special_id(text_cfg, "bos_token_id")
        if enc is not None and enc < text_cfg.vocab_size:
            ids[:, 0] = enc
        dtype = next(model.text_encoder.parameters()).dtype
        if sizes is None:
            image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
        else:
            image_mask = image_attention_bias(sizes, image_embeds.shape[0], dtype)
        out = model.text_encoder(
            input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask
        )
        return model.itm_head(out.last_hidden_state[:, 0])

    def cross_norm_and_projection(self, model: nn.Module, modality: str) -> tuple[nn.LayerNorm, torch.Tensor]:
        require_task(model, "retrieval", _kind(model))
        if modality == "vision":
            return model.vision_model.post_layernorm, model.vision_proj.weight.t()
        return model.text_encoder.embeddings.LayerNorm, model.text_proj.weight.t()

    def logit_scale(self, model: nn.Module) -> nn.Parameter:
        """BLIP keeps a temperature ``temp`` (0.07) outside the HF classes; the
        log of its inverse, as a fixed parameter."""
        return nn.Parameter(torch.tensor(math.log(1 / 0.07)), requires_grad=False)

    # -- generation (captioning, VQA) -------------------------------------------------------

    def generate_captions(self, model: nn.Module, images: torch.Tensor, tokenizer=None, prompt: str | None = None, **generation):
        require_task(model, "captioning", _kind(model))
        kwargs = generation_kwargs(generation)
        input_ids = None
        if prompt:
            if tokenizer is None:
                raise CrossGetError("a caption prompt needs the model's tokenizer", "save the processor with the model")
            ids = tokenizer([prompt] * images.shape[0], return_tensors="pt")["input_ids"]
            input_ids = ids.to(images.device)
        with torch.inference_mode():
            out = model.generate(pixel_values=images, input_ids=input_ids, **kwargs)
        captions = decode(tokenizer, out)
        if prompt:
            low = prompt.strip().lower()
            captions = [c[len(low) :].strip() if c.lower().startswith(low) else c for c in captions]
        return captions

    def generation_calls(self, model: nn.Module, images: torch.Tensor, prompt_length: int = 8):
        """Callables for :func:`crossget_cli.profile.generation.time_generation`: the ViT on
        ``images``, and greedy ``generate`` of exactly ``n`` tokens (VQA: on a
        random question of ``prompt_length`` tokens)."""
        from crossget_cli.adapters.generation import GenerationCalls

        kind = _kind(model)
        require_task(model, "vqa" if kind == "vqa" else "captioning", kind)
        extra = {}
        if kind == "vqa":
            text = model.config.text_config
            gen = torch.Generator().manual_seed(0)
            ids = torch.randint(10, text.vocab_size, (images.shape[0], prompt_length), generator=gen)
            ids[:, 0], ids[:, -1] = special_id(text, "bos_token_id", default=1), special_id(text, "sep_token_id", default=2)
            extra = {"input_ids": ids.to(images.device), "attention_mask": torch.ones_like(ids).to(images.device)}
        return GenerationCalls(
            encode=lambda: model.vision_model(pixel_values=images),
            generate=lambda n: model.generate(pixel_values=images, min_new_tokens=n, max_new_tokens=n, num_beams=1, **extra),
        )

    def answer_questions(self, model: nn.Module, images: torch.Tensor, questions, tokenizer=None, prompt=None, **generation):
        require_task(model, "vqa", _kind(model))
        if tokenizer is None:
            raise CrossGetError("VQA needs the model's tokenizer", "save the processor with the model")
        text = [prompt.format(question=q) if prompt else q for q in questions]
        enc = tokenizer(text, padding="longest", return_tensors="pt").to(images.device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=enc["input_ids"],
                pixel_values=images,
                attention_mask=enc["attention_mask"],
                **generation_kwargs(generation),
            )
        return decode(tokenizer, out)
