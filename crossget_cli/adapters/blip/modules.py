"""The BLIP modules a patch swaps in (class mixins): the reducing ViT and text
encoder, the modules that cross-attend to merged image tokens with their log-size
bias, and the scope that hands the image token sizes from one to the other
(see :mod:`.adapter` for what is reduced and why)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crossget_cli.adapters.tower import merge_heads, run_tower, size_bias_enabled, split_heads, tower_state, uses_reduced_path
from crossget_cli.core import TokenState
from crossget_cli.core.state import Slot
from crossget_cli.errors import CrossGetError

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
        if scope is not None:  # the consumers' cross-attention bias: none with the size bias off
            scope["sizes"] = sizes if state.size_bias else None
        x = self.post_layernorm(x)
        # transformers applies post_layernorm to the pooled token a second time.
        return _vision_output_class()(last_hidden_state=x, pooler_output=self.post_layernorm(x[:, 0]), token_sizes=sizes)


def consumer_sizes(vision_model: nn.Module, sizes: torch.Tensor | None) -> torch.Tensor | None:
    """The image token ``sizes`` a consumer biases its cross-attention with:
    ``None`` (no bias) when the reducing vision tower has the size bias off."""
    return sizes if size_bias_enabled(vision_model.encoder) else None


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


def consumer_swaps(consumer: nn.Module, mixin: type) -> list[tuple[nn.Module, type]]:
    swaps = [(consumer, mixin)]
    for layer in consumer.encoder.layer:
        cross = getattr(layer, "crossattention", None)
        if cross is not None:
            swaps.append((cross.self, _MaskedCrossAttention))
    return swaps


class ReducingTextEncoder(ImageConsumer):
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
