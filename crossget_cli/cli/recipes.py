"""``crossget recipes``: the recipes shipped with the package (``--recipe NAME``)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from crossget_cli.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout


@handle_errors
def recipes_command(
    name: Annotated[Optional[str], typer.Argument(help="Print this shipped recipe's YAML (to copy and edit).")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """List the recipes shipped with crossget (`--recipe NAME` takes them), or print one."""
    from crossget_cli.cli.render import recipes_table
    from crossget_cli.recipes import builtin_recipe_text, list_builtin_recipes, load_recipe

    if name is not None:
        text = builtin_recipe_text(name)
        if json_out:
            print_json(load_recipe(name).to_dict())
        else:
            sys.stdout.write(text)
        return
    listing = [{**load_recipe(n).to_dict(), "name": n} for n in list_builtin_recipes()]
    if json_out:
        print_json(listing)
    else:
        stdout.print(recipes_table(listing))
