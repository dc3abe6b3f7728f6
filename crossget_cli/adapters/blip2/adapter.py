"""transformers BLIP-2: ``Blip2ForConditionalGeneration`` (captioning, VQA with a
prompt) and ``Blip2ForImageTextRetrieval``.

The ViT tokens that enter the Q-Former are reduced (the BLIP-style ViT of
:mod:`.blip`, with a vision cross token); the learned queries (32 in the
released models) stay as they are, so the language model sees the same number
of soft tokens. The Q-Former cross-attends to the merged image tokens with
``log(size)`` added to its cross-attention logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.base import Adapter, ModelInputs, Tower
from crossget_cli.adapters.generation import decode, generation_kwargs
from crossget_cli.adapters.registry import register_adapter
from crossget_cli.adapters.blip.modules import (
    ImageConsumer,
    ImageSizesScope,
    ReducingVisionTower,
    consumer_sizes,
    image_attention_bias,
)
from crossget_cli.adapters.blip.adapter import (
    is_blip_vision_tower,
    special_id,
    vision_tower,
    vision_tower_spec,
)


def _kind(model: nn.Module) -> str | None:
    if not hasattr(model, "qformer") or not hasattr(model, "query_tokens"):
        return None
    if not is_blip_vision_tower(getattr(model, "vision_model", nn.Module())):
        return None
    if hasattr(model, "language_model") and hasattr(model, "language_projection"):
        return "generation"
    if hasattr(model, "itm_head"):
        return "retrieval"
    return None


def _require_generation(model: nn.Module, task: str) -> None:
    if _kind(model) != "generation":
        raise CrossGetError(
            f"{type(model).__name__} has no head for task {task!r} (no language model)",
            f"{task} needs Blip2ForConditionalGeneration; evaluate {type(model).__name__} with --task retrieval",
        )


@register_adapter("blip2")
class Blip2Adapter(Adapter):
    description = "transformers Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval"
    generation_defaults = {"num_beams": 3}  # beam search, as BLIP evaluates

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return _kind(model) is not None

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        from crossget_cli.adapters.blip2 import tiny

        return dict(tiny.MODELS)

    def tasks(self, model: nn.Module) -> tuple[str, ...]:
        return ("captioning", "vqa") if _kind(model) == "generation" else ("retrieval",)

    def reranks(self, model: nn.Module) -> bool:
        return _kind(model) == "retrieval"

    def towers(self, model: nn.Module) -> list[Tower]:
        return [vision_tower_spec(vision_tower(model))]

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        return [(model, ImageSizesScope), (model.vision_model, ReducingVisionTower), (model.qformer, ImageConsumer)]

    def inputs(self, model: nn.Module) -> ModelInputs:
        """The image size; the Q-Former's text side only for retrieval (ITC)."""
        image_size = model.config.vision_config.image_size
        if _kind(model) != "retrieval":
            return ModelInputs(image_size, None, None, None, None)
        text = model.config.qformer_config
        context = min(text.max_position_embeddings, 35)
        return ModelInputs(image_size, context, text.vocab_size, text.vocab_size - 2, text.vocab_size - 1)

    def require_task(self, model: nn.Module, task: str) -> None:
        if task in ("captioning", "vqa"):
            _require_generation(model, task)
        elif task != "retrieval" or _kind(model) != "retrieval":
            raise CrossGetError(
                f"{type(model).__name__} has no head for task {task!r}",
                "retrieval needs Blip2ForImageTextRetrieval; captioning and vqa Blip2ForConditionalGeneration",
            )

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Retrieval: the projected query embeddings ``[N, Q, E]`` (ITC scores an
        image by its best query); otherwise the ViT's pooled output (image
        encoding, for FLOPs and throughput)."""
        if _kind(model) != "retrieval":
            return model.vision_model(pixel_values=images).pooler_output
        tokens, sizes = self.image_tokens(model, images)
        return model.vision_projection(self._queries(model, tokens, sizes))

    def encode_text(self, model: nn.Module, token_ids: torch.Tensor, token_embeddings=None) -> torch.Tensor:
        self.require_task(model, "retrieval")
        mask = (token_ids != special_id(model.config.qformer_config, "pad_token_id", default=0)).long()
        embeds = model.embeddings(input_ids=token_ids)
        out = model.qformer(query_embeds=embeds, query_length=0, attention_mask=mask)
        return model.text_projection(out.last_hidden_state[:, 0])

    def image_tokens(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (reduced) ViT tokens ``[N, T, D]`` and their sizes ``[N, T]`` for
        the Q-Former's cross-attention bias (``None``: all 1, or the size bias off)."""
        out = model.vision_model(pixel_values=images)
        return out.last_hidden_state, consumer_sizes(model.vision_model, getattr(out, "token_sizes", None))

    @staticmethod
    def _image_mask(model: nn.Module, tokens: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
        if sizes is None:
            return torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return image_attention_bias(sizes, tokens.shape[0], next(model.qformer.parameters()).dtype)

    def _queries(self, model: nn.Module, tokens: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
        queries = model.query_tokens.expand(tokens.shape[0], -1, -1)
        out = model.qformer(
            query_embeds=queries, encoder_hidden_states=tokens, encoder_attention_mask=self._image_mask(model, tokens, sizes)
        )
        return out.last_hidden_state

    def itm_scores(self, model: nn.Module, tokens: torch.Tensor, sizes: torch.Tensor | None, token_ids: torch.Tensor):
        """ITM logit of "match" per (image tokens, caption) row pair."""
        return self.itm_logits(model, tokens, sizes, token_ids)[:, 1]

    def itm_logits(self, model: nn.Module, tokens: torch.Tensor, sizes: torch.Tensor | None, token_ids: torch.Tensor):
        """``[N, 2]``: the ITM head on the queries, averaged over them, as
        ``Blip2ForImageTextRetrieval`` does, over the (reduced) image tokens."""
        self.require_task(model, "retrieval")
        n, num_queries = tokens.shape[0], model.query_tokens.shape[1]
        queries = model.query_tokens.expand(n, -1, -1)
        text_mask = (token_ids != special_id(model.config.qformer_config, "pad_token_id", default=0)).long()
        mask = torch.cat([torch.ones(n, num_queries, dtype=torch.long, device=tokens.device), text_mask], dim=1)
        out = model.qformer(
            query_embeds=model.embeddings(input_ids=token_ids, query_embeds=queries),
            query_length=num_queries,
            attention_mask=mask,
            encoder_hidden_states=tokens,
            encoder_attention_mask=self._image_mask(model, tokens, sizes),
        )
        return model.itm_head(out.last_hidden_state[:, :num_queries]).mean(dim=1)

    def _prompt_ids(self, model: nn.Module, tokenizer, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """``[image] * num_query_tokens + [bos] + prompt``, left-padded (decoder-only
        generation continues every row at the same position)."""
        config = model.config
        image = config.image_token_index
        queries = [image] * config.num_query_tokens if image is not None else []
        bos = special_id(config.text_config, "bos_token_id")
        pad = special_id(config.text_config, "pad_token_id", default=0)
        rows = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            rows.append(queries + ([bos] if bos is not None else []) + list(ids))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return input_ids.to(device), mask.to(device)

    def _generate(self, model, images, texts, tokenizer, generation) -> list[str]:
        if tokenizer is None:
            raise CrossGetError("no tokenizer was saved with the model", "save the processor next to the model (save_pretrained)")
        if model.config.image_token_index is None:
            raise CrossGetError("the BLIP-2 config has no image_token_index", "use a transformers 4.47+ BLIP-2 checkpoint")
        input_ids, mask = self._prompt_ids(model, tokenizer, texts, images.device)
        with torch.inference_mode():
            out = model.generate(pixel_values=images, input_ids=input_ids, attention_mask=mask, **generation_kwargs(generation))
        if not model.config.use_decoder_only_language_model:
            return decode(tokenizer, out)
        if out.shape[1] >= input_ids.shape[1] and torch.equal(out[:, : input_ids.shape[1]], input_ids):
            out = out[:, input_ids.shape[1] :]  # decoder-only models return the prompt too
        return decode(tokenizer, out)

    def generation_calls(self, model: nn.Module, images: torch.Tensor, prompt_length: int = 8):
        """Callables for :func:`crossget_cli.profile.generation.time_generation`: the ViT on
        ``images``, and greedy ``generate`` of exactly ``n`` tokens after the
        query tokens and ``prompt_length`` random prompt tokens."""
        from crossget_cli.adapters.generation import GenerationCalls

        _require_generation(model, "captioning")
        config = model.config
        gen = torch.Generator().manual_seed(0)
        words = torch.randint(10, config.text_config.vocab_size, (images.shape[0], prompt_length), generator=gen)
        words[words == config.image_token_index] = 10
        queries = torch.full((images.shape[0], config.num_query_tokens), config.image_token_index)
        ids = torch.cat([queries, words], dim=1).to(images.device)
        mask = torch.ones_like(ids)
        return GenerationCalls(
            encode=lambda: model.vision_model(pixel_values=images),
            generate=lambda n: model.generate(
                pixel_values=images, input_ids=ids, attention_mask=mask, min_new_tokens=n, max_new_tokens=n, num_beams=1
            ),
        )

    def generate_captions(self, model: nn.Module, images: torch.Tensor, tokenizer=None, prompt: str | None = None, **generation):
        _require_generation(model, "captioning")
        return self._generate(model, images, [prompt or ""] * images.shape[0], tokenizer, generation)

    def answer_questions(self, model: nn.Module, images: torch.Tensor, questions, tokenizer=None, prompt=None, **generation):
        _require_generation(model, "vqa")
        template = prompt or "Question: {question} Answer:"
        return self._generate(model, images, [template.format(question=q) for q in questions], tokenizer, generation)
