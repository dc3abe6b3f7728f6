"""The accuracy-vs-cost study of the README, re-runnable end to end:
``python -m study --output study/``.

On the built-in ``crossget-shapes-tiny`` CLIP and the built-in shapes benchmark it
compares, at about 80%, 65% and 50% of the original image GMACs:

* ``original``: the shipped model as it is;
* ``control``: the original fine-tuned for the same steps (ITC): what training alone adds;
* ``tome`` / ``crossget``: ToMe and CrossGET applied without training;
* ``tome+ft``: ToMe fine-tuned (ITC; ToMe has no cross tokens, so no L_JS);
* ``crossget+ft``: CrossGET fine-tuned with ITC + L_JS (SPEC §4).

Every fine-tune is the ``crossget compress --finetune`` (or, for the control,
``crossget train``) library call with the same settings and seeds, and every score
is ``crossget eval`` on the exported folder: the numbers equal what the commands of
the README print. Scores: retrieval R@1 both ways and hard-negative accuracy on two
test sets (``builtin:shapes-test`` and ``builtin:shapes-test@1``), zero-shot top-1 on
``builtin:shapes1-test``; image GMACs; CPU throughput from one interleaved
``crossget profile`` sweep per method (``--profile``; run it on an idle machine).

Each row is cached in ``<output>/rows/``, so an interrupted study continues.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE = "crossget-shapes-tiny"
TRAIN = "builtin:shapes-train"
TEST_SETS = ("builtin:shapes-test", "builtin:shapes-test@1")
ZERO_SHOT = "builtin:shapes1-test"
#: r per layer of each method at about 80%, 65% and 50% of the original image GMACs
#: (CrossGET's cross token and complete-graph matching cost more per merged token).
POINTS = {"80%": {"crossget": 17, "tome": 14}, "65%": {"crossget": 27, "tome": 24}, "50%": {"crossget": 40, "tome": 36}}
METRICS = ("txt_r1", "img_r1", "hard_neg_acc", "zeroshot_top1")


@dataclass(frozen=True)
class StudySettings:
    base: str = BASE
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 40  # 5120 pairs: half an epoch of the 10k training composites at batch 128
    batch_size: int = 128
    lr: float = 1e-4
    warmup_steps: int = 10


@dataclass
class Row:
    name: str  # e.g. "crossget+ft@65%"
    method: str  # original / control / tome / crossget / tome+ft / crossget+ft
    point: str | None
    vision_r: int
    image_gmacs: float
    runs: list[dict[str, float]] = field(default_factory=list)  # one per seed (or one, untrained)

    def summary(self) -> dict[str, Any]:
        out = {"name": self.name, "method": self.method, "point": self.point, "vision_r": self.vision_r}
        out["image_gmacs"] = self.image_gmacs
        for metric in METRICS:
            values = [run[metric] for run in self.runs]
            out[metric] = statistics.fmean(values)
            out[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out["n"] = len(self.runs)
        return out


def finetune_config(settings: StudySettings, seed: int):
    from crossget_cli.adapters.training import FinetuneConfig

    return FinetuneConfig(
        data=TRAIN,
        max_steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=settings.warmup_steps,
        seed=seed,
    )


def scores(model_path: str) -> dict[str, float]:
    """``crossget eval`` of one model folder: retrieval on every test set (each
    metric averaged over the test sets; per-set values kept) and zero-shot."""
    from crossget_cli.evaluation.runner import EvalConfig, evaluate

    out: dict[str, float] = {}
    per_set = []
    for data in TEST_SETS:
        report = evaluate([model_path], EvalConfig(task="retrieval", data=data))
        per_set.append(next(iter(report["results"]["retrieval"].values())))
    for metric in ("txt_r1", "img_r1", "hard_neg_acc"):
        out[metric] = statistics.fmean(s[metric] for s in per_set)
        for data, s in zip(TEST_SETS, per_set):
            out[f"{metric}[{data}]"] = s[metric]
    report = evaluate([model_path], EvalConfig(task="zeroshot", data=ZERO_SHOT, templates="bare"))
    out["zeroshot_top1"] = next(iter(report["results"]["zeroshot"].values()))["top1"]
    return out


def _image_gmacs(model) -> float:
    from crossget_cli.profile.flops import model_macs

    return model_macs(model).image.total / 1e9


def run_study(output: str | Path, settings: StudySettings = StudySettings(), log=print) -> list[Row]:
    from crossget_cli.export.compress import compress
    from crossget_cli.export.native import train

    output = Path(output)
    (output / "rows").mkdir(parents=True, exist_ok=True)
    models = output / "models"

    def cached(name: str, make):
        file = output / "rows" / f"{name}.json"
        if file.is_file():
            return json.loads(file.read_text())
        log(f"[study] {name}")
        value = make()
        file.write_text(json.dumps(value, indent=1))
        return value

    def compressed(name: str, method: str, r: int, seed: int | None):
        folder = models / name
        finetune = None if seed is None else finetune_config(settings, seed)
        result = compress(
            settings.base, folder, vision_r=r, text_r=0, method=method, overwrite=True, measure_speed=False, finetune=finetune
        )
        return {"scores": scores(str(folder)), "image_gmacs": _image_gmacs(result.model)}

    def control(seed: int):
        folder = models / f"control-s{seed}"
        train(settings.base, folder, finetune_config(settings, seed), overwrite=True)
        return {"scores": scores(str(folder))}

    from crossget_cli.loading.models import load_model

    rows = []
    original = cached("original", lambda: {"scores": scores(settings.base)})
    gmacs = _image_gmacs(load_model(settings.base).model)
    rows.append(Row("original", "original", None, 0, gmacs, [original["scores"]]))
    runs = [cached(f"control-s{s}", lambda s=s: control(s))["scores"] for s in settings.seeds]
    rows.append(Row("control", "control", None, 0, gmacs, runs))
    for point, rs in POINTS.items():
        for method in ("tome", "crossget"):
            r = rs[method]
            plain = cached(f"{method}@{point}", lambda m=method, r=r, p=point: compressed(f"{m}-{p[:-1]}", m, r, None))
            rows.append(Row(f"{method}@{point}", method, point, r, plain["image_gmacs"], [plain["scores"]]))
            tuned = [
                cached(
                    f"{method}+ft@{point}-s{s}", lambda m=method, r=r, p=point, s=s: compressed(f"{m}-ft-{p[:-1]}-s{s}", m, r, s)
                )
                for s in settings.seeds
            ]
            rows.append(
                Row(f"{method}+ft@{point}", f"{method}+ft", point, r, tuned[0]["image_gmacs"], [t["scores"] for t in tuned])
            )
    summary = {"settings": settings.__dict__, "rows": [row.summary() for row in rows]}
    (output / "study.json").write_text(json.dumps(summary, indent=1))
    return rows


def profile_methods(output: str | Path, base: str = BASE, threads: int | None = None) -> dict[str, Any]:
    """CPU throughput of the image tower at batch 64, original and every study
    setting of one method interleaved in one process (one ``crossget profile`` run
    per method). Written to ``<output>/profile-<method>.json``."""
    from crossget_cli.loading.models import load_model
    from crossget_cli.profile.speed import ProfileConfig, profile_model

    Path(output).mkdir(parents=True, exist_ok=True)
    results = {}
    for method in ("crossget", "tome"):
        sweep = [rs[method] for rs in POINTS.values()]
        config = ProfileConfig(
            vision_r=sweep, text_r=[0], towers="image", batch_sizes=[1, 64], warmup=3, repeats=21, method=method, threads=threads
        )
        report = profile_model(load_model(base).model, config, model_name=base).to_dict()
        Path(output, f"profile-{method}.json").write_text(json.dumps(report, indent=1))
        results[method] = report
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=StudySettings.steps)
    parser.add_argument("--profile", action="store_true", help="Also measure CPU throughput (idle machine).")
    args = parser.parse_args(argv)
    settings = StudySettings(base=args.base, seeds=tuple(int(s) for s in args.seeds.split(",")), steps=args.steps)
    run_study(args.output, settings)
    if args.profile:
        profile_methods(args.output, args.base)


if __name__ == "__main__":
    main()


def table(summary: dict[str, Any], profiles: dict[str, Any] | None = None) -> str:
    """The README table (Markdown): mean ± standard deviation over seeds."""
    throughput = _throughputs(profiles or {})
    original = next(r for r in summary["rows"] if r["method"] == "original")
    head = "| setting | r | image GMACs | txt R@1 | img R@1 | hard-neg acc | zero-shot top-1 | img/s @64 (CPU) |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for row in summary["rows"]:

        def cell(metric: str) -> str:
            sd = f" ± {row[f'{metric}_sd']:.1f}" if row["n"] > 1 else ""
            return f"{row[metric]:.1f}{sd}"

        share = 100 * row["image_gmacs"] / original["image_gmacs"]
        speed = throughput.get((row["method"].split("+")[0], row["vision_r"]))
        speed_text = "" if speed is None else f"{speed[0]:.0f} ({speed[1]:.2f}x)"
        lines.append(
            f"| {row['name']} | {row['vision_r']} | {row['image_gmacs']:.3f} ({share:.0f}%) | {cell('txt_r1')} | "
            f"{cell('img_r1')} | {cell('hard_neg_acc')} | {cell('zeroshot_top1')} | {speed_text} |"
        )
    return head + "\n".join(lines) + "\n"


def _throughputs(profiles: dict[str, Any]) -> dict[tuple[str, int], tuple[float, float]]:
    """``{(method, r): (images/s at the largest batch, ratio to the original)}``."""
    out = {}
    for method, report in profiles.items():
        batch = str(max(report["batch_sizes"]))
        runs = report["runs"]
        base = next(run for run in runs if run["label"] == "original")["throughput"]["image"][batch]
        out.setdefault(("original", 0), (base, 1.0))
        out.setdefault(("control", 0), (base, 1.0))
        for run in runs:
            if run["label"] != "original" and run["vision_r"]:  # each method's r > 0 runs against its own baseline
                value = run["throughput"]["image"][batch]
                out[(method, int(run["vision_r"]))] = (value, value / base)
    return out


def plot(summary: dict[str, Any], path: str | Path, profiles: dict[str, Any] | None = None) -> None:
    """PNG: retrieval R@1 (mean of both ways), hard-negative accuracy and CPU throughput
    (as a ratio to the original measured in the same run) against image GMACs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    throughput = _throughputs(profiles or {})
    panels = [
        ("R@1, mean of both ways (%)", lambda r: (r["txt_r1"] + r["img_r1"]) / 2),
        ("hard-negative accuracy (%)", lambda r: r["hard_neg_acc"]),
    ]
    if throughput:
        panels.append(
            (
                "CPU throughput / original's (batch 64)",
                lambda r: throughput.get((r["method"].split("+")[0], r["vision_r"]), (None, float("nan")))[1],
            )
        )
    fig = Figure(figsize=(4.6 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    styles = {
        "tome": ("tab:orange", "--", "o"),
        "crossget": ("tab:blue", "--", "s"),
        "tome+ft": ("tab:orange", "-", "o"),
        "crossget+ft": ("tab:blue", "-", "s"),
    }
    rows = summary["rows"]
    for ax, (title, value) in zip(axes, panels):
        for method, (color, line, marker) in styles.items():
            if title.startswith("CPU") and method.endswith("+ft"):
                continue
            chosen = sorted((r for r in rows if r["method"] == method), key=lambda r: r["image_gmacs"])
            ax.plot(
                [r["image_gmacs"] for r in chosen],
                [value(r) for r in chosen],
                linestyle=line,
                marker=marker,
                color=color,
                label=method,
            )
        for method, marker in (("original", "*"), ("control", "P")):
            for r in rows:
                if r["method"] == method and not (title.startswith("CPU") and method == "control"):
                    ax.plot(
                        [r["image_gmacs"]],
                        [value(r)],
                        marker=marker,
                        color="black",
                        linestyle="none",
                        markersize=10,
                        label=method,
                    )
        ax.set_xlabel("image GMACs")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("crossget-shapes-tiny on the shapes benchmark (mean over seeds)")
    fig.savefig(path, format="png", dpi=100)
