"""The structure of transformers LLaVA-NeXT / LLaVA-OneVision models as CrossGET sees
it, the modules swapped in, and the visual-token counts.

Both classes split an image into "anyres" tiles (a base tile plus a grid of tiles,
``image_grid_pinpoints``), run the vision tower on every tile (each tile is a batch
element, so each is reduced alone with the same schedule), project the tokens of the
selected hidden state and *pack* them: the grid tiles are laid out as one ``H x W``
feature map, unpadded to the image's aspect ratio (OneVision also shrinks a large map
bilinearly, ``anyres_max_9``), an ``image_newline`` after each row, the base tile first.

Merged tokens have no place on a grid, so a tile whose tokens were reduced (or that
carries the kept cross slot) is packed *flat*: the base tile's tokens, then each grid
tile's tokens followed by one ``image_newline`` (a lone tile: its tokens and one
newline, as transformers does). Unpadding and OneVision's shrinking are skipped:
:func:`keeps_grid` says which path a model takes, :func:`image_token_count` counts.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from crossget_cli.adapters.base import METHOD_ATTR, SCHEDULE_ATTR, Tower
from crossget_cli.adapters.hf_clip.adapter import tower_modality as clip_tower_modality
from crossget_cli.adapters.hf_clip.adapter import hidden_state_recorder
from crossget_cli.adapters.llava.adapter import feature_layer, llava_block_forward, llava_core
from crossget_cli.adapters.siglip.hf import map_head
from crossget_cli.adapters.siglip.hf import tower_modality as siglip_tower_modality
from crossget_cli.adapters.tower import run_tower, tower_state
from crossget_cli.errors import CrossGetError


def anyres_core(model: nn.Module) -> nn.Module | None:
    """The module holding the vision tower, projector, LLM and ``image_newline`` of an
    anyres LLaVA (``LlavaNextModel``, ``LlavaOnevisionModel``), or ``None``."""
    core = llava_core(model)
    if core is None or not isinstance(getattr(core, "image_newline", None), nn.Parameter):
        return None
    if not hasattr(core, "pack_image_features") or not getattr(core.config, "image_grid_pinpoints", None):
        return None
    return core


def vision_kind(core: nn.Module) -> str | None:
    """``"clip"`` (CLS token, LLaVA-NeXT) or ``"siglip"`` (no CLS, OneVision) for the
    core's vision tower, ``None`` for another tower."""
    tower = core.vision_tower
    if clip_tower_modality(tower) == "vision":
        return "clip"
    if siglip_tower_modality(tower) == "vision":
        return "siglip"
    return None


def vision_tower(model: nn.Module) -> Tower:
    """The vision tower as :class:`Tower` (cross slot included in ``num_tokens``)."""
    core = anyres_core(model)
    vision = core.vision_tower
    attn = vision.encoder.layers[0].self_attn
    siglip = vision_kind(core) == "siglip"
    tokens = vision.embeddings.num_patches + 1 if siglip else vision.embeddings.num_positions + 1
    layers = tuple(vision.encoder.layers)
    return Tower("vision", vision.encoder, "cross_image", len(layers), attn.embed_dim, attn.num_heads, tokens, layers, not siglip)


def grid_side(model: nn.Module) -> int:
    """Patches per side of a tile."""
    vision = anyres_core(model).config.vision_config
    return vision.image_size // vision.patch_size


def tile_tokens(model: nn.Module) -> int:
    """Visual tokens per tile into the LLM, as the model is now: the tokens of the
    hidden state ``vision_feature_layer`` selects (cross slot included with CrossGET),
    less token 0 with the ``default`` strategy."""
    core = anyres_core(model)
    tokens = vision_tower(model).token_counts()[feature_layer(model)]
    return tokens - int(core.config.vision_feature_select_strategy == "default")


def keeps_grid(model: nn.Module) -> bool:
    """Whether every tile still holds its ``H x W`` patch grid (unpatched, or ToMe
    with nothing removed before the selected layer): then the model's own spatial
    packing runs; else the flat packing of the module docstring."""
    encoder = anyres_core(model).vision_tower.encoder
    schedule = getattr(encoder, SCHEDULE_ATTR, None)
    if schedule is None:
        return True
    if getattr(encoder, METHOD_ATTR, "crossget") == "crossget":
        return False  # the kept cross slot is one more token per tile
    counts = vision_tower(model).token_counts()
    return counts[feature_layer(model)] == counts[0]


def tiles_per_image(model: nn.Module, image_size, single: bool = False) -> int:
    """Tiles of an image of ``image_size`` ``(height, width)``: the base tile plus the
    grid of the best-fitting pinpoint; 1 with ``single`` (OneVision's images of a
    multi-image prompt)."""
    if single:
        return 1
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    config = anyres_core(model).config
    size = [int(s) for s in (image_size.tolist() if isinstance(image_size, torch.Tensor) else image_size)]
    return image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)


def flat_count(tiles: int, per_tile: int) -> int:
    """Tokens of an image packed flat: ``n + 1`` for one tile, ``n + (tiles - 1)(n + 1)`` else."""
    return per_tile + 1 if tiles == 1 else per_tile + (tiles - 1) * (per_tile + 1)


def image_token_count(model: nn.Module, image_size, single: bool = False) -> int:
    """Image tokens the LLM receives for one image of ``image_size`` ``(height, width)``,
    as the model is now: :func:`flat_count` of the reduced tiles, or, with the grids
    kept, what the model's own packing gives (run on a zero-width stand-in)."""
    tiles = tiles_per_image(model, image_size, single)
    if not keeps_grid(model):
        return flat_count(tiles, tile_tokens(model))
    core = anyres_core(model)
    stand_in = [torch.zeros(tiles, grid_side(model) ** 2, 1)]
    sizes = torch.tensor([[int(s) for s in image_size]])
    kwargs = {"image_newline": torch.zeros(1)}
    parameters = inspect.signature(type(core).pack_image_features).parameters
    if "vision_feature_select_strategy" in parameters:
        kwargs["vision_feature_select_strategy"] = core.config.vision_feature_select_strategy
    if "vision_aspect_ratio" in parameters:
        kwargs["vision_aspect_ratio"] = getattr(core.config, "vision_aspect_ratio", "anyres_max_9")
    packed, _ = core.pack_image_features(stand_in, sizes, **kwargs)
    return int(packed[0].shape[0])


def pack_flat(image_features, image_newline: torch.Tensor | None):
    """Reduced tiles packed without a grid: base tile, then each grid tile + one newline."""
    packed = []
    for tiles in image_features:  # [tiles, n, H] per image
        newline = None if image_newline is None else image_newline.to(tiles.device, tiles.dtype)[None]
        parts = [tiles[0]]
        for tile in tiles[1:]:
            parts += [tile] if newline is None else [tile, newline]
        if tiles.shape[0] == 1 and newline is not None:
            parts.append(newline)
        packed.append(torch.cat(parts, dim=0))
    lens = torch.tensor([p.shape[0] for p in packed], dtype=torch.long, device=image_features[0].device)
    return packed, lens


class AnyresPacking:
    """Mixin for ``LlavaNextModel`` / ``LlavaOnevisionModel``: packs reduced tiles flat
    (see the module docstring), tiles that kept their grid as the model does; refuses
    OneVision's video path (its 2 x 2 pooling needs the grid)."""

    def pack_image_features(self, image_features, image_sizes, *args, **kwargs):
        if keeps_grid(self):
            return super().pack_image_features(image_features, image_sizes, *args, **kwargs)
        return pack_flat(image_features, kwargs.get("image_newline"))

    def get_video_features(self, *args, **kwargs):
        if not keeps_grid(self):
            raise CrossGetError(
                "a CrossGET-reduced LLaVA-OneVision takes images only, not videos",
                "its video path pools every frame's token grid 2 x 2; unpatch the model for videos",
            )
        return super().get_video_features(*args, **kwargs)


class ReducingSiglipTower:
    """Mixin for the ``SiglipVisionModel`` of an anyres LLaVA: LLaVA's reducer (SPEC §6:
    head-averaged keys, attention received as importance) with SigLIP's protection (no
    CLS: only the cross slot, which starts as the mean of the patch tokens), and the
    hidden states transformers records (``i`` = output of block ``i - 1``, before the
    post-LayerNorm, cross slot included) for ``vision_feature_layer`` to select."""

    def forward(self, pixel_values=None, interpolate_pos_encoding: bool | None = False, output_hidden_states=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if kwargs.get("output_attentions"):
            raise CrossGetError("a patched vision tower returns no attentions", "unpatch the model to inspect them")
        x = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        encoder = self.encoder
        hidden, keep = hidden_state_recorder(output_hidden_states, len(encoder.layers))
        state = tower_state(encoder, protect_first=False)
        x = run_tower(x, encoder, "cross_image", encoder.layers, llava_block_forward, state, keep)
        x = self.post_layernorm(x)
        sizes = None if state.sizes is None else state.sizes[:, : x.shape[1]]
        pooled = map_head(self.head, x, sizes) if self.use_head else None
        out = BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled)
        out.hidden_states = tuple(hidden) if hidden is not None else None
        return out


def check_sizes(model: nn.Module) -> None:
    """Refuse configurations whose token counts CrossGET cannot follow (several feature layers)."""
    feature_layer(model)
