"""Tiny random open_clip models built in code (no download): the miniatures the
test suite sweeps this family over (:meth:`OpenClipAdapter.tiny_models`)."""

from __future__ import annotations

from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

#: The official CLIP constructor arguments of the tiny model (the tests' golden
#: file was made with these); the transformers miniature is built from them too.
TINY = dict(
    embed_dim=32,
    image_resolution=32,
    vision_layers=4,
    vision_width=128,
    vision_patch_size=8,
    context_length=16,
    vocab_size=64,
    transformer_width=64,
    transformer_heads=2,
    transformer_layers=4,
)


def openclip_tiny(cfg: dict = TINY) -> CLIP:
    """An open_clip ``CLIP`` (QuickGELU, ViT image tower) of the shape ``cfg`` gives, random weights."""
    vision = CLIPVisionCfg(
        layers=cfg["vision_layers"],
        width=cfg["vision_width"],
        patch_size=cfg["vision_patch_size"],
        image_size=cfg["image_resolution"],
    )
    text = CLIPTextCfg(
        context_length=cfg["context_length"],
        vocab_size=cfg["vocab_size"],
        width=cfg["transformer_width"],
        heads=cfg["transformer_heads"],
        layers=cfg["transformer_layers"],
    )
    return CLIP(cfg["embed_dim"], vision, text, quick_gelu=True).eval()


MODELS = {"openclip-CLIP": openclip_tiny}
