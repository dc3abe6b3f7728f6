"""Command-line interface (thin: parse, call crossget_cli.tasks, print)."""
