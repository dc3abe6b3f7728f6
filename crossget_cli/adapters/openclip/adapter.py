"""open_clip ``CLIP`` / ``CustomTextCLIP`` (and OpenAI-style CLIP checkpoints).

Cross tokens get the official CrossGET names, ``visual.transformer.cross_image``
and ``transformer.cross_text``, so an official state dict loads as it is.
The block forward below follows open_clip's ``ResidualAttentionBlock.forward``
(with modifications: full-width q/k kept for matching, the size bias in the
attention mask, and the reduction step between attention and MLP).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from crossget_cli.core import TokenState
from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.base import CONFIG_ATTR, Adapter, ModelInputs, Tower
from crossget_cli.adapters.tower import merge_heads, run_tower, split_heads, tower_state, uses_reduced_path
from crossget_cli.adapters.registry import register_adapter

_UNSUPPORTED_ATTENTION_PARTS = ("logit_scale", "head_scale")


def _check_attention(attn: nn.Module, where: str) -> None:
    """Accept ``nn.MultiheadAttention`` and open_clip's own SDPA ``Attention``
    when they are plain packed-qkv self-attention; anything else would run
    unfaithfully, so it is refused."""
    plain = getattr(attn, "in_proj_weight", None) is not None and isinstance(getattr(attn, "out_proj", None), nn.Linear)
    if isinstance(attn, nn.MultiheadAttention):
        plain = plain and attn.bias_k is None and not attn.add_zero_attn
    else:
        plain = plain and all(getattr(attn, part, None) is None for part in _UNSUPPORTED_ATTENTION_PARTS)
        plain = plain and all(isinstance(getattr(attn, n, nn.Identity()), nn.Identity) for n in ("ln_q", "ln_k", "ln_inner"))
    if not plain:
        raise CrossGetError(
            f"{where}: attention module {type(attn).__name__} is not plain packed-qkv self-attention",
            "CrossGET supports open_clip ViT/text towers with nn.MultiheadAttention or open_clip's plain Attention",
        )


def _check_blocks(blocks: nn.Module, where: str) -> tuple[int, int]:
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise CrossGetError(f"{where}: no transformer blocks found", "expected open_clip's Transformer.resblocks")
    for block in blocks:
        for part in ("ln_1", "attn", "ln_2", "mlp"):
            if not hasattr(block, part):
                raise CrossGetError(
                    f"{where}: block {type(block).__name__} has no {part}", "expected open_clip's ResidualAttentionBlock"
                )
        if hasattr(block, "ln_1_kv"):
            raise CrossGetError(f"{where}: cross-attention blocks are not supported", "patch the CLIP towers only")
        _check_attention(block.attn, where)
    first = blocks[0].attn
    return first.in_proj_weight.shape[1], first.num_heads


def _block_forward(block: nn.Module, x: torch.Tensor, state: TokenState, r: int) -> torch.Tensor:
    attn = block.attn
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    mask = state.attention_mask(x)
    dropout = getattr(attn, "dropout", getattr(getattr(attn, "attn_drop", None), "p", 0.0))
    out = F.scaled_dot_product_attention(
        split_heads(q, heads),
        split_heads(k, heads),
        split_heads(v, heads),
        attn_mask=mask,
        dropout_p=dropout if block.training else 0.0,
        is_causal=state.causal and mask is None,
    )
    out = attn.out_proj(merge_heads(out))
    if hasattr(block, "ln_attn"):
        out = block.ln_attn(out)
    x = x + block.ls_1(out)
    if r > 0:
        x = state.reduce(x, k, q, r, heads)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class _ReducingVisionTransformer:
    """Mixin for the vision ``Transformer``: runs the reducing blocks. The CrossGET
    cross slot is a copy of CLS appended after ``ln_pre``; the reference copies it
    before, but LayerNorm is per-token, so this is the same."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        state = tower_state(self)
        x = run_tower(
            x,
            self,
            "cross_image",
            self.resblocks,
            _block_forward,
            state,
            checkpoint_blocks=getattr(self, "grad_checkpointing", False),
        )
        return x if self.batch_first else x.transpose(0, 1)


def _pooled_index(owner: nn.Module, text: torch.Tensor) -> torch.Tensor:
    if owner.text_pool_type == "argmax":
        return text.argmax(dim=-1)
    eos = getattr(owner, "text_eos_id", None) or getattr(owner, "eos_id", None)
    return (text == eos).int().argmax(dim=-1)


def _encode_text_reduced(owner: nn.Module, text: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's text encoding with CrossGET: the pooled EOT position is the
    tracked one, since merging moves it."""
    transformer = owner.transformer
    dtype = transformer.get_cast_dtype()
    tokens = owner.token_embedding(text) if token_embeddings is None else token_embeddings
    x = tokens.to(dtype) + owner.positional_embedding[: text.shape[1]].to(dtype)
    state = tower_state(transformer, input_ids=text, pooled_idx=_pooled_index(owner, text))
    x = run_tower(
        x,
        transformer,
        "cross_text",
        transformer.resblocks,
        _block_forward,
        state,
        checkpoint_blocks=getattr(transformer, "grad_checkpointing", False),
    )
    x = owner.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), state.pooled_idx]
    projection = owner.text_projection
    if projection is None:
        return pooled
    return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection


class _ReducingCLIP:
    """Mixin for open_clip ``CLIP`` (text tower inline on the model)."""

    def encode_text(
        self, text: torch.Tensor, normalize: bool = False, token_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        if token_embeddings is None and not uses_reduced_path(self, self.transformer.crossget_schedule):
            return super().encode_text(text, normalize=normalize)
        features = _encode_text_reduced(self, text, token_embeddings)
        return F.normalize(features, dim=-1) if normalize else features


class _ReducingTextTransformer:
    """Mixin for open_clip ``TextTransformer`` (``CustomTextCLIP.text``)."""

    def forward(self, text: torch.Tensor, token_embeddings: torch.Tensor | None = None):
        if token_embeddings is None and not uses_reduced_path(self, self.transformer.crossget_schedule):
            return super().forward(text)
        if self.output_tokens:
            raise CrossGetError("text tower with output_tokens=True is not supported", "set output_tokens=False")
        return _encode_text_reduced(self, text, token_embeddings)


def image_size(model: nn.Module) -> int:
    """The side of the square images an open_clip model takes."""
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


def encode_openclip_text(model: nn.Module, token_ids: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """Text features of an open_clip CLIP or CustomTextCLIP; ``token_embeddings`` (prompt
    learning) replace the lookup, which only a patched text tower takes."""
    if token_embeddings is None:
        return model.encode_text(token_ids)
    if CONFIG_ATTR not in model.__dict__:
        raise CrossGetError("token_embeddings need a patched model", "call crossget_cli.patch(model, ...) first")
    if hasattr(model, "token_embedding"):
        return model.encode_text(token_ids, token_embeddings=token_embeddings)
    return model.text(token_ids, token_embeddings=token_embeddings)


def _text_owner(model: nn.Module) -> nn.Module | None:
    owner = getattr(model, "text", None) if not hasattr(model, "token_embedding") else model
    if owner is None or not hasattr(owner, "token_embedding") or not hasattr(owner, "transformer"):
        return None
    return owner


@register_adapter("openclip")
class OpenClipAdapter(Adapter):
    description = "open_clip CLIP / CustomTextCLIP with a ViT image tower (also OpenAI-style CLIP checkpoints)"
    own_attention_kernel = False  # SDPA where open_clip runs nn.MultiheadAttention

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        visual = getattr(model, "visual", None)
        return (
            visual is not None
            and hasattr(visual, "transformer")
            and hasattr(visual, "conv1")
            and hasattr(visual.transformer, "resblocks")
            and _text_owner(model) is not None
        )

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        from crossget_cli.adapters.openclip import tiny

        return dict(tiny.MODELS)

    def towers(self, model: nn.Module) -> list[Tower]:
        visual = model.visual
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise CrossGetError(
                "open_clip image tower pools with attention or averaging",
                "CrossGET reads out the class token: use a ViT with pool_type='tok'",
            )
        width, heads = _check_blocks(visual.transformer.resblocks, "image tower")
        grid = visual.grid_size[0] * visual.grid_size[1]
        blocks = visual.transformer.resblocks
        towers = [Tower("vision", visual.transformer, "cross_image", len(blocks), width, heads, 1 + grid + 1, tuple(blocks))]
        owner = _text_owner(model)
        if getattr(owner, "cls_emb", None) is not None or getattr(owner, "use_pad_mask", False):
            raise CrossGetError("open_clip text tower with a class token or padding mask", "use a CLIP-style causal text tower")
        if getattr(owner, "text_pool_type", "argmax") not in ("argmax", "eos"):
            raise CrossGetError(f"text pooling {owner.text_pool_type!r} is not supported", "use argmax (EOT) pooling")
        width, heads = _check_blocks(owner.transformer.resblocks, "text tower")
        blocks = owner.transformer.resblocks
        towers.append(
            Tower("text", owner.transformer, "cross_text", len(blocks), width, heads, owner.context_length + 1, tuple(blocks))
        )
        return towers

    def inputs(self, model: nn.Module) -> ModelInputs:
        owner = _text_owner(model)
        vocab = owner.vocab_size
        # open_clip's BPE tokenizer puts SOT/EOT at the end of its vocabulary.
        return ModelInputs(image_size(model), owner.context_length, vocab, vocab - 2, vocab - 1)

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model.encode_image(images)

    def encode_text(
        self, model: nn.Module, token_ids: torch.Tensor, token_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        return encode_openclip_text(model, token_ids, token_embeddings)

    def token_embedding(self, model: nn.Module) -> nn.Embedding:
        owner = _text_owner(model)
        return owner.token_embedding if owner is not None else super().token_embedding(model)

    def cross_norm_and_projection(self, model: nn.Module, modality: str) -> tuple[nn.LayerNorm, torch.Tensor]:
        if modality == "vision":
            return model.visual.ln_pre, model.visual.proj
        owner = _text_owner(model)
        projection = owner.text_projection
        return owner.ln_final, projection.weight.t() if isinstance(projection, nn.Linear) else projection

    def logit_scale(self, model: nn.Module) -> nn.Parameter:
        return model.logit_scale

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        owner = _text_owner(model)
        text_swap = (model, _ReducingCLIP) if owner is model else (owner, _ReducingTextTransformer)
        return [(model.visual.transformer, _ReducingVisionTransformer), text_swap]
