"""Recipes: YAML files that name a model, its reduction and (later) how to fine-tune
and evaluate it. Parsed strictly into dataclasses: an unknown key or a bad value
is a :class:`CrossGetError` naming the key.

The ``crossget.yaml`` that ``crossget compress`` exports is a recipe with an
extra ``provenance`` section, so it can be fed back to ``crossget compress``.
The recipes of the repository's ``recipes/`` folder ship with the package
(:func:`list_builtin_recipes`); :func:`load_recipe` takes a path or their name.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from crossget_cli.config import ReductionConfig
from crossget_cli.errors import CrossGetError


@dataclass(frozen=True)
class ModelSpec:
    """Which checkpoint to load (see ``crossget_cli.loading.models``)."""

    source: str | None = None  # open_clip name, hf:id, local folder or file
    pretrained: str | None = None  # open_clip tag, weights file, or "none"
    family: str | None = None  # adapter name, filled in by export
    attn_implementation: str | None = None  # transformers attention backend
    dtype: str | None = None  # fp32 / fp16 / bf16 of the exported weights


@dataclass(frozen=True)
class ReductionSpec:
    method: str = "crossget"
    vision_r: int | list[int] = 0  # tokens merged per vision layer (int or one per layer)
    text_r: int | list[int] = 0  # tokens merged per text layer
    # false: no log(size) attention bias (ToMe's prop_attn=False); unset (None) is on, and is
    # what an export writes for the default, so recipes and exports made before it read the same
    size_bias: bool | None = None

    def to_config(self) -> ReductionConfig:
        as_r = lambda r: tuple(r) if isinstance(r, list) else r  # noqa: E731
        return ReductionConfig(
            vision_r=as_r(self.vision_r), text_r=as_r(self.text_r), method=self.method, size_bias=self.size_bias is not False
        )


@dataclass(frozen=True)
class FinetuneSpec:
    """Fine-tuning with L_JS (SPEC §4): the defaults of `crossget compress --finetune` (flags override).

    A key the recipe leaves out takes its objective's default (``Objective.defaults`` and
    ``default_js_weight``, e.g. CoOp's lr 0.002), else the value below (the paper's CLIP
    fine-tune). ``options`` are the objective's own settings (``Objective.Options``).
    """

    objective: str = "clip"  # a registered objective: clip (ITC + L_JS), coop (CE + 10 L_JS), a family's
    js_weight: float = 0.5
    lr: float = 1e-5
    weight_decay: float = 0.05
    epochs: int = 12
    max_steps: int | None = None  # the run stopped after this many optimizer steps (what ran is recorded)
    batch_size: int = 64
    schedule: str = "cosine"
    trainable: str = "all"  # as --trainable: all, cross, a family's named group, or parameter-name substrings
    amp: str = "fp16"
    options: dict[str, Any] = field(default_factory=dict)  # e.g. coop: {shots: 16, n_ctx: 16}
    dataset: str | None = None


@dataclass(frozen=True)
class EvalSpec:
    task: str = "retrieval"  # retrieval / zeroshot / captioning / vqa / multiple-choice
    dataset: str | None = None
    split: str | None = None
    reference: dict[str, float] = field(default_factory=dict)  # the paper's numbers, for comparison
    # generation and re-ranking settings: defaults of `crossget eval --recipe`, and of evaluating
    # an exported model whose crossget.yaml holds them (flags override both)
    itm_k: int | None = None  # retrieval: ITM re-ranking of the ITC top k (BLIP)
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    num_beams: int | None = None
    prompt: str | None = None  # captioning: text prefix; vqa/multiple-choice: template with {question}


@dataclass(frozen=True)
class Recipe:
    name: str | None = None
    description: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    reduction: ReductionSpec = field(default_factory=ReductionSpec)
    finetune: FinetuneSpec | None = None
    eval: EvalSpec | None = None
    reference: dict[str, Any] = field(default_factory=dict)  # published figures (GFLOPs, accuracy)
    provenance: dict[str, Any] | None = None  # written by export; ignored when compressing

    def to_dict(self) -> dict:
        return _drop_none(dataclasses.asdict(self))


#: Where the shipped recipes live once installed (setup.py maps ``recipes/`` there).
BUILTIN_RECIPES_PACKAGE = "crossget_cli.builtin_recipes"
EXAMPLES_HINT = "see `crossget recipes` for the shipped examples"

_SECTIONS = {"model": ModelSpec, "reduction": ReductionSpec, "finetune": FinetuneSpec, "eval": EvalSpec}
_VALID_CHOICES = {
    ("finetune", "schedule"): ("cosine", "constant"),
    ("finetune", "amp"): ("fp16", "bf16", "none"),
    ("eval", "task"): ("retrieval", "zeroshot", "captioning", "vqa", "multiple-choice"),
}


def _choices(section: str, key: str) -> tuple[str, ...] | None:
    """The values a recipe key takes; objectives come from their registry, as
    for ``--objective``."""
    if (section, key) == ("finetune", "objective"):
        from crossget_cli.adapters import training  # registers every family's objectives on import

        return tuple(training.list_objectives())
    return _VALID_CHOICES.get((section, key))


def _objective(data: dict):
    from crossget_cli.adapters.training import get_objective

    return get_objective(data.get("objective", FinetuneSpec.objective))


def _unknown_key_hint(section: str, key: str, data: dict, known) -> str:
    if section == "finetune":
        try:
            objective = _objective(data)
        except (CrossGetError, TypeError):  # a bad objective is reported on its own
            objective = None
        if objective is not None and key in objective.option_names():
            return f"{key} is an option of objective {objective.name!r}: write it as finetune.options.{key}"
    return f"valid keys in {section}: {', '.join(known)}"


def _finetune_spec(data: dict) -> FinetuneSpec:
    """The ``finetune`` section: keys left out take the objective's defaults, then
    FinetuneSpec's; the objective checks the options."""
    objective = _objective(data)
    names = {f.name for f in fields(FinetuneSpec)}
    defaults = {"js_weight": objective.default_js_weight, **objective.defaults}
    try:
        objective.check_options(data.get("options", {}))
    except CrossGetError as err:
        raise CrossGetError(f"recipe key finetune.options: {err.message}", err.hint) from None
    return FinetuneSpec(**{**{k: v for k, v in defaults.items() if k in names}, **data})


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None and v != {}}
    return value


def _check_type(path: str, value, annotation: str):
    wants_list = "list" in annotation
    if isinstance(value, list) and wants_list:
        for item in value:
            _check_type(path, item, "int")
        return
    if "dict" in annotation:
        if not isinstance(value, dict):
            raise CrossGetError(f"recipe key {path} must be a mapping, got {value!r}", EXAMPLES_HINT)
        return
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }
    kinds = [k for k in ("bool", "int", "float", "str") if k in annotation]
    if value is None and "None" in annotation:
        return
    if not any(ok[k] for k in kinds):
        raise CrossGetError(f"recipe key {path} has a bad value {value!r}", f"expected {annotation}")


def _build(cls, section: str, data) -> Any:
    if not isinstance(data, dict):
        raise CrossGetError(f"recipe section {section!r} must be a mapping", EXAMPLES_HINT)
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise CrossGetError(f"unknown recipe key {section}.{key}", _unknown_key_hint(section, key, data, known))
        _check_type(f"{section}.{key}", value, str(known[key].type))
        choices = _choices(section, key)
        if choices and value not in choices:
            raise CrossGetError(f"recipe key {section}.{key} has a bad value {value!r}", f"choose one of: {', '.join(choices)}")
    return _finetune_spec(data) if cls is FinetuneSpec else cls(**data)


def recipe_from_dict(data: dict, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise CrossGetError(f"{where} is not a YAML mapping", EXAMPLES_HINT)
    known = {f.name for f in fields(Recipe)}
    for key in data:
        if key not in known:
            raise CrossGetError(f"unknown recipe key {key!r} in {where}", f"valid top-level keys: {', '.join(sorted(known))}")
    kwargs = {}
    for key, value in data.items():
        if key in _SECTIONS and value is not None:
            kwargs[key] = _build(_SECTIONS[key], key, value)
        elif key in ("reference", "provenance") and value is not None and not isinstance(value, dict):
            raise CrossGetError(f"recipe key {key} must be a mapping", EXAMPLES_HINT)
        else:
            kwargs[key] = value
    recipe = Recipe(**kwargs)
    recipe.reduction.to_config()  # validates r values and method
    return recipe


def list_builtin_recipes() -> list[str]:
    """Names of the recipes shipped with the package (file names without ``.yaml``)."""
    files = importlib.resources.files(BUILTIN_RECIPES_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def builtin_recipe_text(name: str) -> str:
    """The YAML text of the shipped recipe ``name`` (with or without ``.yaml``)."""
    stem = name.removesuffix(".yaml")
    if stem not in list_builtin_recipes():
        raise CrossGetError(f"no shipped recipe named {name!r}", f"shipped recipes: {', '.join(list_builtin_recipes())}")
    return (importlib.resources.files(BUILTIN_RECIPES_PACKAGE) / f"{stem}.yaml").read_text()


def load_recipe(path_or_name: str | Path) -> Recipe:
    """Parse a recipe from a YAML file, or load a shipped recipe by name (a path that
    exists wins over a shipped name)."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        text, where = path.read_text(), str(path)
    elif path.name == str(path_or_name) and path.name.removesuffix(".yaml") in list_builtin_recipes():
        text, where = builtin_recipe_text(path.name), f"shipped recipe {path.name.removesuffix('.yaml')}"
    else:
        raise CrossGetError(
            f"recipe not found: {path_or_name}",
            f"pass a YAML file or the name of a shipped recipe ({', '.join(list_builtin_recipes())})",
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CrossGetError(f"recipe {where} is not valid YAML: {str(err).splitlines()[0]}", "fix the YAML syntax") from err
    return recipe_from_dict(data, where=where)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
