"""A PNG of a profile report (:func:`plot_report`): throughput and GMACs of every
run against its setting, accuracy as a third panel when given. Needs matplotlib,
imported on call."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from crossget_cli.profile.results import ProfileReport, RunResult

__all__ = ["plot_report"]


def _accuracy_of(run: RunResult, accuracy: Mapping) -> Any:
    keys = [run.label]
    if run.method == "none":
        keys += ["none", "baseline", None]
    else:
        v = run.vision_r if isinstance(run.vision_r, int) else tuple(run.vision_r)
        t = run.text_r if isinstance(run.text_r, int) else tuple(run.text_r)
        keys += [(v, t)]
    for key in keys:
        if key in accuracy:
            return accuracy[key]
    return None


def plot_report(report: ProfileReport | Mapping, path, accuracy: Mapping | None = None) -> None:
    """Write a PNG: throughput (items/s at the largest batch size) and GMACs of
    every run, against the setting (r); accuracy as a third panel when
    ``accuracy`` maps runs to a number or to ``{metric: number}``. A run's key
    is its label (``"original"``, ``"rv16_rl6"``) or ``(vision_r, text_r)``
    (``"none"`` also names the original)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(report, ProfileReport):
        report = ProfileReport.from_dict(report)
    runs = report.runs
    labels = [run.label for run in runs]
    xs = list(range(len(runs)))
    batch = str(max(report.batch_sizes))
    panels = 3 if accuracy else 2
    fig = Figure(figsize=(4.2 * panels + 1, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]

    ax = axes[0]
    for name in ("image", "text", "pair"):
        values = [run.throughput.get(name, {}).get(batch) for run in runs]
        if any(v is not None for v in values):
            ax.plot(xs, [math.nan if v is None else v for v in values], marker="o", label=name)
    ax.set_title(f"throughput, batch {batch} ({report.device}, {report.dtype})")
    ax.set_ylabel("items / s")

    ax = axes[1]
    for name, attr in (("image", "image_gmacs"), ("text", "text_gmacs"), ("pair", "gmacs")):
        values = [getattr(run, attr) for run in runs]
        if name == "pair" and len(report.towers) < 2 and (runs[0].image_gmacs is None or runs[0].text_gmacs is None):
            continue
        if any(v is not None for v in values):
            ax.plot(xs, [math.nan if v is None else v for v in values], marker="s", label=name)
    ax.set_title("GMACs (1 image + 1 caption)")
    ax.set_ylabel("GMACs")

    if accuracy:
        ax = axes[2]
        values = [_accuracy_of(run, accuracy) for run in runs]
        metrics = sorted({m for v in values if isinstance(v, Mapping) for m in v}) or [None]
        for metric in metrics:
            ys = []
            for v in values:
                if isinstance(v, Mapping):
                    v = v.get(metric)
                ys.append(math.nan if v is None else float(v))
            ax.plot(xs, ys, marker="^", label=metric or "accuracy")
        ax.set_title("accuracy")
        ax.set_ylabel("accuracy")

    for ax in axes:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_xlabel("setting (r per layer)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(report.model)
    fig.savefig(path, format="png", dpi=110)
