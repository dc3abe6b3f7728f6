"""What every ``crossget`` command shares: the consoles, the common options, error
handling (one line on stderr, exit code 2 for bad input) and small parsers."""

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

from crossget_cli.errors import CrossGetError

# Tables are wide: when piped (not a terminal) do not wrap them at 80 columns.
# Markup off: user text such as ``pip install 'crossget[coco]'`` or a path with
# brackets is printed as written, never read as style tags. Messages are never
# wrapped: one note is one line, whatever the terminal's width.
stdout = Console(width=None if sys.stdout.isatty() else 240, markup=False)
stderr = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

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
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as err:  # a bug: say so, keep the traceback for --debug
            if kwargs.get("debug") or _debug_requested():
                traceback.print_exc()
            else:
                line = str(err).splitlines()[0] if str(err) else ""
                typer.echo(f"error: unexpected {type(err).__name__}: {line} (re-run with --debug for the traceback)", err=True)
            raise typer.Exit(1) from None

    return run


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path, option: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CrossGetError(f"{option} file not found: {path}", "check the path") from None
    except json.JSONDecodeError as err:
        raise CrossGetError(f"{option} file {path} is not valid JSON: {err}", "fix the file") from None


def write_text_atomic(path: Path, text: str) -> None:
    from crossget_cli.files import write_atomic

    write_atomic(path, lambda tmp: tmp.write_text(text))
