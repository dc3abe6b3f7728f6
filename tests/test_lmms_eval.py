"""The lmms-eval model plugin (``crossget_cli/harness/lmms_eval.py``), run through
lmms-eval's own command line on a task defined here (a local ``save_to_disk`` data
set of PNG images and questions): its answers equal ``crossget eval --task vqa``'s,
and its log-likelihoods equal the patched model's scored one prompt at a time.
Needs the optional extra (``pip install -e ".[lmms]"``); skipped without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval")

from tiny_models import save_tiny_llava

QUESTIONS = ["what color is the circle ?", "shape ?", "what is the shape of the two blue square ?"]
CHOICES = ["red", "blue circle"]
MAX_NEW_TOKENS = 3

VQA_TASK = """task: crossget_tiny_vqa
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: image
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

CHOICE_TASK = """task: crossget_tiny_choice
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: multiple_choice
doc_to_visual: image
doc_to_text: question
doc_to_target: 0
doc_to_choice: {choices}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _write_images(folder: Path) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(len(QUESTIONS)):
        path = folder / f"img{i}.png"
        pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(i)) * 255
        Image.fromarray(pixels.byte().numpy()).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny LLaVA, its r=2 export, the two tasks, and one lmms-eval run of the
    original patched on the fly (``vision_r=2``) at batch size 2."""
    import datasets

    from crossget_cli.export.compress import compress

    root = tmp_path_factory.mktemp("lmms")
    save_tiny_llava(root / "original")
    compress(str(root / "original"), root / "r2", vision_r=2, measure_speed=False)
    images = _write_images(root)
    rows = {"image": [str(p) for p in images], "question": QUESTIONS, "answer": ["red", "circle", "two"]}
    dataset = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(root / "data"))
    (root / "tasks").mkdir()
    (root / "tasks" / "vqa.yaml").write_text(VQA_TASK.format(data=root / "data", max_new_tokens=MAX_NEW_TOKENS))
    (root / "tasks" / "choice.yaml").write_text(CHOICE_TASK.format(data=root / "data", choices=json.dumps(CHOICES)))

    model_args = f"model={root / 'original'},vision_r=2,batch_size=2,device=cpu,dtype=fp32"
    command = [sys.executable, "-m", "lmms_eval", "--model", "crossget", "--model_args", model_args]
    command += ["--tasks", "crossget_tiny_vqa,crossget_tiny_choice", "--include_path", str(root / "tasks")]
    command += ["--output_path", str(root / "out"), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "hf-cache")}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    # lmms-eval logs a failed evaluation and still exits 0: the results file is the check
    results = sorted((root / "out").glob("*/*_results.json"))
    assert done.returncode == 0 and results, done.stdout[-3000:] + done.stderr[-3000:]
    samples = {}
    for path in results[0].parent.glob("*_samples_*.jsonl"):
        task = path.stem.split("_samples_", 1)[1]
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        samples[task] = {r["doc_id"]: r for r in records}
    return {"root": root, "images": images, "results": json.loads(results[0].read_text()), "samples": samples}


def test_the_entry_point_registers_the_model():
    from lmms_eval.models import get_model

    from crossget_cli.harness.lmms_eval import CrossGetLMM

    assert get_model("crossget") is CrossGetLMM


def test_results_file_holds_both_tasks(run):
    assert set(run["results"]["results"]) == {"crossget_tiny_vqa", "crossget_tiny_choice"}
    assert set(run["samples"]) == {"crossget_tiny_vqa", "crossget_tiny_choice"}


def _lmms_answers(run) -> list[str]:
    samples = run["samples"]["crossget_tiny_vqa"]
    answers = []
    for i in range(len(QUESTIONS)):
        response = samples[i]["filtered_resps"]
        answers.append(response[0] if isinstance(response, list) else response)
    return answers


def test_answers_equal_crossget_eval(run, tmp_path):
    """Each lmms-eval answer is the one ``crossget eval --task vqa`` generates for the
    exported r=2 model: string for string through the runner's path (the model's
    preprocessing, the family's VQA template, batches of 2), and scored 100% by the
    CLI when lmms-eval's answers are taken as the ground truth."""
    from typer.testing import CliRunner

    from crossget_cli.adapters.registry import find_adapter
    from crossget_cli.cli.app import app
    from crossget_cli.data.vqa import load_vqa
    from crossget_cli.loading.models import load_model
    from crossget_cli.loading.preprocessing import model_io

    answers = _lmms_answers(run)
    assert any(answers), answers  # a random model still says something: equal empty strings would prove nothing
    rows = [{"image": str(p), "question": q, "answers": [a] * 10} for p, q, a in zip(run["images"], QUESTIONS, answers)]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows))

    io = model_io(load_model(str(run["root"] / "r2")))
    adapter = find_adapter(io.model)
    data = load_vqa(str(tmp_path / "q.jsonl"))
    loader = torch.utils.data.DataLoader(data.image_dataset(io.transform), batch_size=2)
    ours = []
    for indices, images in loader:
        questions = [data.questions[i] for i in indices.tolist()]
        ours += adapter.answer_questions(
            io.model,
            images,
            questions,
            tokenizer=io.loaded.tokenizer,
            prompt=adapter.prompt_templates["vqa"],
            max_new_tokens=MAX_NEW_TOKENS,
            **adapter.generation_defaults,
        )
    assert ours == answers

    args = ["eval", "--task", "vqa", "--data", str(tmp_path / "q.jsonl"), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    result = CliRunner().invoke(app, [*args, "--batch-size", "2", "-m", str(run["root"] / "r2"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]["vqa"][str(run["root"] / "r2")]["overall"] == pytest.approx(100.0)


def test_loglikelihoods_equal_the_patched_model_one_prompt_at_a_time(run):
    """The multiple-choice task's scores (batched, left padded) equal each prompt +
    " choice" scored alone by the exported r=2 model."""
    from PIL import Image

    from crossget_cli.adapters.registry import find_adapter
    from crossget_cli.loading.models import load_model
    from crossget_cli.loading.preprocessing import model_io

    io = model_io(load_model(str(run["root"] / "r2")))
    adapter = find_adapter(io.model)
    tokenizer = io.loaded.tokenizer
    samples = run["samples"]["crossget_tiny_choice"]
    for i, (path, question) in enumerate(zip(run["images"], QUESTIONS)):
        pixels = io.transform(Image.open(path).convert("RGB"))[None]
        for choice, (logprob, greedy) in zip(CHOICES, samples[i]["filtered_resps"]):
            expected, expected_greedy = adapter.continuation_logprobs(
                io.model, pixels, [question], [f" {choice}"], tokenizer=tokenizer, prompt=adapter.prompt_templates["vqa"]
            )[0]
            assert float(logprob) == pytest.approx(expected, abs=1e-4)
            assert str(greedy) == str(expected_greedy)
    assert run["results"]["results"]["crossget_tiny_choice"]["acc,none"] in (0.0, 1 / 3, 2 / 3, 1.0)


def test_model_args_win_over_lmms_eval_flags_and_are_checked(run):
    from crossget_cli.errors import CrossGetError
    from crossget_cli.harness.lmms_eval import CrossGetLMM

    model = CrossGetLMM.create_from_arg_string(
        f"model={run['root'] / 'r2'},batch_size=3", {"batch_size": "1", "device": None, "max_batch_size": None}
    )
    assert model.batch_size == 3
    assert model.prompt == model.adapter.prompt_templates["vqa"]
    with pytest.raises(NotImplementedError, match="single-round"):
        model.generate_until_multi_round([])
    with pytest.raises(CrossGetError, match="batch_size"):
        CrossGetLMM.create_from_arg_string(f"model={run['root'] / 'r2'},batch_size=auto")
    with pytest.raises(CrossGetError, match="vision_r"):
        CrossGetLMM.create_from_arg_string(f"model={run['root'] / 'r2'},vision_r=lots")
