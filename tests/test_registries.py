"""Family capabilities come from the adapters and the objective registry, a
recipe accepts what the flags accept (#14: one source of truth), and a new model
family is one folder plus one registration line, swept by the tests unedited."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import crossget_cli
from crossget_cli.adapters import registry
from crossget_cli.adapters.registry import find_adapter, get_adapter, list_adapters
from crossget_cli.adapters.training import list_objectives
from crossget_cli.errors import CrossGetError
from crossget_cli.recipes import recipe_from_dict
from crossget_cli.registry import Registry
from crossget_cli.train.loop import select_trainable
from sweep import build, cases, example_inputs, features, is_cross_token, randomise_cross
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


# A family added the documented way, in a package of its own: ``toy_clip/`` holds
# what ``crossget_cli/adapters/<family>/`` would, and ``toy_models`` stands for the
# library that defines the family's model class.
NEW_FAMILY = {
    "toy_models.py": """
        from transformers import CLIPModel


        class ToyCLIPModel(CLIPModel):
            pass
    """,
    "toy_clip/__init__.py": """
        from toy_clip.adapter import ToyClipAdapter
    """,
    "toy_clip/adapter.py": """
        from crossget_cli.adapters.hf_clip import HFClipAdapter
        from crossget_cli.adapters.registry import register_adapter
        from toy_models import ToyCLIPModel


        @register_adapter("toy-clip")
        class ToyClipAdapter(HFClipAdapter):
            description = "ToyCLIPModel, a transformers CLIPModel"
            priority = 1  # asked before hf-clip, which also matches its models

            @classmethod
            def matches(cls, model):
                return isinstance(model, ToyCLIPModel) and super().matches(model)

            @classmethod
            def tiny_models(cls):
                from toy_clip import tiny

                return dict(tiny.MODELS)
    """,
    "toy_clip/tiny.py": """
        from crossget_cli.adapters.hf_clip.tiny import hf_tiny_config
        from toy_models import ToyCLIPModel

        MODELS = {"ToyCLIPModel": lambda: ToyCLIPModel(hf_tiny_config(attn_implementation="sdpa")).eval()}
    """,
}


@pytest.fixture
def new_family(tmp_path, monkeypatch):
    """:data:`NEW_FAMILY` written to a folder on ``sys.path``, and a copy of the
    adapter registry for it to register into; the real registry is back
    afterwards, and the family's modules are gone."""
    for path, text in NEW_FAMILY.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    scratch = Registry(registry.ADAPTERS.what)
    for cls in registry.ADAPTERS:
        scratch.register(cls.name)(cls)
    monkeypatch.setattr(registry, "ADAPTERS", scratch)
    yield
    for name in [n for n in sys.modules if n == "toy_models" or n.split(".")[0] == "toy_clip"]:
        del sys.modules[name]


def test_a_new_family_is_its_folder_and_one_line(new_family):
    before = cases()

    import toy_clip  # noqa: F401  (the one line adapters/__init__.py would hold)

    assert "toy-clip" in list_adapters()
    now = cases()
    assert ("toy-clip", "ToyCLIPModel") in now and [c for c in now if c[0] != "toy-clip"] == before
    model = build("toy-clip", "ToyCLIPModel")
    assert find_adapter(model).name == "toy-clip"
    images, texts = example_inputs(model)
    original = features(model, images, texts)
    keys = set(model.state_dict())

    crossget_cli.patch(model, vision_r=2, text_r=2)
    assert crossget_cli.is_patched(model)
    assert {k for k in model.state_dict() if is_cross_token(k)} == {
        "vision_model.encoder.cross_image",
        "text_model.encoder.cross_text",
    }
    assert [t.token_counts()[-1] < t.token_counts()[0] for t in find_adapter(model).towers(model)] == [True, True]
    randomise_cross(model)
    patched = features(model, images, texts)
    assert all(patched[k].shape == original[k].shape and not torch.equal(patched[k], original[k]) for k in original)

    crossget_cli.unpatch(model)
    assert not crossget_cli.is_patched(model) and set(model.state_dict()) == keys
    after = features(model, images, texts)
    assert all(torch.equal(after[k], original[k]) for k in original)


def test_the_new_family_is_gone_afterwards():
    assert "toy-clip" not in list_adapters() and "toy_clip" not in sys.modules
    assert ("toy-clip", "ToyCLIPModel") not in cases()
