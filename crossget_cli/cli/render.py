"""Rich renderings of library results (no logic beyond formatting)."""

from __future__ import annotations

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
    for modality, counts in report["tokens_per_layer"].items():
        r = reduction.get(f"{modality}_r")
        table.add_row(f"{modality} tokens/layer (r={r})", "", " ".join(str(c) for c in counts), "")
    return table
