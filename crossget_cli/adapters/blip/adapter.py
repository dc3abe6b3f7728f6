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

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crossget_cli.core import TokenState
from crossget_cli.core.state import Slot
from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.base import Adapter, ModelInputs, Tower
from crossget_cli.adapters.generation import decode, generation_kwargs
from crossget_cli.adapters.tower import merge_heads, run_tower, split_heads, tower_state, uses_reduced_path
from crossget_cli.adapters.registry import register_adapter

#: Holds ``{"sizes": [N, T] float32}`` of the last reduced image forward while a
#: patched top-level ``forward``/``generate``/``get_image_features`` runs.
_IMAGE_SIZES = Slot()


def _dropout(attn: nn.Module) -> float:
    drop = getattr(attn, "dropout", None)
    return drop.p if isinstance(drop, nn.Dropout) else float(getattr(attn, "attention_dropout", 0.0))


def _vision_block(layer: nn.Module, x: torch.Tensor, state: TokenState, r: int) -> torch.Tensor:
    """``BlipEncoderLayer``/``Blip2EncoderLayer`` with the size bias and the
    reduction step between the attention residual and the MLP."""
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    q, k, v = attn.qkv(h).chunk(3, dim=-1)  # full width, bias included (BLIP-2: k has none)
    heads = attn.num_heads
    out = F.scaled_dot_product_attention(
        split_heads(q, heads),
        split_heads(k, heads),
        split_heads(v, heads),
        attn_mask=state.attention_mask(x),
        dropout_p=_dropout(attn) if layer.training else 0.0,
        scale=attn.scale,
    )
    x = x + attn.projection(merge_heads(out))
    if r > 0:
        x = state.reduce(x, k, q, r, heads)
    return x + layer.mlp(layer.layer_norm2(x))


def _text_block(layer: nn.Module, x: torch.Tensor, state: TokenState, r: int) -> torch.Tensor:
    """``BlipTextLayer`` without cross-attention (the unimodal ITC pass): BERT's
    post-norm self-attention, then the reduction, then the feed-forward."""
    attn = layer.attention.self
    q, k, v = attn.query(x), attn.key(x), attn.value(x)
    heads = attn.num_attention_heads
    out = F.scaled_dot_product_attention(
        split_heads(q, heads),
        split_heads(k, heads),
        split_heads(v, heads),
        attn_mask=state.attention_mask(x),
        dropout_p=attn.dropout.p if layer.training else 0.0,
        scale=1 / math.sqrt(attn.attention_head_size),
    )
    x = layer.attention.output(merge_heads(out), x)
    if r > 0:
        x = state.reduce(x, k, q, r, heads)
    return layer.feed_forward_chunk(x)


@functools.cache
def _vision_output_class():
    """A ``BaseModelOutputWithPooling`` with the sizes of the merged tokens
    (transformers is imported lazily, as in every adapter)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    @dataclass
    class ReducedVisionOutput(BaseModelOutputWithPooling):
        """``token_sizes``: ``[N, T]`` float32 sizes of the merged tokens of
        ``last_hidden_state``; ``None`` while every size is 1."""

        token_sizes: torch.Tensor | None = None

    return ReducedVisionOutput


class ReducingVisionTower:
    """``BlipVisionModel.forward``/``Blip2VisionModel.forward`` of transformers
    (with modifications: the cross slot, the CrossGET blocks, the sizes)."""

    def forward(self, pixel_values=None, interpolate_pos_encoding=False, **kwargs):
        if pixel_values is None:
            raise CrossGetError("the vision tower needs pixel_values", "pass preprocessed images")
        x = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        encoder = self.encoder
        state = tower_state(encoder)
        x = run_tower(x, encoder, "cross_image", encoder.layers, _vision_block, state)
        sizes = None
        if state.sizes is not None:
            sizes = state.sizes[:, : x.shape[1], 0]  # the cross slot is last, and dropped
        scope = _IMAGE_SIZES.value
        if scope is not None:
            scope["sizes"] = sizes
        x = self.post_layernorm(x)
        # transformers applies post_layernorm to the pooled token a second time.
        return _vision_output_class()(last_hidden_state=x, pooler_output=self.post_layernorm(x[:, 0]), token_sizes=sizes)


def image_attention_bias(sizes: torch.Tensor, batch: int, dtype: torch.dtype, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, 1, 1, T]`` additive cross-attention mask: ``log(size)`` of each
    image token (SPEC §7), ``-inf`` where a 2-D ``mask`` is 0. Rows are repeated
    when the consumer's batch is a multiple of the images' (beams, or several
    questions per image), in ``repeat_interleave`` order as ``generate`` does."""
    n = sizes.shape[0]
    if batch % n:
        raise CrossGetError(f"{batch} cross-attention rows for {n} reduced images", "pass the image tokens of the same forward")
    sizes = sizes.float()
    if batch != n:
        sizes = sizes.repeat_interleave(batch // n, dim=0)
    if mask is not None and mask.dim() == 2:
        sizes = sizes.masked_fill(mask.to(sizes.device) == 0, 0.0)
    return sizes.log().to(dtype).view(batch, 1, 1, -1)


def _consumer_bias(module: nn.Module, encoder_hidden_states, encoder_attention_mask):
    """The mask a patched image consumer passes on: the size bias when the
    encoder states are the reduced image tokens of the current scope."""
    scope = _IMAGE_SIZES.value
    sizes = None if scope is None else scope.get("sizes")
    if sizes is None or encoder_hidden_states is None or encoder_hidden_states.shape[1] != sizes.shape[1]:
        return encoder_attention_mask
    if encoder_attention_mask is not None and encoder_attention_mask.dim() == 4:
        return encoder_attention_mask  # already prepared (e.g. by the caller)
    dtype = next(module.parameters()).dtype
    return image_attention_bias(sizes, encoder_hidden_states.shape[0], dtype, encoder_attention_mask)


class ImageConsumer:
    """A module that cross-attends to the reduced image tokens."""

    def forward(self, *args, encoder_hidden_states=None, encoder_attention_mask=None, **kwargs):
        encoder_attention_mask = _consumer_bias(self, encoder_hidden_states, encoder_attention_mask)
        return super().forward(
            *args, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask, **kwargs
        )


class _MaskedCrossAttention:
    """``BlipTextSelfAttention`` of a cross-attention block. transformers' BLIP
    hands the encoder mask to it as ``attention_mask`` and then reads only
    ``encoder_attention_mask`` (so the mask is dropped); this passes it on, so
    the size bias reaches the logits."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None, **kwargs):
        if encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = attention_mask
        return super().forward(
            hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            **kwargs,
        )


def _consumer_swaps(consumer: nn.Module, mixin: type) -> list[tuple[nn.Module, type]]:
    swaps = [(consumer, mixin)]
    for layer in consumer.encoder.layer:
        cross = getattr(layer, "crossattention", None)
        if cross is not None:
            swaps.append((cross.self, _MaskedCrossAttention))
    return swaps


class _ReducingTextEncoder(ImageConsumer):
    """``BlipTextModel`` of the retrieval class: the unimodal (ITC) pass runs the
    CrossGET blocks; the multimodal (ITM) pass cross-attends to the reduced
    image tokens with the size bias."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        encoder_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        **kwargs,
    ):
        encoder = self.encoder
        reduce = (
            encoder_hidden_states is None
            and encoder_embeds is None
            and not kwargs.get("is_decoder")
            and hasattr(encoder, "crossget_schedule")
            and uses_reduced_path(self, encoder.crossget_schedule)
        )
        if not reduce:
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                encoder_embeds=encoder_embeds,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                **kwargs,
            )
        from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

        if input_ids is None:
            raise CrossGetError("the text tower needs input_ids", "pass tokenized text")
        x = self.embeddings(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)
        n = x.shape[0]
        pooled = torch.zeros(n, dtype=torch.long, device=x.device)  # [CLS]
        state = tower_state(encoder, input_ids=input_ids, pooled_idx=pooled)
        state.causal = False
        if attention_mask is not None:
            state.pad(attention_mask.to(x.device))
        x = run_tower(x, encoder, "cross_text", encoder.layer, _text_block, state)
        pooled_output = self.pooler(x) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=x, pooler_output=pooled_output)


class ImageSizesScope:
    """Top-level class: open a scope in which the vision tower hands its token
    sizes to the image consumer."""

    def forward(self, *args, **kwargs):
        with _IMAGE_SIZES.holding({}):
            return super().forward(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with _IMAGE_SIZES.holding({}):
            return super().generate(*args, **kwargs)

    def get_image_features(self, *args, **kwargs):
        with _IMAGE_SIZES.holding({}):
            return super().get_image_features(*args, **kwargs)


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
            return swaps + _consumer_swaps(model.text_encoder, _ReducingTextEncoder)
        if kind == "vqa":
            return swaps + _consumer_swaps(model.text_encoder, ImageConsumer)
        return swaps + _consumer_swaps(model.text_decoder.bert, ImageConsumer)

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
        (``None``: all 1), for ITM re-ranking."""
        out = model.vision_model(pixel_values=images)
        return out.last_hidden_state, getattr(out, "token_sizes", None)

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
