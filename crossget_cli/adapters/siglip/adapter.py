"""open_clip SigLIP: ``CustomTextCLIP`` with a timm ViT image tower (``TimmModel``
around a ``VisionTransformer`` with ``global_pool='map'``) and a bidirectional
text tower pooled at its last token.

SigLIP has no CLS token. The image tower is patched as the ``timm-vit`` family
patches a MAP-pooled ViT (:mod:`crossget_cli.adapters.timm_vit`): only the cross
slot is protected, the initial slot is the mean of the patch tokens, and the MAP
head pools the merged tokens with the ``log(size)`` bias. The text tower pools
its last token (no EOT search): that token plays EOT's role (protected, its
query is the guide, it is pooled), and since merges keep order it stays the
last real token before the cross slot. Every text token attends to the text
cross slot (no causal mask), so it is carried forward like the vision slot,
starting from a copy of the pooled token's embedding.

The text block forward follows open_clip's ``ResidualAttentionBlock.forward``
(with modifications, as :mod:`crossget_cli.adapters.openclip` does: full-width
q/k kept for matching, the size bias in SDPA's mask, the reduction step
between attention and MLP).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from crossget_cli.adapters.base import Adapter, ModelInputs, Tower
from crossget_cli.adapters.openclip.adapter import encode_openclip_text, image_size
from crossget_cli.adapters.registry import register_adapter
from crossget_cli.adapters.timm_vit.adapter import ReducingViT, is_vit, vit_tower
from crossget_cli.adapters.tower import merge_heads, run_tower, split_heads, tower_state, uses_reduced_path
from crossget_cli.core import TokenState
from crossget_cli.errors import CrossGetError


def detached_call(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with every parameter of ``module`` detached: gradients
    reach the inputs only (L_JS trains the cross tokens, nothing else)."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, args)


def project_cross_tokens(
    tokens: torch.Tensor, norm: nn.Module, pool: nn.Module | None = None, projection: nn.Linear | None = None
) -> torch.Tensor:
    """``[L*N, D]`` cross tokens -> ``[L*N, E]`` for L_JS, every parameter
    detached (SPEC §4, adapted to SigLIP): the tower's final norm, then for
    vision the MAP head applied to each cross token alone (SigLIP's image
    embedding is the head's output, no linear projection), for text the
    projection head."""
    x = detached_call(norm, tokens)
    if pool is not None:
        return detached_call(pool, x[:, None])
    return detached_call(projection, x)


def sigmoid_logits(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """SigLIP's ``[N_image, N_text]`` logits ``exp(scale) * cos + bias``
    (``sigmoid`` of them is the match probability)."""
    cos = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    logits = cos * scale.exp()
    return logits if bias is None else logits + bias


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's loss: ``-sum log sigmoid(z_ij * logit_ij) / N`` over every
    image-caption pair, ``z_ij = +1`` for a matching pair (equal image ids;
    default: the diagonal) and ``-1`` otherwise. The logit scale is not clamped:
    SigLIP's trained scales exceed CLIP's ln 100."""
    logits = sigmoid_logits(image_features, text_features, logit_scale, logit_bias)
    if image_ids is None:
        image_ids = torch.arange(logits.shape[0], device=logits.device)
    labels = (image_ids[:, None] == image_ids[None, :]).to(logits.dtype) * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


def _check_text_blocks(blocks: nn.Module) -> tuple[int, int]:
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise CrossGetError("text tower: no transformer blocks found", "expected open_clip's Transformer.resblocks")
    for block in blocks:
        attn = getattr(block, "attn", None)
        plain = all(hasattr(block, p) for p in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")) and not hasattr(block, "ln_1_kv")
        plain = (
            plain and getattr(attn, "in_proj_weight", None) is not None and isinstance(getattr(attn, "out_proj", None), nn.Linear)
        )
        if isinstance(attn, nn.MultiheadAttention):
            plain = plain and attn.bias_k is None and not attn.add_zero_attn
        else:
            plain = plain and all(getattr(attn, n, None) is None for n in ("logit_scale", "head_scale"))
            plain = plain and all(isinstance(getattr(attn, n, nn.Identity()), nn.Identity) for n in ("ln_q", "ln_k", "ln_inner"))
        if not plain:
            raise CrossGetError(
                f"text tower: block {type(block).__name__} is not a plain packed-qkv attention block",
                "CrossGET supports open_clip text towers with nn.MultiheadAttention or open_clip's plain Attention",
            )
    return blocks[0].attn.in_proj_weight.shape[1], blocks[0].attn.num_heads


def text_block_forward(block: nn.Module, x: torch.Tensor, state: TokenState, r: int) -> torch.Tensor:
    """open_clip ``ResidualAttentionBlock.forward``, bidirectional, with CrossGET (module doc)."""
    attn = block.attn
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    dropout = getattr(attn, "dropout", getattr(getattr(attn, "attn_drop", None), "p", 0.0))
    out = F.scaled_dot_product_attention(
        split_heads(q, heads),
        split_heads(k, heads),
        split_heads(v, heads),
        attn_mask=state.attention_mask(x),
        dropout_p=dropout if block.training else 0.0,
    )
    out = attn.out_proj(merge_heads(out))
    if hasattr(block, "ln_attn"):
        out = block.ln_attn(out)
    x = x + block.ls_1(out)
    if r > 0:
        x = state.reduce(x, k, q, r, heads)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def last_token_state(holder: nn.Module, input_ids: torch.Tensor, num_tokens: int) -> TokenState:
    """The state of a SigLIP text tower: no CLS, bidirectional, the last token
    pooled and protected, the cross slot carried forward (module doc)."""
    n = input_ids.shape[0]
    pooled = torch.full((n,), num_tokens - 1, dtype=torch.long, device=input_ids.device)
    return tower_state(holder, protect_first=False, input_ids=input_ids, pooled_idx=pooled, causal=False, propagate_cross=True)


class ReducingSiglipText:
    """Mixin for open_clip ``TextTransformer`` (``CustomTextCLIP.text``) of a SigLIP."""

    def forward(self, text: torch.Tensor, token_embeddings: torch.Tensor | None = None):
        transformer = self.transformer
        reduced = uses_reduced_path(self, transformer.crossget_schedule)
        if token_embeddings is None and not reduced:
            return super().forward(text)
        if self.output_tokens:
            raise CrossGetError("text tower with output_tokens=True is not supported", "set output_tokens=False")
        dtype = transformer.get_cast_dtype()
        tokens = self.token_embedding(text) if token_embeddings is None else token_embeddings
        x = tokens.to(dtype) + self.positional_embedding[: text.shape[1]].to(dtype)
        if not reduced:  # the original computation, from the given embeddings
            x = transformer(x)
            pooled = self.ln_final(x)[:, -1]
        else:
            state = last_token_state(transformer, text, text.shape[1])
            checkpoint = getattr(transformer, "grad_checkpointing", False)
            x = run_tower(
                x, transformer, "cross_text", transformer.resblocks, text_block_forward, state, checkpoint_blocks=checkpoint
            )
            x = self.ln_final(x)
            pooled = x[torch.arange(x.shape[0], device=x.device), state.pooled_idx]
        projection = self.text_projection
        if projection is None:
            return pooled
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection


def _siglip_text(model: nn.Module) -> nn.Module | None:
    text = getattr(model, "text", None)
    if text is None or not all(hasattr(text, a) for a in ("token_embedding", "transformer", "ln_final", "pool_type")):
        return None
    return text


@register_adapter("openclip-siglip")
class OpenClipSiglipAdapter(Adapter):
    description = "open_clip SigLIP (CustomTextCLIP: timm ViT image tower with MAP pooling, bidirectional last-token text)"
    causal_text = False

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        trunk = getattr(getattr(model, "visual", None), "trunk", None)
        return trunk is not None and is_vit(trunk) and _siglip_text(model) is not None

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        from crossget_cli.adapters.siglip import tiny

        return dict(tiny.OPENCLIP_MODELS)

    def towers(self, model: nn.Module) -> list[Tower]:
        text = _siglip_text(model)
        if text.attn_mask is not None or text.pool_type != "last":
            raise CrossGetError(
                f"open_clip text tower with a causal mask or pool_type={text.pool_type!r}",
                "this adapter patches SigLIP's bidirectional, last-token text tower",
            )
        if text.cls_emb is not None or text.use_pad_mask:
            raise CrossGetError("open_clip text tower with a class token or padding mask", "use a SigLIP text tower")
        if len(model.visual.head) > 0:
            raise CrossGetError("open_clip timm tower with a projection head", "use timm_proj='none' (SigLIP)")
        width, heads = _check_text_blocks(text.transformer.resblocks)
        blocks = tuple(text.transformer.resblocks)
        text_tower = Tower(
            "text",
            text.transformer,
            "cross_text",
            len(blocks),
            width,
            heads,
            text.context_length + 1,
            blocks,
            protect_first=False,
        )
        return [vit_tower(model.visual.trunk), text_tower]

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        return [(model.visual.trunk, ReducingViT), (model.text, ReducingSiglipText)]

    def inputs(self, model: nn.Module) -> ModelInputs:
        text = model.text
        return ModelInputs(image_size(model), text.context_length, text.vocab_size, text.vocab_size - 2, text.vocab_size - 1)

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model.encode_image(images)

    def encode_text(
        self, model: nn.Module, token_ids: torch.Tensor, token_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        return encode_openclip_text(model, token_ids, token_embeddings)

    def token_embedding(self, model: nn.Module) -> nn.Embedding:
        return model.text.token_embedding

    def cross_norm_and_projection(self, model: nn.Module, modality: str) -> tuple[nn.LayerNorm, torch.Tensor]:
        if modality == "vision":
            raise CrossGetError("SigLIP's image embedding is a MAP head, not a linear projection", "use project_cross")
        return model.text.ln_final, model.text.text_projection.weight.t()

    def project_cross(self, model: nn.Module, modality: str, tokens: torch.Tensor) -> torch.Tensor:
        if modality == "vision":
            trunk = model.visual.trunk
            return project_cross_tokens(tokens, trunk.norm, pool=trunk.attn_pool)
        return project_cross_tokens(tokens, model.text.ln_final, projection=model.text.text_projection)

    def logit_scale(self, model: nn.Module) -> nn.Parameter:
        return model.logit_scale

    def logit_bias(self, model: nn.Module) -> nn.Parameter | None:
        return getattr(model, "logit_bias", None)

    def contrastive_loss(self, model, image_features, text_features, image_ids=None) -> torch.Tensor:
        return sigmoid_loss(image_features, text_features, self.logit_scale(model), self.logit_bias(model), image_ids)
