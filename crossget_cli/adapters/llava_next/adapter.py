"""transformers LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, SigLIP
vision tower) and LLaVA-NeXT (``LlavaNextForConditionalGeneration``, CLIP vision
tower): CrossGET on "anyres" tiles (SPEC §6 by analogy with LLaVA-1.5).

Vision side: every tile is a batch element of the vision tower and is reduced alone
with the same schedule and LLaVA's reducer; a tile's cross slot is *kept* in the
features the LLM receives, as LLaVA-1.5 keeps it (a SigLIP tile has no CLS, so only
the slot is protected and it starts as the mean of the patch tokens). Reduced tiles
are packed flat (:mod:`.modules`): no unpad, no pooling, one ``image_newline`` per
grid tile. Text side: LLaVA-1.5's LLM cross token (BOS overwritten in prefill with
``sg(h) + cross_text[l]``), the same modules. Images only: a reduced OneVision
refuses videos.

The prompt must hold as many image tokens as the model produces per image:
:func:`num_image_tokens` counts them and :func:`prepare_inputs` expands each
placeholder (one per prompt) to its image's count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from crossget_cli.adapters.base import Adapter, ModelInputs, Tower
from crossget_cli.adapters.generation import GenerationCalls, decode, generation_kwargs
from crossget_cli.adapters.llava.adapter import (
    CrossTokenLayer,
    CrossTokenLLM,
    LlavaVisionTower,
    decoder_layers,
    feature_layer,
    image_token,
    tokenize_with_images,
)
from crossget_cli.adapters.llava_next.modules import (
    AnyresPacking,
    ReducingSiglipTower,
    anyres_core,
    check_sizes,
    image_token_count,
    keeps_grid,
    tile_tokens,
    tiles_per_image,
    vision_kind,
    vision_tower,
)
from crossget_cli.adapters.registry import register_adapter
from crossget_cli.errors import CrossGetError

#: OneVision's chat format (Qwen2) around LLaVA's short-answer VQA instruction.
VQA_TEMPLATE = (
    "<|im_start|>user\n<image>\n{question}\nAnswer the question using a single word or phrase.<|im_end|>\n<|im_start|>assistant\n"
)
#: The same around LLaVA's multiple-choice instruction (the options follow the question).
CHOICE_TEMPLATE = (
    "<|im_start|>user\n<image>\n{question}\nAnswer with the option's letter from the given choices directly."
    "<|im_end|>\n<|im_start|>assistant\n"
)


# --------------------------------------------------------------------------- images


def tiled_inputs(model: nn.Module, pixel_values: torch.Tensor, image_sizes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values`` ``[N, tiles, 3, S, S]`` and ``image_sizes`` ``[N, 2]`` (height,
    width) as the model takes them.

    ``[N, 3, S, S]`` are single tiles: each stands for an image of the smallest grid
    whose every tile (base included) is that tile (FLOPs, timing). Without
    ``image_sizes`` (``crossget eval`` hands over pixels only) each image's size is the
    pinpoint whose grid gives its tile count: exact for the reduced path, which uses
    only the count, and for the spatial (unreduced) path whenever the image has the
    grid's aspect ratio; a count that several grids give is refused there."""
    config = anyres_core(model).config
    size = config.vision_config.image_size
    if pixel_values.dim() == 4:
        smallest = min(config.image_grid_pinpoints, key=lambda p: (p[0] // size) * (p[1] // size))
        tiles = (smallest[0] // size) * (smallest[1] // size) + 1
        pixel_values = pixel_values[:, None].expand(-1, tiles, -1, -1, -1)
        image_sizes = image_sizes if image_sizes is not None else [list(smallest)] * pixel_values.shape[0]
    if pixel_values.dim() != 5 or tuple(pixel_values.shape[-3:]) != (3, size, size):
        raise CrossGetError(
            f"pixel_values of shape {tuple(pixel_values.shape)}: the model takes [N, tiles, 3, {size}, {size}]",
            "preprocess the images with the model's image processor",
        )
    if image_sizes is None:
        image_sizes = [grid_size(model, pixel_values.shape[1])] * pixel_values.shape[0]
    image_sizes = torch.as_tensor(image_sizes, dtype=torch.long, device=pixel_values.device).view(-1, 2)
    for i, image_size in enumerate(image_sizes.tolist()):
        if tiles_per_image(model, image_size) > pixel_values.shape[1]:
            raise CrossGetError(
                f"an image of size {image_size} needs {tiles_per_image(model, image_size)} tiles, got {pixel_values.shape[1]}",
                "preprocess the images with the model's image processor (same image_grid_pinpoints)",
            )
    return pixel_values, image_sizes


def grid_size(model: nn.Module, tiles: int) -> list[int]:
    """The pinpoint ``(height, width)`` whose grid gives ``tiles`` tiles (base included)."""
    config = anyres_core(model).config
    size = config.vision_config.image_size
    fits = [list(p) for p in config.image_grid_pinpoints if (p[0] // size) * (p[1] // size) + 1 == tiles]
    if not fits:
        counts = sorted({(p[0] // size) * (p[1] // size) + 1 for p in config.image_grid_pinpoints})
        raise CrossGetError(
            f"an image of {tiles} tiles fits no grid of the model (image_grid_pinpoints give {counts} tiles)",
            "preprocess the images with the model's image processor",
        )
    shapes = {(p[0] // size, p[1] // size) for p in fits}
    if len(shapes) > 1 and keeps_grid(model):
        raise CrossGetError(
            f"{tiles} tiles fit several grids {sorted(shapes)}: the unreduced model needs each image's size",
            "pass image_sizes (the image processor's output) through the Python API",
        )
    return fits[0]


def num_image_tokens(model: nn.Module, image_sizes, batch_num_images=None) -> list[int]:
    """Image tokens the LLM receives for each image of ``image_sizes`` (``[N, 2]``),
    as the model is now (see :func:`.modules.image_token_count`)."""
    sizes = torch.as_tensor(image_sizes).view(-1, 2).tolist()
    single = [False] * len(sizes) if batch_num_images is None else [int(n) > 1 for n in batch_num_images for _ in range(int(n))]
    return [image_token_count(model, size, one) for size, one in zip(sizes, single)]


def prepare_inputs(
    model: nn.Module, tokenizer, prompts: Sequence[str], pixel_values: torch.Tensor, image_sizes=None
) -> dict[str, torch.Tensor]:
    """Model inputs for ``prompts`` (one image placeholder each) and their images:
    each placeholder is expanded to its image's :func:`num_image_tokens` (the count
    the patched model produces), the batch padded on the left, for generation."""
    pixel_values, image_sizes = tiled_inputs(model, pixel_values, image_sizes)
    placeholder = image_token(model, tokenizer)
    counts = num_image_tokens(model, image_sizes)
    if len(prompts) != len(counts):
        raise CrossGetError(f"{len(prompts)} prompts for {len(counts)} images", "give one image per prompt")
    encoded = tokenize_with_images(tokenizer, prompts, placeholder, counts, pixel_values.device)
    return {**encoded, "pixel_values": pixel_values, "image_sizes": image_sizes}


def example_prompts(model: nn.Module, image_sizes, text_tokens: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` without a tokenizer: per prompt BOS (if
    any), random tokens around its image's tokens (lengths differ by one, left padded)."""
    config = anyres_core(model).config
    text = config.text_config
    gen = torch.Generator().manual_seed(seed)
    special = {config.image_token_id, getattr(config, "video_token_id", None), text.bos_token_id, text.eos_token_id}
    allowed = torch.tensor([i for i in range(min(text.vocab_size, 32000)) if i not in special | {text.pad_token_id}])
    rows = []
    for i, count in enumerate(num_image_tokens(model, image_sizes)):
        words = allowed[torch.randint(len(allowed), (text_tokens + i,), generator=gen)].tolist()
        bos = [] if text.bos_token_id is None else [text.bos_token_id]
        rows.append(bos + words[:4] + [config.image_token_id] * count + words[4:])
    width = max(len(r) for r in rows)
    pad = text.pad_token_id if text.pad_token_id is not None else 0
    return {
        "input_ids": torch.tensor([[pad] * (width - len(r)) + r for r in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
    }


# --------------------------------------------------------------------------- adapter


@register_adapter("llava-next")
class LlavaNextAdapter(Adapter):
    description = "transformers LlavaOnevisionForConditionalGeneration (SigLIP) / LlavaNextForConditionalGeneration (CLIP)"
    #: asked before "llava" (a LLaVA-NeXT core passes its test too) and "hf-siglip"
    #: (whose search finds OneVision's SigLIP tower)
    priority = 2
    reduces = ("vision",)
    prompt_templates: ClassVar[dict[str, str]] = {"vqa": VQA_TEMPLATE, "multiple-choice": CHOICE_TEMPLATE}
    generation_defaults: ClassVar[dict[str, object]] = {"num_beams": 1}

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        core = anyres_core(model)
        return (
            core is not None
            and vision_kind(core) is not None
            and decoder_layers(core.language_model) is not None
            and hasattr(core.config, "image_token_id")
        )

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        from crossget_cli.adapters.llava_next import tiny

        return dict(tiny.MODELS)

    def towers(self, model: nn.Module) -> list[Tower]:
        from crossget_cli.adapters.hf_clip.adapter import attention_function

        check_sizes(model)
        core = anyres_core(model)
        attention_function(core.vision_tower.encoder.layers[0].self_attn)
        llm = core.language_model
        # The LLM "tower" reports the visual tokens it receives per tile.
        text = Tower(
            "text",
            llm,
            "cross_text",
            len(llm.layers),
            llm.config.hidden_size,
            llm.config.num_attention_heads,
            tile_tokens(model) + 1,
        )
        return [vision_tower(model), text]

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        core = anyres_core(model)
        tower = ReducingSiglipTower if vision_kind(core) == "siglip" else LlavaVisionTower
        swaps = [(core, AnyresPacking), (core.vision_tower, tower), (core.language_model, CrossTokenLLM)]
        return swaps + [(layer, CrossTokenLayer) for layer in core.language_model.layers]

    def inputs(self, model: nn.Module) -> ModelInputs:
        return ModelInputs(anyres_core(model).config.vision_config.image_size, None, None, None, None)

    def tile_features(self, model: nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        """``[N, tile_tokens, H]``: the projected visual tokens of ``N`` single tiles
        (``[N, 3, S, S]``), before packing."""
        core = anyres_core(model)
        layer = core.config.vision_feature_layer
        feature_layer(model)
        out = core.vision_tower(tiles, output_hidden_states=layer)
        selected = out.hidden_states[layer]
        if core.config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        return core.multi_modal_projector(selected)

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Per tile: the projected visual tokens of each tile ``[N, 3, S, S]``
        averaged to ``[N, H]`` (image-side FLOPs and timing count one tile)."""
        return self.tile_features(model, images).mean(dim=1)

    def image_features(self, model: nn.Module, pixel_values: torch.Tensor, image_sizes=None) -> list[torch.Tensor]:
        """The packed visual tokens of each image, ``[num_image_tokens, H]`` each."""
        pixel_values, image_sizes = tiled_inputs(model, pixel_values, image_sizes)
        out = anyres_core(model).get_image_features(pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True)
        return list(out.pooler_output)

    def encode_text(self, model: nn.Module, token_ids: torch.Tensor, token_embeddings: torch.Tensor | None = None):
        raise CrossGetError(
            f"{type(model).__name__} has no text encoder to embed captions", "use the vqa or multiple-choice tasks"
        )

    def num_image_tokens(self, model: nn.Module, image_sizes=None) -> int | list[int]:
        """Per image of ``image_sizes``; without sizes, the tokens per tile."""
        return tile_tokens(model) if image_sizes is None else num_image_tokens(model, image_sizes)

    def tasks(self, model: nn.Module) -> tuple[str, ...]:
        return tuple(self.prompt_templates)

    def answer_questions(
        self, model: nn.Module, images: torch.Tensor, questions: Sequence[str], tokenizer=None, prompt=None, **generation
    ) -> list[str]:
        """Greedy answers: the template's ``{question}`` filled in, each image
        placeholder expanded to its image's token count, the new tokens decoded.
        ``images``: the processor's tiles ``[N, tiles, 3, S, S]`` (``image_sizes``
        may come in ``generation``; else see :func:`tiled_inputs`)."""
        if tokenizer is None:
            raise CrossGetError(
                f"no tokenizer was saved with the {type(model).__name__}",
                "save one next to it (tokenizer.save_pretrained(folder))",
            )
        template = prompt or VQA_TEMPLATE
        if "{question}" not in template:
            raise CrossGetError(f"prompt template {template!r} has no {{question}}", f"e.g. {VQA_TEMPLATE!r}")
        prompts = [template.format(question=q) for q in questions]
        inputs = prepare_inputs(model, tokenizer, prompts, images, generation.pop("image_sizes", None))
        settings = {"do_sample": False, **generation_kwargs(generation)}
        with torch.inference_mode():
            out = model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **settings)
        return decode(tokenizer, out[:, inputs["input_ids"].shape[1] :])

    def generation_calls(self, model: nn.Module, images: torch.Tensor, prompt_length: int = 32) -> GenerationCalls:
        """The vision tower and projector on ``images`` (single tiles, each standing
        for an image of the smallest grid, see :func:`tiled_inputs`) and greedy ``generate``
        of exactly ``n`` tokens on :func:`example_prompts`."""
        pixel_values, image_sizes = tiled_inputs(model, images)
        inputs = {k: v.to(images.device) for k, v in example_prompts(model, image_sizes, prompt_length).items()}
        pad = anyres_core(model).config.text_config.pad_token_id
        counts = num_image_tokens(model, image_sizes)
        return GenerationCalls(
            encode=lambda: self.image_features(model, pixel_values, image_sizes),
            generate=lambda n: model.generate(
                **inputs,
                pixel_values=pixel_values,
                image_sizes=image_sizes,
                min_new_tokens=n,
                max_new_tokens=n,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
            ),
            facts={"visual_tokens_into_llm": counts[0], "prompt_tokens": int(inputs["input_ids"].shape[1])},
        )
