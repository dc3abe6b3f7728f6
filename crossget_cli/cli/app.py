"""The ``crossget`` command: parse, call the library, print.

Exit codes: 0 success, 1 unexpected failure (a bug: ``--debug`` shows the
traceback), 2 bad usage or input (one line on stderr naming the fix).
Data goes to stdout (a Rich table, or JSON with ``--json``); messages to stderr.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .. import __version__
from ..errors import CrossGetError

app = typer.Typer(
    name="crossget",
    help="CrossGET token reduction for CLIP-style vision-language models: compress, profile, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

stdout = Console()
stderr = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of a table.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="open_clip name (with --pretrained), hf:<id> or HF folder, open_clip folder, "
        ".pt/.safetensors checkpoint, or a folder written by `crossget compress`.",
    ),
]
PretrainedOpt = Annotated[
    Optional[str], typer.Option("--pretrained", help="open_clip pretrained tag, weights file, or 'none' for random weights.")
]


def _debug_requested() -> bool:
    return "--debug" in sys.argv or os.environ.get("CROSSGET_DEBUG") == "1"


def handle_errors(command):
    """Turn library errors into one stderr line and an exit code."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except CrossGetError as err:
            if kwargs.get("debug") or _debug_requested():
                traceback.print_exc()
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)
        except Exception as err:  # a bug: say so, keep the traceback for --debug
            if kwargs.get("debug") or _debug_requested():
                traceback.print_exc()
            else:
                line = str(err).splitlines()[0] if str(err) else ""
                typer.echo(f"error: unexpected {type(err).__name__}: {line} (re-run with --debug for the traceback)", err=True)
            raise typer.Exit(1)

    return run


def parse_r(option: str, value: Optional[str]):
    """``"16"`` -> 16, ``"16,16,8"`` -> (16, 16, 8) (one value per layer)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise CrossGetError(f"{option} must be an integer or a comma-separated list of integers, got {value!r}", f"e.g. {option} 16")
    if any(n < 0 for n in numbers):
        raise CrossGetError(f"{option} must be >= 0, got {value!r}", "r is the number of tokens merged per layer")
    return numbers[0] if len(numbers) == 1 else tuple(numbers)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _version_callback(value: bool):
    if value:
        typer.echo(f"crossget {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
):
    """CrossGET (Cross-Guided Ensemble of Tokens, arXiv 2305.17455) for CLIP-style models."""


@app.command()
@handle_errors
def compress(
    model: ModelOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder to write (must not exist, unless --overwrite).")] = None,
    pretrained: PretrainedOpt = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", "-r", help="YAML recipe (model, reduction).")] = None,
    vision_r: Annotated[Optional[str], typer.Option("--vision-r", help="Tokens merged per vision layer: 16, or one value per layer 16,16,...")] = None,
    text_r: Annotated[Optional[str], typer.Option("--text-r", help="Tokens merged per text layer: 6, or one value per layer.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Load a checkpoint, inject CrossGET, and export it with its recipe and a FLOPs report."""
    from ..tasks.export import compress as run_compress

    result = run_compress(
        model,
        output,
        pretrained=pretrained,
        recipe=recipe,
        vision_r=parse_r("--vision-r", vision_r),
        text_r=parse_r("--text-r", text_r),
        overwrite=overwrite,
    )
    if json_out:
        print_json({"output": str(result.output), "recipe": result.recipe.to_dict(), "report": result.report})
        return
    from .render import compress_table

    stdout.print(compress_table(result))
    stderr.print(f"wrote {result.output}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
