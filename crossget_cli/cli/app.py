"""The ``crossget`` command: parse, call the library, print.

Exit codes: 0 success, 1 unexpected failure (a bug: ``--debug`` shows the
traceback), 2 bad usage or input (one line on stderr naming the fix).
Data goes to stdout (a Rich table, or JSON with ``--json``); messages to stderr.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from crossget_cli.version import __version__
from crossget_cli.errors import CrossGetError

app = typer.Typer(
    name="crossget",
    help="CrossGET token reduction for CLIP-style vision-language models: compress, profile, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Tables are wide: when piped (not a terminal) do not wrap them at 80 columns.
# Markup off: user text such as ``pip install 'crossget[coco]'`` or a path with
# brackets is printed as written, never read as style tags. Messages are never
# wrapped: one note is one line, whatever the terminal's width.
stdout = Console(width=None if sys.stdout.isatty() else 240, markup=False)
stderr = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of a table.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
FT = "Fine-tuning (--finetune)"
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

# Training options shared by `compress --finetune` and `train`: CLI parameter -> FinetuneConfig field.
TRAINING_OPTIONS = {
    "train_data": "data",
    **{
        name: name
        for name in (
            "val_data image_root split val_split epochs max_steps batch_size grad_accum lr weight_decay warmup_steps "
            "clip_grad trainable amp seed device checkpoint_dir checkpoint_every resume"
        ).split()
    },
}


def _training_flags(arguments: dict) -> dict:
    """The training options among a command's arguments, named as FinetuneConfig names them."""
    return {field: arguments[name] for name, field in TRAINING_OPTIONS.items()}


TrainDataOpt = Annotated[
    Optional[str], typer.Option("--train-data", help="Image-caption data (retrieval formats).", rich_help_panel=FT)
]
ValDataOpt = Annotated[
    Optional[str], typer.Option("--val-data", help="Validation data; the best epoch (r_mean) is kept.", rich_help_panel=FT)
]
ImageRootOpt = Annotated[
    Optional[str], typer.Option("--image-root", help="Folder the data's image paths are relative to.", rich_help_panel=FT)
]
SplitOpt = Annotated[str, typer.Option("--split", help="Training split.", rich_help_panel=FT)]
ValSplitOpt = Annotated[str, typer.Option("--val-split", help="Validation split.", rich_help_panel=FT)]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Epochs (default: recipe, else 1).", rich_help_panel=FT)]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimizer steps.", rich_help_panel=FT)]
BatchSizeOpt = Annotated[
    Optional[int], typer.Option("--batch-size", help="Global batch size (default: recipe, else 64).", rich_help_panel=FT)
]
GradAccumOpt = Annotated[int, typer.Option("--grad-accum", help="Gradient accumulation steps.", rich_help_panel=FT)]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="AdamW learning rate (default 1e-5).", rich_help_panel=FT)]
WeightDecayOpt = Annotated[
    Optional[float], typer.Option("--weight-decay", help="AdamW weight decay (default 0.05).", rich_help_panel=FT)
]
WarmupStepsOpt = Annotated[
    int, typer.Option("--warmup-steps", help="Linear warm-up steps before the cosine decay.", rich_help_panel=FT)
]
ClipGradOpt = Annotated[
    Optional[float], typer.Option("--clip-grad", help="Clip the gradient norm to this value.", rich_help_panel=FT)
]
TrainableOpt = Annotated[
    Optional[str],
    typer.Option(
        "--trainable",
        help="all, cross, a group the model family names (e.g. cross+projector), or comma-separated parameter-name substrings.",
        rich_help_panel=FT,
    ),
]
AmpOpt = Annotated[Optional[str], typer.Option("--amp", help="none, fp16 or bf16 (CUDA).", rich_help_panel=FT)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the data order and initialisation.", rich_help_panel=FT)]
DeviceOpt = Annotated[str, typer.Option("--device", help="Training device: cpu, cuda or cuda:N.", rich_help_panel=FT)]
CheckpointDirOpt = Annotated[
    Optional[str], typer.Option("--checkpoint-dir", help="Folder for checkpoints and train_log.jsonl.", rich_help_panel=FT)
]
CheckpointEveryOpt = Annotated[
    Optional[int], typer.Option("--checkpoint-every", help="Also checkpoint every N steps.", rich_help_panel=FT)
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from --checkpoint-dir.", rich_help_panel=FT)]


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


def parse_r(option: str, value: Optional[str]):
    """``"16"`` -> 16, ``"16,16,8"`` -> (16, 16, 8) (one value per layer)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise CrossGetError(
            f"{option} must be an integer or a comma-separated list of integers, got {value!r}", f"e.g. {option} 16"
        ) from None
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
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Folder to write (must not exist, unless --overwrite).")
    ] = None,
    pretrained: PretrainedOpt = None,
    recipe: Annotated[
        Optional[str],
        typer.Option("--recipe", "-r", help="YAML recipe (model, reduction), or a shipped recipe's name (`crossget recipes`)."),
    ] = None,
    vision_r: Annotated[
        Optional[str], typer.Option("--vision-r", help="Tokens merged per vision layer: 16, or one value per layer 16,16,...")
    ] = None,
    text_r: Annotated[
        Optional[str], typer.Option("--text-r", help="Tokens merged per text layer: 6, or one value per layer.")
    ] = None,
    method: Annotated[
        Optional[str], typer.Option("--method", help="crossget (default, or the recipe's) or tome (the ToMe baseline).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    speed: Annotated[
        bool, typer.Option("--speed/--no-speed", help="Add a short batch-1 throughput/latency profile to report.json.")
    ] = True,
    finetune: Annotated[
        bool, typer.Option("--finetune", help="Fine-tune with ITC + L_JS before exporting.", rich_help_panel=FT)
    ] = False,
    train_data: TrainDataOpt = None,
    val_data: ValDataOpt = None,
    image_root: ImageRootOpt = None,
    split: SplitOpt = "train",
    val_split: ValSplitOpt = "val",
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = 1,
    lr: LrOpt = None,
    weight_decay: WeightDecayOpt = None,
    warmup_steps: WarmupStepsOpt = 0,
    clip_grad: ClipGradOpt = None,
    trainable: TrainableOpt = None,
    amp: AmpOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    checkpoint_dir: CheckpointDirOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    resume: ResumeOpt = False,
    annotations: Annotated[
        Optional[str],
        typer.Option(
            "--annotations", help="VQA objectives: VQAv2 annotation JSON for --train-data questions.", rich_help_panel=FT
        ),
    ] = None,
    objective: Annotated[
        Optional[str],
        typer.Option(
            "--objective",
            help="clip (ITC + L_JS on image-caption pairs), coop (prompt learning on classes), or an objective "
            "a model family registers (an unknown name lists them all).",
            rich_help_panel=FT,
        ),
    ] = None,
    shots: Annotated[
        Optional[int], typer.Option("--shots", help="CoOp: training images per class (default 16).", rich_help_panel=FT)
    ] = None,
    n_ctx: Annotated[
        Optional[int], typer.Option("--n-ctx", help="CoOp: learnable context vectors (default 16).", rich_help_panel=FT)
    ] = None,
    ctx_init: Annotated[
        Optional[str],
        typer.Option("--ctx-init", help="CoOp: initialise the context from a phrase, e.g. 'a photo of a'.", rich_help_panel=FT),
    ] = None,
    label_column: Annotated[
        str, typer.Option("--label-column", help="CoOp: label column (CSV/JSONL/HF datasets).", rich_help_panel=FT)
    ] = "label",
    classnames: Annotated[
        Optional[str], typer.Option("--classnames", help="CoOp: file with one class name per line.", rich_help_panel=FT)
    ] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Load a checkpoint, inject CrossGET, optionally fine-tune it, and export it with its recipe and a report."""
    from crossget_cli.recipes import load_recipe
    from crossget_cli.export.compress import compress as run_compress

    recipe_obj = load_recipe(recipe) if recipe else None
    finetune_config = None
    coop_flags = dict(shots=shots, n_ctx=n_ctx, init=ctx_init, label_column=label_column, classnames=classnames)
    wanted = objective or (recipe_obj.finetune.objective if recipe_obj and recipe_obj.finetune else "clip")
    if finetune and wanted == "coop":
        finetune_config = _coop_run(
            recipe_obj, train_data, image_root, split, epochs, max_steps, batch_size, lr, weight_decay, seed, device, coop_flags
        )
    elif finetune:
        finetune_config = _finetune_config(
            recipe_obj,
            {**_training_flags(locals()), "objective": wanted, "annotations": annotations},
        )
    elif train_data or resume:
        raise CrossGetError("--train-data/--resume are fine-tuning options", "add --finetune")

    from crossget_cli.cli.render import training_progress

    with training_progress(enabled=finetune) as on_step:
        result = run_compress(
            model,
            output,
            pretrained=pretrained,
            recipe=recipe_obj,
            vision_r=parse_r("--vision-r", vision_r),
            text_r=parse_r("--text-r", text_r),
            method=method,
            overwrite=overwrite,
            measure_speed=speed,
            finetune=finetune_config,
            progress=on_step,
        )
    if not result.report:  # a non-zero rank of a distributed fine-tune writes nothing
        return
    if json_out:
        print_json({"output": str(result.output), "recipe": result.recipe.to_dict(), "report": result.report})
        return
    from crossget_cli.cli.render import compress_table

    stdout.print(compress_table(result))
    stdout.print(f"wrote {result.output}", soft_wrap=True)  # a result, not a message: stderr stays empty on success


@app.command()
@handle_errors
def train(
    model: ModelOpt = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Folder to write (must not exist, unless --overwrite).")
    ] = None,
    pretrained: PretrainedOpt = None,
    train_data: TrainDataOpt = None,
    val_data: ValDataOpt = None,
    image_root: ImageRootOpt = None,
    split: SplitOpt = "train",
    val_split: ValSplitOpt = "val",
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = 1,
    lr: LrOpt = None,
    weight_decay: WeightDecayOpt = None,
    warmup_steps: WarmupStepsOpt = 0,
    clip_grad: ClipGradOpt = None,
    trainable: TrainableOpt = None,
    amp: AmpOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    checkpoint_dir: CheckpointDirOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    resume: ResumeOpt = False,
    save_dtype: Annotated[str, typer.Option("--save-dtype", help="fp32, fp16 or bf16: the dtype of the saved weights.")] = "fp32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Train or fine-tune a model without compressing it (ITC on image-caption data) and save it in its own format."""
    from crossget_cli.train.native import train as run_train
    from crossget_cli.cli.render import training_progress

    config = _finetune_config(
        None,
        _training_flags(locals()),
    )
    with training_progress(enabled=True) as on_step:
        result = run_train(
            model, output, config, pretrained=pretrained, save_dtype=save_dtype, overwrite=overwrite, progress=on_step
        )
    if not result.training:
        return
    summary = {k: result.training[k] for k in ("steps", "final_loss", "best", "weights_sha256")}
    if json_out:
        print_json({"output": str(result.output), **summary})
        return
    best = summary["best"]
    stdout.print(
        f"trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}"
        + (f", best epoch {best['epoch']} ({best['metric']} {best['value']:.2f})" if best else "")
    )
    stdout.print(f"wrote {result.output}", soft_wrap=True)


def _coop_run(recipe, data, image_root, split, epochs, max_steps, batch_size, lr, weight_decay, seed, device, coop: dict):
    """CoOp settings: flags over the recipe's ``finetune`` section over CoOp's defaults."""
    from crossget_cli.train.coop import CoopConfig, CoopRun

    if not data:
        raise CrossGetError(
            "--finetune --objective coop needs --train-data", "pass classification data (ImageFolder, CSV/JSONL, HF datasets)"
        )
    spec = recipe.finetune if recipe is not None else None
    from_recipe = {} if spec is None else {"js_weight": spec.js_weight, "shots": spec.shots}
    given = dict(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        device=device,
        shots=coop["shots"],
        n_ctx=coop["n_ctx"],
        init=coop["init"],
    )
    config = CoopConfig(**{k: v for k, v in {**from_recipe, **given}.items() if v is not None})
    return CoopRun(
        config,
        data,
        # An ImageFolder without a train/ subfolder is the training set itself.
        split=None if Path(data).is_dir() and not (Path(data) / split).is_dir() else split,
        image_root=image_root,
        label_column=coop["label_column"],
        classnames=coop["classnames"],
    )


def _finetune_config(recipe, flags: dict):
    """Flags over the recipe's ``finetune`` section over the defaults."""
    from crossget_cli.adapters.training import FinetuneConfig
    from crossget_cli.train.loop import recipe_settings

    if not flags["data"]:
        raise CrossGetError(
            "--finetune needs --train-data", "pass image-caption data (Karpathy/BLIP JSON, CSV/JSONL, HF datasets)"
        )
    from_recipe = recipe_settings(recipe.finetune if recipe is not None else None)
    given = {k: v for k, v in flags.items() if v is not None}
    return FinetuneConfig(**{**from_recipe, **given})


def parse_sweep(option: str, value: Optional[str]):
    """``"0,4,8"`` -> [0, 4, 8]; a per-layer setting joins its values with
    ``/`` (``"16,4/4/2/2"`` -> [16, (4, 4, 2, 2)])."""
    if value is None:
        return None
    sweep = []
    for item in value.split(","):
        try:
            numbers = [int(p) for p in item.strip().split("/")]
        except ValueError:
            raise CrossGetError(
                f"{option} must be comma-separated integers (per-layer values joined by '/'), got {value!r}",
                f"e.g. {option} 0,8,16",
            ) from None
        if any(n < 0 for n in numbers):
            raise CrossGetError(f"{option} must be >= 0, got {value!r}", "r is the number of tokens merged per layer")
        sweep.append(numbers[0] if len(numbers) == 1 else tuple(numbers))
    return sweep


def parse_ints(option: str, value: str) -> list[int]:
    try:
        numbers = [int(p) for p in value.split(",")]
    except ValueError:
        raise CrossGetError(f"{option} must be comma-separated integers, got {value!r}", f"e.g. {option} 1,32") from None
    if any(n < 1 for n in numbers):
        raise CrossGetError(f"{option} values must be >= 1, got {value!r}", f"e.g. {option} 1,32")
    return numbers


@app.command()
@handle_errors
def profile(
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    vision_r: Annotated[
        Optional[str], typer.Option("--vision-r", help="Vision r sweep, e.g. 0,4,8,12,16 (per-layer: 4/4/2/2).")
    ] = None,
    text_r: Annotated[Optional[str], typer.Option("--text-r", help="Text r sweep, e.g. 0,6.")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Throughput batch sizes; latency is at batch 1.")] = "1,32",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16.")] = "fp32",
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch.set_num_threads while profiling.")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="Run the encoders through torch.compile.")] = False,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs",
            help="Time CUDA-graph replays of the encoder forwards (original and compressed alike), captured once per "
            "run, tower and batch size. Needs --device cuda; not with --compile. MACs, memory and matching time stay "
            "eager, and so does --generation timing.",
        ),
    ] = False,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed forwards per setting and batch size.")] = 3,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed forwards per setting and batch size (median reported).")] = 10,
    towers: Annotated[str, typer.Option("--towers", help="both, image or text.")] = "both",
    method: Annotated[
        str, typer.Option("--method", help="crossget or tome (the ToMe baseline) for every swept run.")
    ] = "crossget",
    generation: Annotated[
        Optional[bool],
        typer.Option(
            "--generation/--no-generation",
            help="Generative models (BLIP captioning/VQA, BLIP-2, LLaVA): also time prefill, decode and end-to-end generation "
            "(default: on for them; always eager, also with --cuda-graphs).",
        ),
    ] = None,
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Tokens generated per item when timing generation.")] = 20,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG of throughput and GMACs against r.")] = None,
    accuracy: Annotated[
        Optional[Path], typer.Option("--accuracy", help="JSON mapping run label (e.g. rv16_rl0) to accuracy, for the plot.")
    ] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the JSON report to this file.")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """FLOPs, throughput, latency, memory and matching time: original vs CrossGET, over a sweep of r.
    Generative models (BLIP captioning/VQA, BLIP-2, LLaVA): also prefill latency, decode tokens/s, items/s, memory."""
    from crossget_cli.adapters.patching import reduction_config
    from crossget_cli.loading.models import load_model
    from crossget_cli.files import check_writable, write_atomic
    from crossget_cli.profile.plot import plot_report
    from crossget_cli.profile.speed import ProfileConfig, check_cuda_graphs, profile_model
    from crossget_cli.cli.render import profile_table, progress_bar

    if cuda_graphs:  # refused before a model is loaded
        check_cuda_graphs(device, compile_)
    for path, option in ((output, "--output"), (plot, "--plot")):
        if path:
            check_writable(path, option)
    vision_sweep, text_sweep = parse_sweep("--vision-r", vision_r), parse_sweep("--text-r", text_r)
    accuracy_data = _read_json(accuracy, "--accuracy") if accuracy else None
    loaded = load_model(model, pretrained)
    from crossget_cli.adapters.registry import find_adapter

    adapter = find_adapter(loaded.model)
    reduces_text = "text" in adapter.reduces
    current = reduction_config(loaded.model)
    if vision_sweep is None and text_sweep is None and current is not None:
        vision_sweep, text_sweep = [current.vision_r], [current.text_r]
    config = ProfileConfig(
        vision_r=vision_sweep if vision_sweep is not None else [16] if text_sweep is None else [0],
        text_r=text_sweep if text_sweep is not None else [6] if vision_sweep is None and reduces_text else [0],
        batch_sizes=parse_ints("--batch-sizes", batch_sizes),
        device=device,
        dtype=dtype,
        threads=threads,
        compile=compile_,
        cuda_graphs=cuda_graphs,
        warmup=warmup,
        repeats=repeats,
        towers=towers,
        method=method,
    )
    with progress_bar("profiling") as advance:
        report = profile_model(loaded.model, config, progress=advance, model_name=loaded.source)
    data = report.to_dict()
    if generation is None:
        generation = adapter.generates(loaded.model)
    if generation:
        from crossget_cli.profile.generation import profile_generation

        timings = profile_generation(
            loaded.model,
            config.settings(),
            batch=max(config.batch_sizes),
            new_tokens=new_tokens,
            warmup=warmup,
            repeats=repeats,
            device=device,
            dtype=config.torch_dtype,
            method=method,
        )
        data["generation"] = [t.to_dict() for t in timings]
    if output:
        write_text_atomic(output, json.dumps(data, indent=2, default=str) + "\n")
    if plot:
        write_atomic(plot, lambda tmp: plot_report(report, tmp, accuracy=accuracy_data))
    if json_out:
        print_json(data)
    else:
        stdout.print(profile_table(data))
        if data.get("generation"):
            from crossget_cli.cli.render import generation_table

            stdout.print(generation_table(data["generation"]))


@app.command("eval")
@handle_errors
def eval_command(
    model: Annotated[
        Optional[list[str]],
        typer.Option("--model", "-m", help="Model to evaluate; repeat to compare (the first is the reference for deltas)."),
    ] = None,
    task: Annotated[
        str, typer.Option("--task", "-t", help="retrieval, zeroshot, captioning, vqa or multiple-choice.")
    ] = "retrieval",
    data: Annotated[
        Optional[str],
        typer.Option(
            "--data",
            "-d",
            help="Karpathy/BLIP JSON, CSV/JSONL, ImageFolder, VQAv2 questions JSON, or an HF datasets name/folder.",
        ),
    ] = None,
    predictions: Annotated[
        Optional[list[str]],
        typer.Option(
            "--predictions",
            help="Score a results file instead of a model (captioning: COCO results; vqa: VQAv2 results); repeatable.",
        ),
    ] = None,
    annotations: Annotated[Optional[str], typer.Option("--annotations", help="VQAv2 annotation JSON (vqa).")] = None,
    vqa_variant: Annotated[
        str, typer.Option("--vqa-variant", help="official (current vqaEval.py) or legacy (the 2016 code BLIP/LAVIS use).")
    ] = "official",
    pretrained: PretrainedOpt = None,
    image_root: Annotated[
        Optional[str], typer.Option("--image-root", help="Folder the data's image paths are relative to.")
    ] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Split to evaluate (default: test).")] = None,
    image_column: Annotated[str, typer.Option("--image-column", help="Image column (CSV/JSONL/HF datasets).")] = "image",
    caption_column: Annotated[str, typer.Option("--caption-column", help="Caption column (CSV/JSONL/HF datasets).")] = "caption",
    label_column: Annotated[str, typer.Option("--label-column", help="Label column (zeroshot).")] = "label",
    classnames: Annotated[
        Optional[str], typer.Option("--classnames", help="File with one class name per line (zeroshot).")
    ] = None,
    templates: Annotated[
        str, typer.Option("--templates", help="Zero-shot prompts: openai-imagenet, simple, or a file with one template per line.")
    ] = "openai-imagenet",
    itm_k: Annotated[
        Optional[int],
        typer.Option(
            "--itm-k",
            help="Retrieval with an ITM head (BLIP): re-rank the ITC top k (default 128; BLIP: 128 Flickr, 256 COCO; 0 = ITC only).",
        ),
    ] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option("--max-new-tokens", help="Generative tasks: longest generated text (default 20).")
    ] = None,
    min_new_tokens: Annotated[
        Optional[int], typer.Option("--min-new-tokens", help="Generative tasks: shortest generated text.")
    ] = None,
    num_beams: Annotated[
        Optional[int],
        typer.Option(
            "--num-beams", help="Generative tasks: beam width (default: the model family's, e.g. 3 for beam search, 1 = greedy)."
        ),
    ] = None,
    prompt: Annotated[
        Optional[str],
        typer.Option(
            "--prompt",
            help="Captioning: text prefix (BLIP: 'a picture of '); VQA/multiple-choice: template with {question} "
            "(default: the model's exported recipe, else the family's, e.g. LLaVA-1.5's).",
        ),
    ] = None,
    recipe: Annotated[
        Optional[str],
        typer.Option(
            "--recipe", "-r", help="Recipe (file or shipped name) whose eval section gives generation/re-ranking defaults."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images/texts per forward.")] = 64,
    num_workers: Annotated[int, typer.Option("--num-workers", help="DataLoader worker processes for images.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16.")] = "fp32",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N images (quick runs).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the JSON report to this file.")] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print the breakdowns (VQA: accuracy per question type).")
    ] = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Evaluate models (original and compressed) or prediction files: retrieval, zero-shot, captioning, VQA."""
    from crossget_cli.evaluation.runner import EvalConfig, evaluate, evaluate_predictions
    from crossget_cli.files import check_writable
    from crossget_cli.cli.render import breakdown_tables, eval_table, progress_bar

    if not data:
        raise CrossGetError("no data given", "pass --data (a data file, folder or HF dataset)")
    if bool(model) == bool(predictions):
        raise CrossGetError(
            "pass either --model or --predictions", "models are run on --data; prediction files are scored against it"
        )
    config = EvalConfig(
        task=task,
        data=data,
        image_root=image_root,
        split=split,
        image_column=image_column,
        caption_column=caption_column,
        label_column=label_column,
        classnames=classnames,
        templates=templates,
        annotations=annotations,
        vqa_variant=vqa_variant,
        **_generation_settings(
            recipe, itm_k=itm_k, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams, prompt=prompt
        ),
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        dtype=dtype,
        limit=limit,
    )
    if output:  # found before the evaluation, not after it
        check_writable(output)
    if predictions:
        report = evaluate_predictions(predictions, config)
    else:
        with progress_bar("evaluating") as advance:
            report = evaluate(model, config, pretrained=pretrained, progress=lambda what, done, total: advance(done, total, what))
    for note in report["notes"]:
        stderr.print(f"note: {note}")
    if output:
        write_text_atomic(output, json.dumps(report, indent=2) + "\n")
    if json_out:
        print_json(report)
    else:
        stdout.print(eval_table(report))
        for table in breakdown_tables(report) if verbose else ():
            stdout.print(table)


@app.command("recipes")
@handle_errors
def recipes_command(
    name: Annotated[Optional[str], typer.Argument(help="Print this shipped recipe's YAML (to copy and edit).")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """List the recipes shipped with crossget (`--recipe NAME` takes them), or print one."""
    from crossget_cli.recipes import builtin_recipe_text, list_builtin_recipes, load_recipe
    from crossget_cli.cli.render import recipes_table

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


def _generation_settings(recipe: Optional[str], **flags) -> dict:
    """Generation/re-ranking settings: flags over the recipe's eval section over the defaults."""
    from crossget_cli.recipes import load_recipe

    spec = load_recipe(recipe).eval if recipe else None
    from_recipe = {k: getattr(spec, k) for k in flags if spec is not None and getattr(spec, k) is not None}
    return {**from_recipe, **{k: v for k, v in flags.items() if v is not None}}


def _read_json(path: Path, option: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CrossGetError(f"{option} file not found: {path}", "check the path") from None
    except json.JSONDecodeError as err:
        raise CrossGetError(f"{option} file {path} is not valid JSON: {err}", "fix the file") from None


def write_text_atomic(path: Path, text: str) -> None:
    from crossget_cli.files import write_atomic

    write_atomic(path, lambda tmp: tmp.write_text(text))


def main() -> None:
    # SIGTERM (a scheduler's or `timeout`'s stop) unwinds like Ctrl-C, so the
    # temporaries of a write under way are removed instead of left behind.
    signal.signal(signal.SIGTERM, _terminate)
    app()


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
