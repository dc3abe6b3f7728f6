"""The one parser of r settings written as text (``--vision-r``, ``--text-r`` and their
sweeps in ``crossget profile``)."""

from __future__ import annotations

import pytest

from crossget_cli.config import parse_r, parse_r_sweep
from crossget_cli.errors import CrossGetError


@pytest.mark.parametrize("text,expected", [("16", 16), (" 0 ", 0), ("16,16,8", (16, 16, 8)), ("4, 4", (4, 4))])
def test_a_setting(text, expected):
    assert parse_r(text) == expected


@pytest.mark.parametrize("text,expected", [("0,4,8", [0, 4, 8]), ("16,4/4/2/2", [16, (4, 4, 2, 2)]), ("3", [3])])
def test_a_sweep(text, expected):
    assert parse_r_sweep(text) == expected


@pytest.mark.parametrize(
    "text,needle", [("x", "integer"), ("-1", ">= 0"), ("1,,2", "integer"), ("", "integer"), ("2/-3", ">= 0")]
)
def test_bad_text_names_the_option(text, needle):
    for parse in (parse_r, parse_r_sweep):
        if parse is parse_r and "/" in text:
            continue
        with pytest.raises(CrossGetError) as err:
            parse(text, "--vision-r")
        assert "--vision-r" in str(err.value) and needle in str(err.value)


def _recipe(**sections):
    from crossget_cli.recipes import recipe_from_dict

    return recipe_from_dict(sections)


def test_eval_config_takes_flags_over_the_recipe_over_the_defaults():
    from crossget_cli.evaluation.runner import EvalConfig

    recipe = _recipe(eval={"task": "captioning", "split": "test", "num_beams": 3, "prompt": "a picture of ", "max_new_tokens": 30})
    config = EvalConfig.from_recipe(recipe, task="vqa", data="q.json", num_beams=None, max_new_tokens=5)
    assert (config.task, config.split, config.num_beams, config.prompt, config.max_new_tokens) == (
        "vqa",  # the run's task, not the recipe's
        None,  # nor its split
        3,
        "a picture of ",
        5,
    )
    assert EvalConfig.from_recipe(None, task="retrieval", data="d.json").itm_k == 128


def test_finetune_config_takes_flags_over_the_recipe_over_the_objective():
    from crossget_cli.train.loop import finetune_config

    recipe = _recipe(finetune={"objective": "clip", "lr": 2e-5, "epochs": 3, "js_weight": 0.25, "amp": "none"})
    config = finetune_config(recipe, data="d.json", epochs=5, lr=None)
    assert (config.lr, config.epochs, config.js_weight, config.task_weight) == (2e-5, 5, 0.25, 0.75)
    plain = finetune_config(None, data="d.json")
    assert (plain.objective, plain.lr, plain.epochs, plain.batch_size) == ("clip", 1e-5, 1, 64)
