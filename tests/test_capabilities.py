"""What each registered model can do is declared by its adapter (tasks, generation,
ITM re-ranking), and jobs ask the adapter, never a family name. Swept over every
tiny model of every adapter against a table written here by hand."""

from __future__ import annotations

import pytest

from crossget_cli.adapters.base import Adapter
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.errors import CrossGetError
from crossget_cli.evaluation.runner import TASKS
from sweep import CASES, build

CONTRASTIVE = ("retrieval", "zeroshot")
#: tiny model -> (eval tasks, generates text, re-ranks with ITM)
EXPECTED = {
    "openclip-CLIP": (CONTRASTIVE, False, False),
    "CLIPModel": (CONTRASTIVE, False, False),
    "CLIPModel-eager": (CONTRASTIVE, False, False),
    "CLIPVisionModel": ((), False, False),
    "CLIPVisionModelWithProjection": ((), False, False),
    "CLIPTextModel": ((), False, False),
    "CLIPTextModelWithProjection": ((), False, False),
    "BlipForImageTextRetrieval": (("retrieval",), False, True),
    "BlipForConditionalGeneration": (("captioning",), True, False),
    "BlipForQuestionAnswering": (("vqa",), True, False),
    "Blip2ForConditionalGeneration": (("captioning", "vqa"), True, False),
    "Blip2ForImageTextRetrieval": (("retrieval",), False, True),
    "LlavaForConditionalGeneration": (("vqa", "multiple-choice"), True, False),
    "LlavaOnevisionForConditionalGeneration": (("vqa", "multiple-choice"), True, False),
    "LlavaNextForConditionalGeneration": (("vqa", "multiple-choice"), True, False),
    "timm-vit-token": ((), False, False),
    "timm-vit-map": ((), False, False),
    "openclip-SigLIP": (CONTRASTIVE, False, False),
    "SiglipModel": (CONTRASTIVE, False, False),
    "SiglipModel-eager": (CONTRASTIVE, False, False),
    "SiglipVisionModel": ((), False, False),
    "SiglipTextModel": ((), False, False),
}


def test_every_swept_model_has_an_expectation():
    assert {name for _, name in CASES} == set(EXPECTED)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_capabilities_are_declared(adapter_name, model_name):
    model = build(adapter_name, model_name)
    adapter = find_adapter(model)
    tasks, generates, reranks = EXPECTED[model_name]
    assert (tuple(adapter.tasks(model)), adapter.generates(model), adapter.reranks(model)) == (tasks, generates, reranks)
    for task in TASKS:
        if task in tasks:
            adapter.require_task(model, task)
        else:
            with pytest.raises(CrossGetError) as err:
                adapter.require_task(model, task)
            assert type(model).__name__ in str(err.value) or task in str(err.value)


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_a_declared_capability_is_implemented(adapter_name, model_name):
    model = build(adapter_name, model_name)
    adapter = type(find_adapter(model))
    tasks = find_adapter(model).tasks(model)
    needs = {
        "generation_calls": find_adapter(model).generates(model),
        "itm_scores": find_adapter(model).reranks(model),
        "generate_captions": "captioning" in tasks,
        "answer_questions": "vqa" in tasks or "multiple-choice" in tasks,
    }
    for method, needed in needs.items():
        if needed:
            assert getattr(adapter, method) is not getattr(Adapter, method), f"{adapter.__name__} declares but lacks {method}"


#: The tiny models prompt learning (CoOp) takes: dual encoders whose text tower embeds tokens.
PROMPT_LEARNERS = {"openclip-CLIP", "CLIPModel", "CLIPModel-eager", "CLIPTextModel", "CLIPTextModelWithProjection"}
PROMPT_LEARNERS |= {"openclip-SigLIP", "SiglipModel", "SiglipModel-eager", "SiglipTextModel"}


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_the_adapter_says_whether_prompts_can_be_learned(adapter_name, model_name):
    from torch import nn

    model = build(adapter_name, model_name)
    adapter = find_adapter(model)
    if model_name in PROMPT_LEARNERS:
        assert isinstance(adapter.token_embedding(model), nn.Embedding)
    else:
        with pytest.raises(CrossGetError, match="takes no learned prompts"):
            adapter.token_embedding(model)
