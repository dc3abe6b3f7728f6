"""transformers LLaVA (``LlavaForConditionalGeneration``, ``LlavaModel``) with a
CLIP vision tower: CrossGET for a modality-dependent model (SPEC §6).

Vision side: the CLIP vision tower reduces its tokens as in :mod:`.hf_clip`,
with LLaVA's reducer: the metric is the keys averaged over heads and the
importance is the attention each token receives (mean over the other tokens
plus the cross token's row, :func:`~crossget_cli.core.attention_importance`).
The cross slot is appended after the pre-LayerNorm and *kept*: the features
the model's ``vision_feature_layer`` selects hold it, so the LLM receives
``tokens(layer) - 1`` visual tokens with the default strategy (CLS dropped):
578 - 23 * 13 - 1 = 278 for ViT-L/14-336 at r = 13 and layer -2.

Text side: during prefill (an empty KV cache) the first real token of each
prompt (BOS; the first unpadded position under left padding) is overwritten
before every LLM layer with ``sg(h) + cross_text[layer]``. With zero-initialised
cross tokens this is the identity. Its only use is L_JS in fine-tuning.

The prompt must hold as many image tokens as the model now produces:
:func:`num_image_tokens` gives the count and :func:`prepare_inputs` expands each
image placeholder to it (batches with padding included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from crossget_cli.core import TokenState, attention_importance, publish_cross_tokens, token_schedule
from crossget_cli.core.state import Slot
from crossget_cli.errors import CrossGetError
from crossget_cli.adapters.base import SCHEDULE_ATTR, Adapter, ModelInputs, Tower
from crossget_cli.adapters.generation import decode, generation_kwargs
from crossget_cli.adapters.registry import register_adapter
from crossget_cli.adapters.tower import split_heads
from crossget_cli.adapters.hf_clip.adapter import attention_function, ReducingVisionTower, tower_modality, attention_residual

#: LLaVA-1.5's short-answer VQA prompt (its VQAv2/GQA evaluation template).
VQA_TEMPLATE = "USER: <image>\n{question}\nAnswer the question using a single word or phrase. ASSISTANT:"
#: LLaVA-1.5's multiple-choice prompt (ScienceQA / MMBench evaluation); the
#: question is followed by its options, one ``A. text`` per line.
CHOICE_TEMPLATE = "USER: <image>\n{question}\nAnswer with the option's letter from the given choices directly. ASSISTANT:"


# --------------------------------------------------------------------------- structure


def llava_core(model: nn.Module) -> nn.Module | None:
    """The module holding ``vision_tower``, ``multi_modal_projector`` and
    ``language_model`` (``LlavaModel``), or ``None``."""
    for module in (getattr(model, "model", None), model):
        if module is None:
            continue
        if all(hasattr(module, a) for a in ("vision_tower", "multi_modal_projector", "language_model", "get_image_features")):
            return module
    return None


def decoder_layers(language_model: nn.Module) -> nn.ModuleList | None:
    layers = getattr(language_model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    if not all(isinstance(getattr(getattr(layer, "self_attn", None), "layer_idx", None), int) for layer in layers):
        return None
    return layers


def _config(model: nn.Module):
    return llava_core(model).config


def feature_layer(model: nn.Module) -> int:
    """Index into the vision tower's hidden states (0 = the first block's input)
    of the features the LLM receives."""
    core = llava_core(model)
    layer = core.config.vision_feature_layer
    if not isinstance(layer, int):
        raise CrossGetError(
            f"vision_feature_layer {layer!r} selects several layers",
            "CrossGET leaves layers with different token counts; use one vision_feature_layer",
        )
    depth = len(core.vision_tower.encoder.layers)
    index = layer if layer >= 0 else depth + 1 + layer
    if not 0 <= index <= depth:
        raise CrossGetError(f"vision_feature_layer {layer} is out of range for {depth} layers", "check the model config")
    return index


def num_image_tokens(model: nn.Module) -> int:
    """Visual tokens the LLM receives per image, as the model is now (patched or
    not): the tokens of the selected hidden state (cross slot included when
    CrossGET is on), less CLS with the ``default`` selection strategy."""
    core = llava_core(model)
    vision = core.vision_tower
    encoder = vision.encoder
    tokens = vision.embeddings.num_positions  # CLS + patches
    schedule = getattr(encoder, SCHEDULE_ATTR, None)
    index = feature_layer(model)
    if schedule is not None:
        method = getattr(encoder, "crossget_method", "crossget")
        if method == "tome":
            tokens = token_schedule(tokens, schedule, 1, bipartite=True)[index]
        else:
            tokens = token_schedule(tokens + 1, schedule, 2)[index]
    if core.config.vision_feature_select_strategy == "default":
        tokens -= 1
    return tokens


# --------------------------------------------------------------------------- vision tower


def llava_block_forward(layer: nn.Module, x: torch.Tensor, state: TokenState, r: int) -> torch.Tensor:
    """A CLIP encoder layer with LLaVA's reducer (SPEC §6); ToMe as in hf_clip."""
    guided = state.method == "crossget" and r > 0 and state.clamped_r(r, x.shape[1]) > 0
    x, q, k, weights = attention_residual(layer, x, state, need_weights=guided)
    heads = layer.self_attn.num_heads
    if guided:
        x = state.reduce(x, split_heads(k, heads).mean(dim=1), None, r, importance=attention_importance(weights))
    elif r > 0:
        x = state.reduce(x, k, q, r, heads)
    return x + layer.mlp(layer.layer_norm2(x))


class LlavaVisionTower(ReducingVisionTower):
    """Mixin for a transformers CLIP vision tower reduced with LLaVA's reducer (SPEC §6)."""

    crossget_block = staticmethod(llava_block_forward)


# --------------------------------------------------------------------------- LLM cross token


@dataclass
class _PrefillCross:
    """The LLM cross tokens of one prefill forward (SPEC §6)."""

    cross: nn.Parameter  # [1, L, H]
    first: torch.Tensor  # [N] position of each prompt's first real token
    injected: list[torch.Tensor] = field(default_factory=list)

    def inject(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        rows = torch.arange(h.shape[0], device=h.device)
        token = h[rows, self.first].detach() + self.cross[0, layer].to(h.dtype)
        self.injected.append(token)
        index = self.first.view(-1, 1, 1).expand(-1, 1, h.shape[-1])
        return h.scatter(1, index, token[:, None])


_PREFILL = Slot()


def _is_prefill(kwargs: dict) -> bool:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return cache is None or cache.get_seq_length() == 0


def _first_real_token(kwargs: dict) -> torch.Tensor:
    embeds = kwargs.get("inputs_embeds")
    ids = kwargs.get("input_ids")
    ref = embeds if embeds is not None else ids
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.long().argmax(dim=1)
    return torch.zeros(ref.shape[0], dtype=torch.long, device=ref.device)


class CrossTokenLLM:
    """Mixin for the LLM (decoder stack): during prefill its layers inject the LLM
    cross token at each prompt's first real token (SPEC §6)."""

    def forward(self, *args, **kwargs):
        cross = getattr(self, "cross_text", None)
        if len(args) == 1:  # input_ids given positionally
            kwargs["input_ids"], args = args[0], ()
        if args or cross is None or not _is_prefill(kwargs):
            return super().forward(*args, **kwargs)
        with _PREFILL.holding(_PrefillCross(cross, _first_real_token(kwargs))) as prefill:
            out = super().forward(*args, **kwargs)
        publish_cross_tokens("text", prefill.injected)
        return out


class CrossTokenLayer:
    """Mixin for each LLM decoder layer: overwrites the first real token before the layer in prefill."""

    def forward(self, hidden_states, *args, **kwargs):
        prefill = _PREFILL.value
        if prefill is not None:
            hidden_states = prefill.inject(hidden_states, self.self_attn.layer_idx)
        return super().forward(hidden_states, *args, **kwargs)


# --------------------------------------------------------------------------- inputs


def image_token(model: nn.Module, tokenizer) -> str:
    """The placeholder string of the model's image token."""
    return tokenizer.convert_ids_to_tokens(_config(model).image_token_id)


def prepare_inputs(model: nn.Module, tokenizer, prompts: Sequence[str], pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model inputs for ``prompts`` (one image placeholder each) and their
    preprocessed images: each placeholder is expanded to :func:`num_image_tokens`
    (the count the patched model produces) and the batch is padded on the left,
    for generation."""
    placeholder = image_token(model, tokenizer)
    counts = [num_image_tokens(model)] * len(prompts)
    example = "e.g. 'USER: <image>\\n{question} ASSISTANT:'"
    return {
        **tokenize_with_images(tokenizer, prompts, placeholder, counts, pixel_values.device, example),
        "pixel_values": pixel_values,
    }


def tokenize_with_images(
    tokenizer, prompts: Sequence[str], placeholder: str, counts: Sequence[int], device, example: str = ""
) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``prompts``, each holding one image
    ``placeholder`` that is expanded to its image's count of tokens, padded on the left
    (for generation). ``example`` ends the hint of a prompt without one placeholder."""
    texts = []
    for prompt, count in zip(prompts, counts):
        if prompt.count(placeholder) != 1:
            raise CrossGetError(
                f"a prompt holds {prompt.count(placeholder)} image placeholders {placeholder!r}, not 1",
                "put the placeholder once in the prompt template" + (f", {example}" if example else ""),
            )
        texts.append(prompt.replace(placeholder, placeholder * count))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}


# --------------------------------------------------------------------------- adapter


@register_adapter("llava")
class LlavaAdapter(Adapter):
    description = "transformers LlavaForConditionalGeneration / LlavaModel with a CLIP vision tower"
    priority = 1
    reduces = ("vision",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        core = llava_core(model)
        return (
            core is not None
            and tower_modality(core.vision_tower) == "vision"
            and decoder_layers(core.language_model) is not None
            and hasattr(core.config, "image_token_id")
        )

    trainable_groups = {
        "cross+projector": ("cross_image", "cross_text", "multi_modal_projector"),
        "cross+projector+llm": ("cross_image", "cross_text", "multi_modal_projector", "language_model", "lm_head"),
    }

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[], nn.Module]]:
        from crossget_cli.adapters.llava import tiny

        return dict(tiny.MODELS)

    def towers(self, model: nn.Module) -> list[Tower]:
        core = llava_core(model)
        vision = core.vision_tower
        attn = vision.encoder.layers[0].self_attn
        attention_function(attn)
        feature_layer(model)
        llm = core.language_model
        llm_config = llm.config
        return [
            Tower(
                "vision",
                vision.encoder,
                "cross_image",
                len(vision.encoder.layers),
                attn.embed_dim,
                attn.num_heads,
                vision.embeddings.num_positions + 1,
                tuple(vision.encoder.layers),
            ),
            # The LLM "tower" reports the visual tokens it receives per layer.
            Tower(
                "text",
                llm,
                "cross_text",
                len(llm.layers),
                llm_config.hidden_size,
                llm_config.num_attention_heads,
                num_image_tokens(model) + 1,
            ),
        ]

    def class_swaps(self, model: nn.Module) -> list[tuple[nn.Module, type]]:
        core = llava_core(model)
        swaps = [(core.vision_tower, LlavaVisionTower), (core.language_model, CrossTokenLLM)]
        return swaps + [(layer, CrossTokenLayer) for layer in core.language_model.layers]

    def inputs(self, model: nn.Module) -> ModelInputs:
        return ModelInputs(_config(model).vision_config.image_size, None, None, None, None)

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The visual tokens the LLM receives, ``[N, tokens, H]``, averaged to
        ``[N, H]`` (image-side FLOPs and timing)."""
        return self.image_features(model, images).mean(dim=1)

    def image_features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``[N, num_image_tokens, H]``: the projected visual tokens."""
        out = llava_core(model).get_image_features(pixel_values=images, return_dict=True)
        return torch.stack(list(out.pooler_output))

    def encode_text(self, model: nn.Module, token_ids: torch.Tensor, token_embeddings: torch.Tensor | None = None):
        raise CrossGetError("LLaVA has no text encoder to embed captions", "use the vqa or multiple-choice tasks")

    def num_image_tokens(self, model: nn.Module) -> int:
        return num_image_tokens(model)

    # -- generation (crossget eval vqa / multiple-choice, crossget profile) -------------------

    #: Default prompt templates per ``crossget eval`` task (LLaVA-1.5's own).
    prompt_templates = {"vqa": VQA_TEMPLATE, "multiple-choice": CHOICE_TEMPLATE}
    #: LLaVA-1.5 evaluates greedily.
    generation_defaults = {"num_beams": 1}

    def tasks(self, model: nn.Module) -> tuple[str, ...]:
        return tuple(self.prompt_templates)

    def answer_questions(
        self, model: nn.Module, images: torch.Tensor, questions: Sequence[str], tokenizer=None, prompt=None, **generation
    ) -> list[str]:
        """Greedy answers: the template's ``{question}`` filled in, the image
        placeholder expanded to the model's visual-token count, the new tokens decoded."""
        inputs = prepare_inputs(model, tokenizer, _prompts(tokenizer, prompt, questions), images)
        settings = {"do_sample": False, **generation_kwargs(generation)}
        with torch.inference_mode():
            out = model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **settings)
        return decode(tokenizer, out[:, inputs["input_ids"].shape[1] :])

    def scores_continuations(self, model: nn.Module) -> bool:
        return isinstance(getattr(model, "lm_head", None), nn.Module)

    def continuation_logprobs(
        self, model: nn.Module, images: torch.Tensor, questions, continuations, tokenizer=None, prompt=None
    ) -> list[tuple[float, bool]]:
        """The summed log-probability of each continuation's tokens after its prompt
        (built as for :meth:`answer_questions`) and whether each is the greedy one. The
        continuation is tokenized on its own (no special tokens) and appended to the
        prompt's tokens; the batch is padded on the left, with positions counted from
        each row's first real token, so a row scores as it would alone."""
        if not self.scores_continuations(model):
            raise NotImplementedError(f"{type(model).__name__} has no language-model head to score continuations")
        context = prepare_inputs(model, tokenizer, _prompts(tokenizer, prompt, questions), images)
        rows, lengths = [], []
        for ids, mask, continuation in zip(context["input_ids"], context["attention_mask"], continuations):
            tokens = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not tokens:
                raise CrossGetError(f"continuation {continuation!r} has no tokens", "score a non-empty continuation")
            rows.append(ids[mask.bool()].tolist() + tokens)
            lengths.append(len(tokens))
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = images.device
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, pixel_values=images).logits
        scores = []
        for i, n in enumerate(lengths):
            predicted = logits[i, width - n - 1 : width - 1].float().log_softmax(dim=-1)
            target = input_ids[i, width - n :]
            logprob = predicted.gather(1, target[:, None]).sum().item()
            scores.append((logprob, bool((predicted.argmax(dim=-1) == target).all())))
        return scores

    def generation_calls(self, model: nn.Module, images: torch.Tensor, prompt_length: int = 32):
        """Callables for :func:`crossget_cli.profile.generation.time_generation`: the vision
        tower and projector on ``images``, and greedy ``generate`` of exactly
        ``n`` tokens on :func:`example_prompts`; facts: the visual tokens into the
        LLM and the prompt length (both shrink with r)."""
        from crossget_cli.adapters.generation import GenerationCalls

        inputs = {k: v.to(images.device) for k, v in example_prompts(model, images.shape[0], prompt_length).items()}
        pad = _config(model).text_config.pad_token_id
        return GenerationCalls(
            encode=lambda: self.image_features(model, images),
            generate=lambda n: model.generate(
                **inputs, pixel_values=images, min_new_tokens=n, max_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=pad
            ),
            facts={"visual_tokens_into_llm": num_image_tokens(model), "prompt_tokens": int(inputs["input_ids"].shape[1])},
        )


def _prompts(tokenizer, prompt: str | None, questions: Sequence[str]) -> list[str]:
    """``questions`` filled into the template (LLaVA-1.5's short-answer one by default)."""
    if tokenizer is None:
        raise CrossGetError(
            "no tokenizer was saved with the LLaVA model", "save one next to it (tokenizer.save_pretrained(folder))"
        )
    template = prompt or VQA_TEMPLATE
    if "{question}" not in template:
        raise CrossGetError(f"prompt template {template!r} has no {{question}}", f"e.g. {VQA_TEMPLATE!r}")
    return [template.format(question=q) for q in questions]


def example_prompts(model: nn.Module, batch: int, text_tokens: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` without a tokenizer: per prompt BOS,
    a few random tokens, the model's image tokens and more random tokens
    (prompts differ in length by one token each, left padded)."""
    config = _config(model)
    text = config.text_config
    gen = torch.Generator().manual_seed(seed)
    special = {config.image_token_id, text.bos_token_id, text.eos_token_id, text.pad_token_id}
    allowed = torch.tensor([i for i in range(min(text.vocab_size, 32000)) if i not in special])
    image = [config.image_token_id] * num_image_tokens(model)
    rows = []
    for i in range(batch):
        words = allowed[torch.randint(len(allowed), (text_tokens + i,), generator=gen)].tolist()
        bos = [] if text.bos_token_id is None else [text.bos_token_id]
        rows.append(bos + words[:4] + image + words[4:])
    width = max(len(r) for r in rows)
    pad = text.pad_token_id if text.pad_token_id is not None else 0
    return {
        "input_ids": torch.tensor([[pad] * (width - len(r)) + r for r in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
    }
