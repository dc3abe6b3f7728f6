"""The package's architecture, checked on its source (README "Layout"): layers import
only downward, no import cycle (function-level imports count), no private name is
imported across modules, jobs never name a model family, and modules stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "crossget_cli"

#: Bottom to top; a module may import its own layer and the ones below. Within a layer
#: there is no order, but the cycle check still applies.
LAYERS = (
    ("errors", "version", "registry", "files", "config"),
    ("core",),
    ("data", "metrics"),
    ("adapters",),
    ("recipes",),
    ("loading",),
    ("api", "evaluation", "profile"),
    ("train",),
    ("export",),
    ("harness",),  # running our models in other evaluation tools (lmms-eval, CLIP_benchmark): only the CLI imports it
    ("cli", ""),  # "": the package's own __init__ (the public facade, lazy)
)
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}
MAX_LINES = 530  # ~500: a little over is not worth a split
FAMILY_WORDS = re.compile(r"blip|llava", re.IGNORECASE)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, str]]:
    """(imported module, imported name or "") for every crossget_cli import in ``name``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("crossget_cli")]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base) if node.level else node.module
            if module and module.startswith("crossget_cli"):
                for alias in node.names:
                    submodule = f"{module}.{alias.name}"
                    found.append((submodule, "") if submodule in MODULES else (module, alias.name))
    return found


def _top(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def _family(name: str) -> str | None:
    """The family folder a module lives in (adapters/<family>/...), if any."""
    folder = MODULES[name].parent
    return folder.name if folder.parent == PACKAGE / "adapters" else None


def test_every_top_level_module_has_a_layer():
    assert {_top(name) for name in MODULES} <= set(LAYER_OF)


def test_layers_import_only_downward():
    upward = [
        f"{name} -> {target}"
        for name in MODULES
        for target, _ in _imports(name)
        if target in MODULES and LAYER_OF[_top(target)] > LAYER_OF[_top(name)]
    ]
    assert upward == []


def test_no_import_cycle():
    graph = {name: {t for t, _ in _imports(name) if t in MODULES and t != name} for name in MODULES}
    # a package's __init__ re-exporting its submodules is not a dependency of theirs on it
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_private_name_is_imported_across_modules():
    private = [
        f"{name} imports {target}.{imported}"
        for name in MODULES
        for target, imported in _imports(name)
        if imported.startswith("_") and not imported.endswith("__")
    ]
    assert private == []


def _code_words(tree: ast.AST) -> list[str]:
    """Identifiers, imported module paths, and strings that decide something (compared,
    used as keys or matched): where naming a family would be branching on it."""
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append(node.id)
        elif isinstance(node, ast.Attribute):
            words.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words.append(node.name)
        elif isinstance(node, ast.ImportFrom):
            words += [node.module or "", *(alias.name for alias in node.names)]
        elif isinstance(node, ast.Import):
            words += [alias.name for alias in node.names]
        elif isinstance(node, ast.Compare):
            words += [c.value for c in (node.left, *node.comparators) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        elif isinstance(node, ast.Dict):
            words += [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        elif isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue):
            value = node.pattern.value
            words += [value.value] if isinstance(value, ast.Constant) and isinstance(value.value, str) else []
    return words


def test_only_family_folders_name_a_family():
    """Jobs reach family behaviour through the registries and protocols; the one line a
    family adds outside its folder is its registration import in adapters/__init__.py."""
    offenders = {
        name: sorted({w for w in _code_words(ast.parse(path.read_text())) if FAMILY_WORDS.search(w)})
        for name, path in MODULES.items()
        if _family(name) is None and name != "crossget_cli.adapters"
    }
    assert {name: words for name, words in offenders.items() if words} == {}


def test_families_import_no_job():
    jobs = {part for level, parts in enumerate(LAYERS) if level > LAYER_OF["adapters"] for part in parts}
    wrong = [f"{name} -> {t}" for name in MODULES if _family(name) for t, _ in _imports(name) if _top(t) in jobs]
    assert wrong == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines: split it along a real seam"
