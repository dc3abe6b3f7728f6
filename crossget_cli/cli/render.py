"""Rich renderings of library results (no logic beyond formatting)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def _gmacs(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def compress_table(result) -> Table:
    report = result.report
    reduction = report.get("reduction") or {}
    table = Table(title=f"CrossGET: {result.recipe.model.source} -> {result.output}")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("compressed", justify="right")
    table.add_column("ratio", justify="right")
    before, after = report["original"], report["compressed"]
    for key, label in (("image_gmacs", "image GMACs"), ("text_gmacs", "text GMACs"), ("gmacs", "pair GMACs")):
        b, a = before.get(key), after.get(key)
        ratio = f"{a / b:.1%}" if a is not None and b else "-"
        table.add_row(label, _gmacs(b), _gmacs(a), ratio)
    speed = (report.get("profile") or {}).get("runs") or []
    if len(speed) == 2:
        for tower in ("image", "text"):
            before, after = speed[0]["latency_ms"].get(tower), speed[1]["latency_ms"].get(tower)
            if before is not None and after is not None:
                table.add_row(f"{tower} latency @1 (ms)", f"{before:.1f}", f"{after:.1f}", f"{after / before:.1%}")
    for modality, counts in report["tokens_per_layer"].items():
        r = reduction.get(f"{modality}_r")
        table.add_row(f"{modality} tokens/layer (r={r})", "", " ".join(str(c) for c in counts), "")
    return table


@contextlib.contextmanager
def progress_bar(title: str) -> Iterator[Callable[[int, int, str], None]]:
    """A Rich progress bar on stderr, fed by ``advance(done, total, description)``;
    silent when stderr is not a terminal (pipelines, CI)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda done, total, description: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(title, total=None)

        def advance(done: int, total: int, description: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{title}: {description}")

        yield advance


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def profile_table(report: dict) -> Table:
    """One row per run; ratios are to the original (first row)."""
    title = (
        f"{report['model']} | {report['device']} {report['dtype']} | {report['threads']} threads | "
        f"median of {report['repeats']} after {report['warmup']} warm-up"
    )
    mode = [name for name, key in (("torch.compile", "compile"), ("CUDA graphs", "cuda_graphs")) if report.get(key)]
    if mode:
        title += " | " + ", ".join(mode)
    table = Table(title=title)
    for header in ("run", "image GMACs", "text GMACs", "pair GMACs", "GMACs ratio"):
        table.add_column(header, justify="right")
    towers = report["towers"]
    batches = [str(b) for b in report["batch_sizes"]]
    for tower in towers:
        for b in batches:
            table.add_column(f"{tower} items/s @{b}", justify="right")
    for tower in towers:
        table.add_column(f"{tower} latency ms", justify="right")
    table.add_column("matching %", justify="right")
    table.add_column("peak MB", justify="right")
    for run in report["runs"]:
        ratios = run.get("ratios") or {}
        row = [run["label"], _gmacs(run["image_gmacs"]), _gmacs(run["text_gmacs"]), _gmacs(run["gmacs"])]
        row.append(f"{ratios['gmacs']:.1%}" if ratios.get("gmacs") is not None else "-")
        for tower in towers:
            for b in batches:
                value = run["throughput"].get(tower, {}).get(b)
                speedup = (ratios.get("throughput") or {}).get(tower, {}).get(b)
                row.append("-" if value is None else f"{value:.1f} ({_ratio(speedup)})")
        for tower in towers:
            value = run["latency_ms"].get(tower)
            speedup = (ratios.get("latency") or {}).get(tower)
            row.append("-" if value is None else f"{value:.1f} ({_ratio(speedup)})")
        fractions = [f for f in (run.get("matching_fraction") or {}).values() if f is not None]
        row.append(f"{max(fractions):.1%}" if fractions else "-")
        memory = [m for m in (run.get("peak_memory_mb") or {}).values() if m is not None]
        row.append(f"{max(memory):.0f}" if memory else "-")
        table.add_row(*row)
    return table


def eval_table(report: dict) -> Table:
    """One row per model, one column per metric; later models show their delta."""
    task = report["task"]
    results = report["results"][task]
    deltas = report["deltas"][task]
    metrics = list(next(iter(results.values())))
    table = Table(title=f"{task} on {report['config']['data']} ({report['num_items']} items)")
    table.add_column("model")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for label, scores in results.items():
        row = [label]
        for metric in metrics:
            delta = deltas.get(label, {}).get(metric)
            row.append(f"{scores[metric]:.2f}" + ("" if delta is None else f" ({delta:+.2f})"))
        table.add_row(*row)
    return table


def breakdown_tables(report: dict) -> list[Table]:
    """One table per breakdown of the scores (VQA: per question type): a row per
    category, a column per model."""
    task = report["task"]
    breakdowns = report.get("breakdowns", {}).get(task, {})
    tables = []
    for name in dict.fromkeys(k for per_model in breakdowns.values() for k in per_model):
        columns = {label: per_model[name] for label, per_model in breakdowns.items() if name in per_model}
        table = Table(title=f"{task} {name.replace('_', ' ')}")
        table.add_column(name.removeprefix("per_").replace("_", " "))
        for label in columns:
            table.add_column(label, justify="right")
        for category in dict.fromkeys(c for values in columns.values() for c in values):
            table.add_row(category or "(none)", *(_cell(values.get(category)) for values in columns.values()))
        tables.append(table)
    return tables


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


@contextlib.contextmanager
def training_progress(enabled: bool) -> Iterator[Callable[[dict], None] | None]:
    """A Rich status line with step, loss and throughput on stderr while training."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    with console.status("fine-tuning") as status:

        def on_step(record: dict) -> None:
            skip = ("step", "epoch", "loss", "lr", "items_per_s")
            parts = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in skip)
            status.update(
                f"fine-tuning: step {record['step']} epoch {record['epoch']} loss {record['loss']:.4f} ({parts}) "
                f"{record['items_per_s']:.1f} items/s"
            )

        yield on_step


def generation_table(rows: list[dict]) -> Table:
    """``crossget profile`` of a generative model: one row per model setting."""
    first = rows[0]
    table = Table(title=f"generation: batch {first['batch']}, {first['new_tokens']} new tokens (greedy)")
    facts = list(first.get("facts", {}))  # e.g. LLaVA: visual tokens into the LLM, prompt tokens
    for name in (
        "run",
        *(f.replace("_", " ") for f in facts),
        "images/s",
        "prefill (ms)",
        "decode tokens/s",
        "items/s",
        "peak MB",
    ):
        table.add_column(name, justify="left" if name == "run" else "right")

    def cell(row, key, fmt):
        value = row.get(key)
        ratio = row["ratios"].get(key)
        text = "-" if value is None else fmt.format(value)
        return text if ratio is None or row is first else f"{text} ({ratio:.2f}x)"

    for row in rows:
        table.add_row(
            row["label"],
            *(str(row["facts"].get(f, "-")) for f in facts),
            cell(row, "images_per_s", "{:.1f}"),
            cell(row, "prefill_ms", "{:.1f}"),
            cell(row, "decode_tokens_per_s", "{:.1f}"),
            cell(row, "items_per_s", "{:.2f}"),
            "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}",
        )
    return table


def recipes_table(recipes: list[dict]) -> Table:
    table = Table(title="Shipped recipes (crossget compress --recipe NAME)")
    for column in ("name", "model", "reduction", "fine-tuning", "evaluation"):
        table.add_column(column)
    for recipe in recipes:
        model = recipe.get("model", {})
        reduction = recipe.get("reduction", {})
        table.add_row(
            recipe["name"],
            " ".join(str(v) for v in (model.get("source"), model.get("pretrained")) if v),
            ", ".join(f"{k}={v}" for k, v in reduction.items()),
            recipe.get("finetune", {}).get("objective", ""),
            recipe.get("eval", {}).get("task", ""),
        )
    return table
