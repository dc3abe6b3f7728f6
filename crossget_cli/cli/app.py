"""The ``crossget`` command: parse, call the library, print.

Exit codes: 0 success, 1 unexpected failure (a bug: ``--debug`` shows the
traceback), 2 bad usage or input (one line on stderr naming the fix).
Data goes to stdout (a Rich table, or JSON with ``--json``); messages to stderr.

The commands live by job: :mod:`.training` (``compress``, ``train``), :mod:`.measure`
(``profile``, ``eval``), :mod:`.recipes` (``recipes``); :mod:`.common` holds what they
share, :mod:`.render` the tables.
"""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from crossget_cli.cli import measure, recipes, training
from crossget_cli.cli.common import stderr, stdout
from crossget_cli.version import __version__

app = typer.Typer(
    name="crossget",
    help="CrossGET token reduction for CLIP-style vision-language models: compress, profile, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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


app.command()(training.compress)
app.command()(training.train)
app.command()(measure.profile)
app.command("eval")(measure.eval_command)
app.command("recipes")(recipes.recipes_command)


def main() -> None:
    # SIGTERM (a scheduler's or `timeout`'s stop) unwinds like Ctrl-C, so the
    # temporaries of a write under way are removed instead of left behind.
    signal.signal(signal.SIGTERM, _terminate)
    app()


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


__all__ = ["app", "main", "stderr", "stdout"]

if __name__ == "__main__":
    main()
