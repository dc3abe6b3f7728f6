"""transformers CLIP: ``CLIPModel``, ``CLIPVisionModel(WithProjection)``,
``CLIPTextModel(WithProjection)``.

The towers are found by structure (embeddings, encoder.layers of
q/k/v/out-projection attention blocks, and their norms). Attention still runs
through the model's own attention implementation (SDPA by default, eager when
configured); the size bias travels in the additive attention mask. The tower
forwards follow ``CLIPVisionModel.forward`` / ``CLIPTextModel.forward`` of
transformers (with modifications: the cross slot, the CrossGET blocks, and
pooling at the tracked EOT position).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

from crossget_cli.core import TokenState
from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.base import Adapter, ModelInputs, Tower
from crossget_cli.adapters.registry import register_adapter
from crossget_cli.adapters.tower import run_tower, split_heads, tower_state, uses_reduced_path

_MASKABLE_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")


def attention_function(attn: nn.Module):
    impl = getattr(attn.config, "_attn_implementation", None) or "eager"
    if impl == "eager":
        return sys.modules[type(attn).__module__].eager_attention_forward
    if impl not in _MASKABLE_IMPLEMENTATIONS:
        raise CrossGetError(
            f"attention implementation {impl!r} cannot take the token-size bias",
            "load the model with attn_implementation='sdpa' (or 'eager')",
        )
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[impl]


def attention_residual(layer: nn.Module, x: torch.Tensor, state: TokenState, need_weights: bool = False):
    """``x + attention(layer_norm1(x))`` of a CLIP encoder layer with the state's
    size bias, and the full-width ``q``, ``k`` (``[N, T, D]``). With
    ``need_weights`` attention runs eagerly and its post-softmax weights
    ``[N, heads, T, T]`` are returned too (else ``None``)."""
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
    heads = attn.num_heads
    mask = state.attention_mask(x, explicit_causal=True)
    function = sys.modules[type(attn).__module__].eager_attention_forward if need_weights else attention_function(attn)
    out, weights = function(
        attn,
        split_heads(q, heads),
        split_heads(k, heads),
        split_heads(v, heads),
        mask,
        scaling=attn.scale,
        dropout=attn.dropout if layer.training else 0.0,
        is_causal=False,
    )
    x = x + attn.out_proj(out.reshape(x.shape[0], x.shape[1], -1))
    return x, q, k, weights if need_weights else None


def _block_forward(layer: nn.Module, x: torch.Tensor, state: TokenState, r: int) -> torch.Tensor:
    x, q, k, _ = attention_residual(layer, x, state)
    if r > 0:
        x = state.reduce(x, k, q, r, layer.self_attn.num_heads)
    return x + layer.mlp(layer.layer_norm2(x))


def _output(last_hidden_state: torch.Tensor, pooled: torch.Tensor):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled)


def wanted_hidden(output_hidden_states, depth: int) -> set[int]:
    """Indices (0 = the first block's input) of the hidden states asked for:
    ``True`` for all, or an index or list of indices (negative from the end)."""
    if output_hidden_states is True:
        return set(range(depth + 1))
    if output_hidden_states is None or output_hidden_states is False:
        return set()
    layers = [output_hidden_states] if isinstance(output_hidden_states, int) else list(output_hidden_states)
    return {i if i >= 0 else depth + 1 + i for i in layers}


def hidden_state_recorder(output_hidden_states, depth: int) -> tuple[list | None, Callable | None]:
    """What a reducing tower needs to return ``hidden_states``: the list the record hook
    fills (``None`` entries where not asked for) and that hook for ``run_tower``; both
    ``None`` when no hidden state is asked for."""
    wanted = wanted_hidden(output_hidden_states, depth)
    if not wanted:
        return None, None
    hidden: list[torch.Tensor | None] = [None] * (depth + 1)

    def keep(index: int, h: torch.Tensor) -> None:
        if index in wanted:
            hidden[index] = h

    return hidden, keep


class ReducingVisionTower:
    #: the encoder-layer forward with reduction (LLaVA swaps in its reducer)
    crossget_block = staticmethod(_block_forward)

    def forward(self, pixel_values=None, output_hidden_states=None, interpolate_pos_encoding=False, **kwargs):
        """``hidden_states`` (when asked for) hold the cross slot and as many
        tokens as each block left; unrequested entries are ``None``."""
        x = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        x = self.pre_layrnorm(x)
        encoder = self.encoder
        hidden, keep = hidden_state_recorder(output_hidden_states, len(encoder.layers))
        x = run_tower(x, encoder, "cross_image", encoder.layers, self.crossget_block, tower_state(encoder), keep)
        out = _output(x, self.post_layernorm(x[:, 0]))
        out.hidden_states = tuple(hidden) if hidden is not None else None
        return out


class _ReducingTextTower:
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        encoder = self.encoder
        if inputs_embeds is None and not uses_reduced_path(self, encoder.crossget_schedule):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        if input_ids is None:
            raise CrossGetError("the text tower needs input_ids", "pass tokenized text")
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        x = self.embeddings(
            input_ids=None if inputs_embeds is not None else input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        eos = getattr(self, "eos_token_id", None) or getattr(self.config, "eos_token_id", 2)
        if eos == 2:  # legacy configs pool at the highest id, as transformers does
            pooled_idx = input_ids.argmax(dim=-1)
        else:
            pooled_idx = (input_ids == eos).int().argmax(dim=-1)
        state = tower_state(encoder, input_ids=input_ids, pooled_idx=pooled_idx)
        if attention_mask is not None:
            # The reference drops the mask (padding follows EOT, so causally it
            # never reaches the pooled token), but then padding is merged like
            # text and a caption's features depend on its batch's longest.
            state.pad(attention_mask.view(input_ids.shape).to(x.device))
        x = run_tower(x, encoder, "cross_text", encoder.layers, _block_forward, state)
        x = self.final_layer_norm(x)
        return _output(x, x[torch.arange(x.shape[0], device=x.device), state.pooled_idx])


def _is_clip_layer(layer: nn.Module) -> bool:
    attn = getattr(layer, "self_attn", None)
    return (
        attn is not None
        and all(isinstance(getattr(attn, p, None), nn.Linear) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
        and all(hasattr(layer, p) for p in ("layer_norm1", "layer_norm2", "mlp"))
        and hasattr(attn, "config")
    )


def tower_modality(module: nn.Module) -> str | None:
    layers = getattr(getattr(module, "encoder", None), "layers", None)
    if not hasattr(module, "embeddings") or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    if not all(_is_clip_layer(layer) for layer in layers):
        return None
    if hasattr(module, "pre_layrnorm") and hasattr(module, "post_layernorm") and hasattr(module.embeddings, "patch_embedding"):
        return "vision"
    if hasattr(module, "final_layer_norm") and hasattr(module.embeddings, "token_embedding"):
        return "text"
    return None


def _find_towers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Innermost modules that are CLIP towers (transformers 4 nests a
    ``*Transformer`` inside ``*Model``; 5 does not)."""
    found = []
    for module in model.modules():
        modality = tower_modality(module)
        if modality is not None and not any(m is not module and tower_modality(m) for m in module.modules()):
            found.append((modality, module))
    return found


def _features(out, projected_name: str) -> torch.Tensor:
    """Features from whatever a CLIP class returns: a tensor (transformers 4's
    get_*_features), ``*_embeds`` of the WithProjection classes, or the pooler."""
    if isinstance(out, torch.Tensor):
        return out
    projected = getattr(out, projected_name, None)
    return projected if projected is not None else out.pooler_output


@register_adapter("hf-clip")
class HFClipAdapter(Adapter):
    description = "transformers CLIPModel, CLIPVisionModel(WithProjection), CLIPTextModel(WithProjection)"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        return config is not None and hasattr(config, "model_type") and bool(_find_towers(model))

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        from crossget_cli.adapters.hf_clip import tiny

        return dict(tiny.MODELS)

    def towers(self, model: nn.Module) -> list[Tower]:
        towers = []
        for modality, module in _find_towers(model):
            layer = module.encoder.layers[0]
            attn = layer.self_attn
            attention_function(attn)
            if modality == "vision":
                name, tokens = "cross_image", module.embeddings.num_positions + 1
            else:
                name, tokens = "cross_text", module.config.max_position_embeddings + 1
            towers.append(
                Tower(
                    modality,
                    module.encoder,
                    name,
                    len(module.encoder.layers),
                    attn.embed_dim,
                    attn.num_heads,
                    tokens,
                    tuple(module.encoder.layers),
                )
            )
        return towers

    def inputs(self, model: nn.Module) -> ModelInputs:
        image_size = context = vocab = sot = eot = None
        for modality, module in _find_towers(model):
            if modality == "vision":
                image_size = module.config.image_size
            else:
                cfg = module.config
                context, vocab = cfg.max_position_embeddings, cfg.vocab_size
                sot = cfg.bos_token_id if cfg.bos_token_id is not None and cfg.bos_token_id < vocab else vocab - 2
                eot = cfg.eos_token_id if cfg.eos_token_id not in (None, 2) and cfg.eos_token_id < vocab else vocab - 1
        return ModelInputs(image_size, context, vocab, sot, eot)

    def tasks(self, model: nn.Module) -> tuple[str, ...]:
        """Both towers retrieve and classify; a lone tower (CLIPVisionModel, ...) only encodes."""
        both = {modality for modality, _ in _find_towers(model)} == {"vision", "text"}
        return super().tasks(model) if both else ()

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if hasattr(model, "get_image_features"):
            out = model.get_image_features(pixel_values=images)
        else:
            out = model(pixel_values=images)
        return _features(out, "image_embeds")

    def encode_text(
        self, model: nn.Module, token_ids: torch.Tensor, token_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        extra = {} if token_embeddings is None else {"inputs_embeds": token_embeddings}
        if hasattr(model, "get_text_features"):
            out = model.get_text_features(input_ids=token_ids, **extra)
        else:
            out = model(input_ids=token_ids, **extra)
        return _features(out, "text_embeds")

    def token_embedding(self, model: nn.Module) -> nn.Embedding:
        text = dict(_find_towers(model)).get("text")
        if text is None:
            return super().token_embedding(model)  # a lone vision tower
        return text.embeddings.token_embedding

    def cross_norm_and_projection(self, model: nn.Module, modality: str) -> tuple[nn.LayerNorm, torch.Tensor]:
        tower = dict((m, module) for m, module in _find_towers(model))[modality]
        name = "visual_projection" if modality == "vision" else "text_projection"
        projection = getattr(model, name, None)
        if projection is None:
            raise CrossGetError(f"{type(model).__name__} has no {name}", "L_JS needs a model with projections, e.g. CLIPModel")
        norm = tower.pre_layrnorm if modality == "vision" else tower.final_layer_norm
        return norm, projection.weight.t()

    def logit_scale(self, model: nn.Module) -> nn.Parameter:
        if not hasattr(model, "logit_scale"):
            raise CrossGetError(f"{type(model).__name__} has no logit_scale", "the contrastive loss needs CLIPModel")
        return model.logit_scale

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        mixins = {"vision": ReducingVisionTower, "text": _ReducingTextTower}
        return [(module, mixins[modality]) for modality, module in _find_towers(model)]
