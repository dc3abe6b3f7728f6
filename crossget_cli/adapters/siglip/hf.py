"""transformers SigLIP: ``SiglipModel``, ``SiglipVisionModel``, ``SiglipTextModel``.

The decisions are those of the open_clip SigLIP adapter (:mod:`.adapter`): no
CLS, so only the cross slot (and for text the pooled last token) is
protected; the vision cross slot starts as the mean of the patch tokens, the
text one as a copy of the pooled token and is carried forward (bidirectional
attention); the MAP head (``SiglipMultiheadAttentionPoolingHead``) pools the
merged tokens with the ``log(size)`` bias. Attention runs through the model's
own attention implementation, as for transformers CLIP (the size bias travels
in the additive mask). The tower forwards follow ``SiglipVisionModel.forward``
/ ``SiglipTextModel.forward`` of transformers (with modifications: the cross
slot, the CrossGET blocks, and size-aware pooling).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from crossget_cli.adapters.base import Adapter, ModelInputs, Tower
from crossget_cli.adapters.hf_clip.adapter import attention_function, attention_residual
from crossget_cli.adapters.registry import register_adapter
from crossget_cli.adapters.siglip.adapter import last_token_state, project_cross_tokens, sigmoid_loss
from crossget_cli.adapters.tower import run_tower, tower_state, uses_reduced_path
from crossget_cli.core import TokenState
from crossget_cli.errors import CrossGetError


def block_forward(layer: nn.Module, x: torch.Tensor, state: TokenState, r: int) -> torch.Tensor:
    """``SiglipEncoderLayer.forward`` with CrossGET: attention (the model's own
    implementation, size bias in the mask), the reduction step, the MLP."""
    x, q, k, _ = attention_residual(layer, x, state)
    if r > 0:
        x = state.reduce(x, k, q, r, layer.self_attn.num_heads)
    return x + layer.mlp(layer.layer_norm2(x))


def map_head(head: nn.Module, x: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
    """``SiglipMultiheadAttentionPoolingHead.forward`` (copied from transformers
    with the size bias added): the probe attends over the merged tokens ``x``
    with ``log(size)`` on its logits; without sizes the head runs as it is."""
    if sizes is None:
        return head(x)
    n = x.shape[0]
    probe = head.probe.repeat(n, 1, 1)
    bias = sizes.view(n, 1, -1).log().to(x.dtype).repeat_interleave(head.attention.num_heads, dim=0)  # [N * heads, 1, T]
    h = head.attention(probe, x, x, attn_mask=bias)[0]
    h = h + head.mlp(head.layernorm(h))
    return h[:, 0]


def _output(last_hidden_state: torch.Tensor, pooled: torch.Tensor | None):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled)


def _no_extra_outputs(kwargs: dict) -> None:
    if kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
        raise CrossGetError("a patched SigLIP tower returns no hidden states or attentions", "unpatch the model to inspect them")


class ReducingSiglipVision:
    """Mixin for ``SiglipVisionModel``."""

    def forward(self, pixel_values=None, interpolate_pos_encoding: bool | None = False, **kwargs):
        _no_extra_outputs(kwargs)
        x = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        encoder = self.encoder
        state = tower_state(encoder, protect_first=False)
        x = run_tower(x, encoder, "cross_image", encoder.layers, block_forward, state)
        x = self.post_layernorm(x)
        sizes = None if state.bias_sizes is None else state.bias_sizes[:, : x.shape[1]]  # the MAP head's bias
        return _output(x, map_head(self.head, x, sizes) if self.use_head else None)


class ReducingSiglipText:
    """Mixin for ``SiglipTextModel``. SigLIP is trained without a padding mask
    (captions padded to the full context, the last position pooled), which is
    what ``encode_text`` passes; a mask with padding is refused on the reduced path."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        encoder = self.encoder
        reduced = uses_reduced_path(self, encoder.crossget_schedule)
        if inputs_embeds is None and not reduced:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        _no_extra_outputs(kwargs)
        if input_ids is None:
            raise CrossGetError("the text tower needs input_ids", "pass tokenized text")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise CrossGetError(
                "a patched SigLIP text tower takes no padding mask",
                "pad to the full context and pass input_ids only, as SigLIP does",
            )
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        x = self.embeddings(
            input_ids=None if inputs_embeds is not None else input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        if not reduced:  # the original computation, from the given embeddings
            for layer in encoder.layers:
                x = layer(x, None)
            x = self.final_layer_norm(x)
            return _output(x, self.head(x[:, -1]))
        state = last_token_state(encoder, input_ids, x.shape[1])
        x = run_tower(x, encoder, "cross_text", encoder.layers, block_forward, state)
        x = self.final_layer_norm(x)
        return _output(x, self.head(x[torch.arange(x.shape[0], device=x.device), state.pooled_idx]))


def _siglip_layers(module: nn.Module) -> bool:
    layers = getattr(getattr(module, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    for layer in layers:
        attn = getattr(layer, "self_attn", None)
        projections = ("q_proj", "k_proj", "v_proj", "out_proj")
        if attn is None or not all(isinstance(getattr(attn, p, None), nn.Linear) for p in projections):
            return False
        if getattr(attn, "is_causal", True) or not all(hasattr(layer, p) for p in ("layer_norm1", "layer_norm2", "mlp")):
            return False
    return True


def tower_modality(module: nn.Module) -> str | None:
    """``"vision"``/``"text"`` for a SigLIP tower (bidirectional CLIP-style layers;
    vision: patch embedding, no CLS, post-norm and MAP head; text: final norm and head)."""
    embeddings = getattr(module, "embeddings", None)
    if embeddings is None or not _siglip_layers(module):
        return None
    if (
        hasattr(embeddings, "patch_embedding")
        and not hasattr(embeddings, "class_embedding")
        and hasattr(module, "post_layernorm")
    ):
        return "vision" if hasattr(module, "use_head") else None
    if (
        hasattr(embeddings, "token_embedding")
        and hasattr(module, "final_layer_norm")
        and isinstance(getattr(module, "head", None), nn.Linear)
    ):
        return "text"
    return None


def find_towers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(m, module) for module in model.modules() if (m := tower_modality(module)) is not None]


@register_adapter("hf-siglip")
class HFSiglipAdapter(Adapter):
    description = "transformers SiglipModel, SiglipVisionModel, SiglipTextModel"
    causal_text = False
    #: asked before hf-clip, whose text-tower test a SigLIP text tower also passes
    priority = 1

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(model, "config", None) is not None and bool(find_towers(model))

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        from crossget_cli.adapters.siglip import tiny

        return dict(tiny.HF_MODELS)

    def towers(self, model: nn.Module) -> list[Tower]:
        towers = []
        for modality, module in find_towers(model):
            attn = module.encoder.layers[0].self_attn
            attention_function(attn)
            if modality == "vision":
                if module.use_head and module.head.attention.batch_first is not True:
                    raise CrossGetError("SigLIP MAP head with a sequence-first attention", "expected transformers' pooling head")
                name, tokens = "cross_image", module.embeddings.num_patches + 1
            else:
                name, tokens = "cross_text", module.config.max_position_embeddings + 1
            layers = tuple(module.encoder.layers)
            towers.append(
                Tower(
                    modality,
                    module.encoder,
                    name,
                    len(layers),
                    attn.embed_dim,
                    attn.num_heads,
                    tokens,
                    layers,
                    protect_first=False,
                )
            )
        return towers

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        mixins = {"vision": ReducingSiglipVision, "text": ReducingSiglipText}
        return [(module, mixins[modality]) for modality, module in find_towers(model)]

    def inputs(self, model: nn.Module) -> ModelInputs:
        image_size = context = vocab = sot = eot = None
        for modality, module in find_towers(model):
            cfg = module.config
            if modality == "vision":
                image_size = cfg.image_size
            else:
                context, vocab = cfg.max_position_embeddings, cfg.vocab_size
                sot = cfg.bos_token_id if cfg.bos_token_id is not None and cfg.bos_token_id < vocab else vocab - 2
                eot = cfg.eos_token_id if cfg.eos_token_id is not None and cfg.eos_token_id < vocab else vocab - 1
        return ModelInputs(image_size, context, vocab, sot, eot)

    def tasks(self, model: nn.Module) -> tuple[str, ...]:
        """Both towers retrieve and classify; a lone tower only encodes."""
        both = {modality for modality, _ in find_towers(model)} == {"vision", "text"}
        return super().tasks(model) if both else ()

    def _tower(self, model: nn.Module, modality: str) -> nn.Module:
        towers = dict(find_towers(model))
        if modality not in towers:
            raise CrossGetError(f"{type(model).__name__} has no {modality} tower", f"use a SigLIP model with a {modality} tower")
        return towers[modality]

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        pooled = self._tower(model, "vision")(pixel_values=images).pooler_output
        if pooled is None:
            raise CrossGetError(
                f"{type(model).__name__} has no pooling head (vision_use_head=False)", "use a SigLIP with its MAP head"
            )
        return pooled

    def encode_text(
        self, model: nn.Module, token_ids: torch.Tensor, token_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        extra = {} if token_embeddings is None else {"inputs_embeds": token_embeddings}
        return self._tower(model, "text")(input_ids=token_ids, **extra).pooler_output

    def token_embedding(self, model: nn.Module) -> nn.Embedding:
        text = dict(find_towers(model)).get("text")
        if text is None:
            return super().token_embedding(model)  # a lone vision tower
        return text.embeddings.token_embedding

    def cross_norm_and_projection(self, model: nn.Module, modality: str) -> tuple[nn.LayerNorm, torch.Tensor]:
        if modality == "vision":
            raise CrossGetError("SigLIP's image embedding is a MAP head, not a linear projection", "use project_cross")
        text = self._tower(model, "text")
        return text.final_layer_norm, text.head.weight.t()

    def project_cross(self, model: nn.Module, modality: str, tokens: torch.Tensor) -> torch.Tensor:
        tower = self._tower(model, modality)
        if modality == "vision":
            return project_cross_tokens(tokens, tower.post_layernorm, pool=tower.head)
        return project_cross_tokens(tokens, tower.final_layer_norm, projection=tower.head)

    def logit_scale(self, model: nn.Module) -> nn.Parameter:
        if not hasattr(model, "logit_scale"):
            raise CrossGetError(f"{type(model).__name__} has no logit_scale", "the sigmoid loss needs SiglipModel")
        return model.logit_scale

    def logit_bias(self, model: nn.Module) -> nn.Parameter | None:
        return getattr(model, "logit_bias", None)

    def contrastive_loss(self, model, image_features, text_features, image_ids=None) -> torch.Tensor:
        return sigmoid_loss(image_features, text_features, self.logit_scale(model), self.logit_bias(model), image_ids)
