"""``crossget profile`` (FLOPs, speed, memory over a sweep of r) and ``crossget eval``
(retrieval, zero-shot, captioning, VQA, multiple choice)."""

from __future__ import annotations

import json
import sys
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
    read_json,
    stderr,
    stdout,
    write_text_atomic,
)
from crossget_cli.errors import CrossGetError


def parse_ints(option: str, value: str) -> list[int]:
    try:
        numbers = [int(p) for p in value.split(",")]
    except ValueError:
        raise CrossGetError(f"{option} must be comma-separated integers, got {value!r}", f"e.g. {option} 1,32") from None
    if any(n < 1 for n in numbers):
        raise CrossGetError(f"{option} values must be >= 1, got {value!r}", f"e.g. {option} 1,32")
    return numbers


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
        Optional[str],
        typer.Option(
            "--method",
            help="crossget or tome (the ToMe baseline) for every swept run, or crossget,tome: each setting with "
            "both, interleaved with the original in one run. Default: crossget, or as the compressed --model was "
            "exported.",
        ),
    ] = None,
    size_bias: Annotated[
        Optional[bool],
        typer.Option(
            "--size-bias/--no-size-bias",
            help="--no-size-bias: every swept run attends without the log(size) bias of merged tokens (no mask, "
            "flash-eligible). Default: on, or as the compressed --model was exported.",
        ),
    ] = None,
    generation: Annotated[
        Optional[bool],
        typer.Option(
            "--generation/--no-generation",
            help="Models that generate text (captioning, VQA): also time prefill, decode and end-to-end generation "
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
    Models that generate text: also prefill latency, decode tokens/s, items/s, memory."""
    from crossget_cli.cli.render import profile_table, progress_bar
    from crossget_cli.files import check_writable, write_atomic
    from crossget_cli.profile.job import run_profile
    from crossget_cli.profile.plot import plot_report
    from crossget_cli.profile.speed import ProfileConfig

    config = ProfileConfig(
        batch_sizes=parse_ints("--batch-sizes", batch_sizes),
        device=device,
        dtype=dtype,
        threads=threads,
        compile=compile_,
        cuda_graphs=cuda_graphs,
        warmup=warmup,
        repeats=repeats,
        towers=towers,
        method=method or "crossget",  # validated here, before the model is loaded
    )
    for path, option in ((output, "--output"), (plot, "--plot")):
        if path:
            check_writable(path, option)
    from crossget_cli.config import parse_r_sweep

    vision_sweep = parse_r_sweep(vision_r, "--vision-r") if vision_r is not None else None
    text_sweep = parse_r_sweep(text_r, "--text-r") if text_r is not None else None
    accuracy_data = read_json(accuracy, "--accuracy") if accuracy else None
    with progress_bar("profiling") as advance:
        result = run_profile(
            model,
            config,
            pretrained=pretrained,
            vision_r=vision_sweep,
            text_r=text_sweep,
            generation=generation,
            new_tokens=new_tokens,
            size_bias=size_bias,
            method=method,
            progress=advance,
        )
    report, data = result.report, result.data
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
            help="Retrieval with a model that has an image-text matching head: re-rank the ITC top k "
            "(default 128; BLIP's own evaluation: 128 Flickr, 256 COCO; 0 = ITC only).",
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
            help="Captioning: text prefix (e.g. 'a picture of '); VQA/multiple-choice: template with {question} "
            "(default: the model's exported recipe, else its family's).",
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
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Also write the JSON report to this file (--format clip-benchmark: a .json file for one model, "
            "else a folder with one CLIP_benchmark file per model).",
        ),
    ] = None,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="table (crossget's table; --json for its report) or clip-benchmark (retrieval/zeroshot: CLIP_benchmark's "
            "result JSON, one line per model on stdout).",
        ),
    ] = "table",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print the breakdowns (VQA: accuracy per question type).")
    ] = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Evaluate models (original and compressed) or prediction files: retrieval, zero-shot, captioning, VQA."""
    from crossget_cli.cli.render import breakdown_tables, eval_table, progress_bar
    from crossget_cli.evaluation.runner import EvalConfig, evaluate, evaluate_predictions
    from crossget_cli.files import check_writable

    if not data:
        raise CrossGetError("no data given", "pass --data (a data file, folder or HF dataset)")
    if bool(model) == bool(predictions):
        raise CrossGetError(
            "pass either --model or --predictions", "models are run on --data; prediction files are scored against it"
        )
    from crossget_cli.recipes import load_recipe

    config = EvalConfig.from_recipe(
        load_recipe(recipe) if recipe else None,
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
        itm_k=itm_k,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        num_beams=num_beams,
        prompt=prompt,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        dtype=dtype,
        limit=limit,
    )
    if format_ not in ("table", "clip-benchmark"):
        raise CrossGetError(f"unknown --format {format_!r}", "use table or clip-benchmark")
    clip_benchmark = format_ == "clip-benchmark"
    if clip_benchmark:
        from crossget_cli.harness import clip_benchmark as harness

        if json_out:
            raise CrossGetError("--json and --format clip-benchmark both choose stdout's format", "pass one of them")
        if predictions or task not in harness.TASKS:
            raise CrossGetError(
                "--format clip-benchmark writes model results of retrieval or zeroshot", "use -t retrieval or zeroshot"
            )
        if output:
            harness.check_output(output, len(model))
    elif output:  # found before the evaluation, not after it
        check_writable(output)
    if predictions:
        report = evaluate_predictions(predictions, config)
    else:
        with progress_bar("evaluating") as advance:
            report = evaluate(model, config, pretrained=pretrained, progress=lambda what, done, total: advance(done, total, what))
    for note in report["notes"]:
        stderr.print(f"note: {note}")
    if clip_benchmark:
        documents = harness.clip_benchmark_results(report, pretrained)
        if output:
            harness.write_clip_benchmark(documents, output)
        sys.stdout.write(harness.json_lines(documents))
        return
    if output:
        write_text_atomic(output, json.dumps(report, indent=2) + "\n")
    if json_out:
        print_json(report)
    else:
        stdout.print(eval_table(report))
        for table in breakdown_tables(report) if verbose else ():
            stdout.print(table)
