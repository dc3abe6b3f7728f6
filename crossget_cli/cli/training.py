"""``crossget compress`` (load, patch, optionally fine-tune, export) and ``crossget
train`` (train without compressing), with the training options they share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from crossget_cli.cli.common import (
    DebugOpt,
    JsonOpt,
    ModelOpt,
    PretrainedOpt,
    handle_errors,
    print_json,
    stdout,
)
from crossget_cli.config import parse_r
from crossget_cli.errors import CrossGetError

FT = "Fine-tuning (--finetune)"
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


# Objective options (FinetuneConfig.options, validated by the objective): the CLI parameter
# is the option's name; passed when given, so an objective without it refuses it by name.
OBJECTIVE_OPTIONS = ("shots", "n_ctx", "ctx_init", "label_column", "classnames")


def training_flags(arguments: dict) -> dict:
    """The training options among a command's arguments, named as FinetuneConfig names them."""
    return {field: arguments[name] for name, field in TRAINING_OPTIONS.items()}


def objective_options(arguments: dict) -> dict:
    """The objective options given among a command's arguments."""
    return {name: arguments[name] for name in OBJECTIVE_OPTIONS if arguments.get(name) is not None}


TrainDataOpt = Annotated[
    Optional[str],
    typer.Option(
        "--train-data",
        help="Training data: image-caption pairs (retrieval formats); CoOp: classification data (ImageFolder, CSV/JSONL, HF datasets).",
        rich_help_panel=FT,
    ),
]
ValDataOpt = Annotated[
    Optional[str], typer.Option("--val-data", help="Validation data; the best epoch (r_mean) is kept.", rich_help_panel=FT)
]
ImageRootOpt = Annotated[
    Optional[str], typer.Option("--image-root", help="Folder the data's image paths are relative to.", rich_help_panel=FT)
]
SplitOpt = Annotated[str, typer.Option("--split", help="Training split.", rich_help_panel=FT)]
ValSplitOpt = Annotated[str, typer.Option("--val-split", help="Validation split.", rich_help_panel=FT)]
EpochsOpt = Annotated[
    Optional[int],
    typer.Option("--epochs", help="Epochs (default: recipe, else the objective's: 1, CoOp 200).", rich_help_panel=FT),
]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimizer steps.", rich_help_panel=FT)]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size", help="Global batch size (default: recipe, else the objective's: 64, CoOp 32).", rich_help_panel=FT
    ),
]
GradAccumOpt = Annotated[int, typer.Option("--grad-accum", help="Gradient accumulation steps.", rich_help_panel=FT)]
LrOpt = Annotated[
    Optional[float],
    typer.Option(
        "--lr", help="Learning rate (default: recipe, else the objective's: AdamW 1e-5, CoOp SGD 0.002).", rich_help_panel=FT
    ),
]
WeightDecayOpt = Annotated[
    Optional[float],
    typer.Option(
        "--weight-decay", help="Weight decay (default: recipe, else the objective's: 0.05, CoOp 5e-4).", rich_help_panel=FT
    ),
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
        help="all (default; CoOp: cross), cross, a group the model family names (e.g. cross+projector), or comma-separated "
        "parameter-name substrings.",
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
    size_bias: Annotated[
        Optional[bool],
        typer.Option(
            "--size-bias/--no-size-bias",
            help="--no-size-bias: merged tokens attend without the log(size) bias (ToMe's prop_attn=False), so attention "
            "takes no mask and SDPA may use its flash kernel (default: on, or the recipe's reduction.size_bias).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    speed: Annotated[
        bool, typer.Option("--speed/--no-speed", help="Add a short batch-1 throughput/latency profile to report.json.")
    ] = True,
    finetune: Annotated[
        bool, typer.Option("--finetune", help="Fine-tune (--objective, default ITC + L_JS) before exporting.", rich_help_panel=FT)
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
        Optional[str],
        typer.Option("--label-column", help="CoOp: label column (CSV/JSONL/HF datasets; default label).", rich_help_panel=FT),
    ] = None,
    classnames: Annotated[
        Optional[str], typer.Option("--classnames", help="CoOp: file with one class name per line.", rich_help_panel=FT)
    ] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Load a checkpoint, inject CrossGET, optionally fine-tune it, and export it with its recipe and a report."""
    from crossget_cli.export.compress import compress as run_compress
    from crossget_cli.recipes import load_recipe

    recipe_obj = load_recipe(recipe) if recipe else None
    finetune_config = None
    if finetune:
        arguments = locals()
        flags = {**training_flags(arguments), "objective": objective, "annotations": annotations}
        finetune_config = finetune_config_from(recipe_obj, {**flags, "options": objective_options(arguments)})
    elif train_data or resume:
        raise CrossGetError("--train-data/--resume are fine-tuning options", "add --finetune")

    from crossget_cli.cli.render import training_progress

    with training_progress(enabled=finetune) as on_step:
        result = run_compress(
            model,
            output,
            pretrained=pretrained,
            recipe=recipe_obj,
            vision_r=parse_r(vision_r, "--vision-r") if vision_r is not None else None,
            text_r=parse_r(text_r, "--text-r") if text_r is not None else None,
            method=method,
            size_bias=size_bias,
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
    from crossget_cli.cli.render import training_progress
    from crossget_cli.export.native import train as run_train

    config = finetune_config_from(None, training_flags(locals()))
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


def finetune_config_from(recipe, flags: dict):
    """The run's FinetuneConfig (:func:`crossget_cli.train.loop.finetune_config`), once the
    flags name training data."""
    from crossget_cli.train.loop import finetune_config

    spec = recipe.finetune if recipe is not None else None
    objective = flags.get("objective") or (spec.objective if spec is not None else "clip")
    if not flags["data"]:
        raise CrossGetError(
            "--finetune needs --train-data",
            f"pass the training data of --objective {objective} (clip: image-caption data, e.g. Karpathy/BLIP JSON, "
            "CSV/JSONL, HF datasets; coop: classification data)",
        )
    return finetune_config(recipe, **flags)
