"""Family capabilities come from the adapters and the objective registry, and a
recipe accepts what the flags accept (#14: one source of truth)."""

from __future__ import annotations

import pytest

import crossget_cli
from crossget_cli.adapters.registry import find_adapter, get_adapter, list_adapters
from crossget_cli.adapters.training import list_objectives
from crossget_cli.errors import CrossGetError
from crossget_cli.recipes import recipe_from_dict
from crossget_cli.train.loop import select_trainable
from tiny_models import openclip_tiny, tiny_llava


def test_a_family_group_selects_its_parameters():
    model = crossget_cli.patch(tiny_llava(), vision_r=2)
    chosen = select_trainable(model, "cross+projector")
    assert chosen and all(n.endswith(("cross_image", "cross_text")) or "multi_modal_projector" in n for n in chosen)
    assert any("multi_modal_projector" in n for n in chosen) and any(n.endswith("cross_image") for n in chosen)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("language_model" in n for n in frozen) and any("vision_tower" in n for n in frozen)
    with_llm = select_trainable(model, "cross+projector+llm")
    assert set(chosen) < set(with_llm) and any("language_model" in n for n in with_llm)


def test_a_group_another_family_names_is_refused_with_the_choices():
    model = crossget_cli.patch(openclip_tiny(), vision_r=2)
    assert find_adapter(model).trainable_groups == {}
    with pytest.raises(CrossGetError, match="selects no parameter") as err:
        select_trainable(model, "cross+projector")
    assert "use all, cross," in err.value.args[0] + str(err.value)


def test_only_families_declare_named_groups():
    declared = {name: get_adapter(name).trainable_groups for name in list_adapters()}
    assert set(declared["llava"]) == {"cross+projector", "cross+projector+llm"}
    assert all(not groups for name, groups in declared.items() if name != "llava")


def _recipe(**finetune):
    return recipe_from_dict({"reduction": {"vision_r": 2}, "finetune": finetune})


def test_recipe_takes_what_the_flags_take():
    assert _recipe(trainable="cross+projector").finetune.trainable == "cross+projector"
    assert _recipe(trainable="cross_image,visual.proj").finetune.trainable == "cross_image,visual.proj"
    for objective in list_objectives():  # every registered objective, family ones included
        assert _recipe(objective=objective).finetune.objective == objective


def test_recipe_objective_is_checked_against_the_registry():
    with pytest.raises(CrossGetError) as err:
        _recipe(objective="blip-retreival")
    message = str(err.value)
    assert "finetune.objective" in message
    for objective in list_objectives():
        assert objective in message
