"""timm ``VisionTransformer``: image classifiers (CLS token, ``global_pool='token'``)
and MAP-pooled ViTs without a CLS token (``global_pool='map'``: SigLIP's image
tower, which open_clip wraps in its ``TimmModel``).

The blocks are timm's pre-norm ``Block`` with a packed-qkv ``Attention``; the
block forward below follows ``Block.forward`` and ``Attention.forward`` of timm
(with modifications: full-width q/k kept for matching, the size bias as SDPA's
``attn_mask``, and the reduction step between attention and MLP), and keeps
timm's kernel choice (fused SDPA, or the explicit product when
``fused_attn`` is off). The tower forward follows
``VisionTransformer.forward_features`` / ``forward_head``.

Without a CLS token (``cls_token is None``) token 0 is an ordinary patch: only
the cross slot is protected (``Tower.protect_first``) and the initial cross slot
is the mean of the patch tokens. The MAP head (``AttentionPoolLatent``) attends
over the merged tokens, the cross slot excluded, with ``log(size)`` added to its
logits (proportional attention, SPEC §7); with nothing merged it runs as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from crossget_cli.adapters.base import Adapter, ModelInputs, Tower
from crossget_cli.adapters.registry import register_adapter
from crossget_cli.adapters.tower import run_tower, tower_state
from crossget_cli.config import ReductionConfig
from crossget_cli.core import TokenState
from crossget_cli.errors import CrossGetError

#: The pooling the patched forward reproduces (timm's ``global_pool``).
SUPPORTED_POOLS = ("token", "map")


def is_vit(module: nn.Module) -> bool:
    """Whether ``module`` looks like timm's ``VisionTransformer`` (by structure)."""
    return all(hasattr(module, a) for a in ("patch_embed", "blocks", "norm_pre", "norm", "fc_norm", "head", "_pos_embed")) and (
        hasattr(module, "num_prefix_tokens") and isinstance(module.blocks, nn.Sequential)
    )


def _check_block(block: nn.Module, where: str) -> None:
    parts = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    missing = [p for p in parts if not hasattr(block, p)]
    if missing:
        raise CrossGetError(f"{where}: block {type(block).__name__} has no {missing[0]}", "expected timm's pre-norm Block")
    attn = block.attn
    plain = isinstance(getattr(attn, "qkv", None), nn.Linear) and isinstance(getattr(attn, "proj", None), nn.Linear)
    plain = plain and all(isinstance(getattr(attn, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm"))
    plain = plain and getattr(attn, "gate", None) is None and attn.qkv.out_features == 3 * attn.proj.in_features
    if not plain:
        raise CrossGetError(
            f"{where}: attention {type(attn).__name__} is not plain packed-qkv self-attention",
            "CrossGET supports timm ViT blocks without qk-norm, scale-norm or gating",
        )


def check_vit(trunk: nn.Module, where: str = "timm ViT") -> None:
    """Refuse a timm ViT the patched forward would not reproduce faithfully."""
    has_cls = getattr(trunk, "cls_token", None) is not None
    if trunk.num_prefix_tokens != int(has_cls):
        raise CrossGetError(
            f"{where}: {trunk.num_prefix_tokens} prefix tokens (register tokens) are not supported", "use a ViT without registers"
        )
    pool = "map" if getattr(trunk, "attn_pool", None) is not None else trunk.global_pool
    if pool not in SUPPORTED_POOLS or (pool == "token" and not has_cls):
        raise CrossGetError(f"{where}: global_pool={pool!r} is not supported", "use global_pool='token' (with CLS) or 'map'")
    if pool == "map" and getattr(trunk, "pool_include_prefix", False):
        raise CrossGetError(f"{where}: MAP pooling over the prefix tokens is not supported", "use pool_include_prefix=False")
    if getattr(trunk, "dynamic_img_size", False) or trunk.pos_embed is None:
        raise CrossGetError(f"{where}: dynamic image size / no position embedding", "use a fixed-size ViT")
    for block in trunk.blocks:
        _check_block(block, where)


def vit_tower(trunk: nn.Module) -> Tower:
    """The vision :class:`Tower` of a timm ViT ``trunk`` (checked with :func:`check_vit`)."""
    check_vit(trunk)
    attn = trunk.blocks[0].attn
    patches = trunk.patch_embed.num_patches
    tokens = patches + trunk.num_prefix_tokens + 1
    return Tower(
        "vision",
        trunk,
        "cross_image",
        len(trunk.blocks),
        attn.proj.out_features,
        attn.num_heads,
        tokens,
        tuple(trunk.blocks),
        protect_first=trunk.cls_token is not None,
    )


def vit_block_forward(block: nn.Module, x: torch.Tensor, state: TokenState, r: int) -> torch.Tensor:
    """timm ``Block.forward`` with CrossGET (see the module doc)."""
    attn = block.attn
    n, t, _ = x.shape
    qkv = attn.qkv(block.norm1(x))
    q, k, v = qkv.reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    mask = state.attention_mask(x)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        scores = scores if mask is None else scores + mask
        out = attn.attn_drop(scores.softmax(dim=-1)) @ v
    out = attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(n, t, attn.attn_dim)))
    x = x + block.drop_path1(block.ls1(out))
    if r > 0:
        width = attn.attn_dim
        x = state.reduce(x, qkv[..., width : 2 * width], qkv[..., :width], r, attn.num_heads)
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def log_size_bias(sizes: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``[N, 1, 1, T]`` ``log(size)`` in ``like``'s dtype for an attention over
    ``T`` merged tokens (proportional attention, SPEC §7), ``None`` when every size is 1."""
    if sizes is None:
        return None
    return sizes.view(sizes.shape[0], 1, 1, -1).log().to(like.dtype)


def pool_tokens(trunk: nn.Module, x: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
    """timm ``VisionTransformer.pool`` of the merged tokens ``x`` (cross slot
    dropped) with their ``sizes``: CLS, or the MAP head with the size bias."""
    if trunk.attn_pool is None:
        return x[:, 0]
    start = trunk.num_prefix_tokens
    x = x[:, start:]
    sizes = None if sizes is None else sizes[:, start : start + x.shape[1]]
    return trunk.attn_pool(x, attn_mask=log_size_bias(sizes, x))


def _reduced_features(trunk: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = trunk.patch_embed(x)
    x = trunk._pos_embed(x)
    x = trunk.patch_drop(x)
    x = trunk.norm_pre(x)
    state = tower_state(trunk, protect_first=trunk.cls_token is not None)
    x = run_tower(
        x,
        trunk,
        "cross_image",
        trunk.blocks,
        vit_block_forward,
        state,
        checkpoint_blocks=getattr(trunk, "grad_checkpointing", False),
    )
    sizes = state.bias_sizes  # the MAP head's bias: none with the size bias off
    return trunk.norm(x), None if sizes is None else sizes[:, : x.shape[1]]


def _no_mask(attn_mask, is_causal) -> None:
    if attn_mask is not None or is_causal:
        raise CrossGetError("a patched timm ViT takes no attention mask", "call it on images only")


class ReducingViT:
    """Mixin for timm ``VisionTransformer``: the blocks reduce, the head pools
    the merged tokens by their sizes. ``forward_features`` returns the merged
    tokens (their sizes are not returned; ``forward`` pools with them)."""

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        _no_mask(attn_mask, is_causal)
        return _reduced_features(self, x)[0]

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        _no_mask(attn_mask, is_causal)
        x, sizes = _reduced_features(self, x)
        x = self.head_drop(self.fc_norm(pool_tokens(self, x, sizes)))
        return self.head(x)


@register_adapter("timm-vit")
class TimmViTAdapter(Adapter):
    description = "timm VisionTransformer (CLS-token classifiers, MAP-pooled ViTs)"
    reduces = ("vision",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return is_vit(model)

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        from crossget_cli.adapters.timm_vit import tiny

        return dict(tiny.MODELS)

    def towers(self, model: nn.Module) -> list[Tower]:
        return [vit_tower(model)]

    def apply(self, model: nn.Module, config: ReductionConfig) -> nn.Module:
        r = config.r_for("text")
        if any(r) if isinstance(r, tuple) else r:
            raise CrossGetError(
                f"{self.name} models merge no text tokens (image classifiers), got text_r={r}", "pass vision_r only"
            )
        return super().apply(model, config)

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        return [(model, ReducingViT)]

    def inputs(self, model: nn.Module) -> ModelInputs:
        return ModelInputs(model.patch_embed.img_size[0], None, None, None, None)

    def tasks(self, model: nn.Module) -> tuple[str, ...]:
        return ()

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The classifier's logits (the pooled features when it has no head)."""
        return model(images)
