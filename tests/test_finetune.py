"""Fine-tuning: a short real run, exact resume, and 2-process DDP equal to one
process with the same global batch."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from typer.testing import CliRunner

import crossget_cli
from crossget_cli.adapters.training import FinetuneConfig, Objective, register_objective
from crossget_cli.cli.app import app
from crossget_cli.errors import CrossGetError
from crossget_cli.loading.models import load_model
from crossget_cli.loading.preprocessing import model_io
from crossget_cli.train.loop import finetune

runner = CliRunner()


def _io(tiny):
    loaded = load_model(str(tiny))
    crossget_cli.patch(loaded.model, vision_r=2, text_r=2)
    return model_io(loaded)


def _config(shapes, **overrides):
    base = dict(data=str(shapes / "data.json"), batch_size=4, lr=1e-3, epochs=2, seed=3)
    return FinetuneConfig(**{**base, **overrides})


def test_short_finetune_lowers_the_loss_and_exports(shapes, tiny, tmp_path):
    out = tmp_path / "out"
    args = ["compress", "-m", str(tiny), "--vision-r", "2", "--text-r", "2", "-o", str(out), "--no-speed", "--json"]
    ft = ["--finetune", "--train-data", str(shapes / "data.json"), "--batch-size", "4", "--epochs", "8", "--lr", "2e-3"]
    result = runner.invoke(app, [*args, *ft, "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["report"]
    losses = [r["loss"] for r in report["finetune"]["history"]]
    assert len(losses) == 8 * 4
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4])
    log = [json.loads(line) for line in (tmp_path / "ckpt" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx(losses)

    exported = crossget_cli.load(str(out))
    original = load_model(str(tiny)).model
    assert exported.visual.transformer.cross_image.abs().sum() > 0  # cross tokens learned (they start at zero)
    assert exported.transformer.cross_text.abs().sum() > 0
    assert not torch.equal(exported.visual.conv1.weight, original.visual.conv1.weight)
    recipe = (out / "crossget.yaml").read_text()
    assert "finetune:" in recipe and "lr: 0.002" in recipe


def test_resume_continues_exactly(shapes, tiny, tmp_path):
    whole = _io(tiny)
    reference = finetune(whole, _config(shapes, max_steps=6))

    class Crash(Exception):
        pass

    def crash_at_step_5(record):
        if record["step"] == 5:
            raise Crash

    first = _io(tiny)
    config = _config(shapes, max_steps=6, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)
    with pytest.raises(Crash):
        finetune(first, config, progress=crash_at_step_5)
    second = _io(tiny)  # a fresh process: weights come from the checkpoint
    resumed = finetune(second, FinetuneConfig(**{**config.__dict__, "resume": True}))
    # the history carries the steps before the checkpoint (4) and the ones redone after it
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in reference.history], abs=1e-6)
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name


# AdamW normalises each gradient element, so an element whose gradient is
# rounding noise moves by up to lr in a direction that depends on the reduction
# order; a small lr keeps that below the tolerance (1 element of 65k at lr 1e-3).
DDP_LR = 1e-4


def _ddp_worker(rank, world, init_file, shapes, tiny, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        io = _io(tiny)
        result = finetune(io, _config(shapes, max_steps=3, lr=DDP_LR))
        if rank == 0:
            torch.save({"state": io.model.state_dict(), "losses": [r["loss"] for r in result.history]}, out)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_equals_one_process(shapes, tiny, tmp_path):
    single = _io(tiny)
    reference = finetune(single, _config(shapes, max_steps=3, lr=DDP_LR))
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), shapes, tiny, str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=False)
    assert ddp["losses"] == pytest.approx([r["loss"] for r in reference.history], abs=1e-5)
    for name, value in single.model.state_dict().items():
        other = ddp["state"][name]
        if name.endswith("attn.in_proj_bias"):
            # The key bias has an exactly zero gradient (it shifts every logit of
            # a query row equally); AdamW turns the rounding noise of that zero
            # into +-lr steps, different for any two reduction orders. Compare q, v.
            width = value.shape[0] // 3
            value, other = torch.cat([value[:width], value[2 * width :]]), torch.cat([other[:width], other[2 * width :]])
        # AdamW's normalised step scales the rounding noise of a near-zero
        # gradient up (two batch splits round differently): 3 steps at lr 1e-4
        # stay within a third of one step of each other.
        assert torch.allclose(other, value, atol=3e-5, rtol=0), name


def test_bad_finetune_input(shapes, tiny, tmp_path):
    with pytest.raises(CrossGetError, match="fewer than one batch"):
        finetune(_io(tiny), _config(shapes, batch_size=64))
    with pytest.raises(CrossGetError, match="CUDA"):
        _config(shapes, amp="fp16")
    with pytest.raises(CrossGetError, match="--checkpoint-dir"):
        _config(shapes, resume=True)
    result = runner.invoke(app, ["compress", "-m", str(tiny), "-o", str(tmp_path / "o"), "--finetune"])
    assert result.exit_code == 2 and "--train-data" in result.stderr
    result = runner.invoke(app, ["compress", "-m", str(tiny), "-o", str(tmp_path / "o"), "--train-data", "x.json"])
    assert result.exit_code == 2 and "--finetune" in result.stderr


def test_unknown_objective_is_one_clear_line(shapes, tiny, tmp_path):
    with pytest.raises(CrossGetError, match="unknown fine-tuning objective 'nope'"):
        _config(shapes, objective="nope")
    ft = ["--finetune", "--train-data", str(shapes / "data.json"), "--objective", "nope"]
    result = runner.invoke(app, ["compress", "-m", str(tiny), "-o", str(tmp_path / "o"), *ft])
    assert result.exit_code == 2 and "clip" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_registered_objective_drives_the_loop(shapes, tiny):
    """A toy objective (pull the vision cross token to a target, one item per step)
    through the shared loop: it sees exactly the items and weights the config sets,
    and plain gradient descent on a quadratic gives the hand-computed trajectory."""

    @register_objective("test-quadratic")
    class Quadratic(Objective):
        parts = ("distance",)
        default_js_weight = 0.0

        def dataset(self, io, config):
            return list(range(6))

        def losses(self, model, io, items, config):
            cross = model.visual.transformer.cross_image
            distance = ((cross - 1.0) ** 2).sum()
            seen.extend(items)
            return {"distance": distance, "total": config.task_weight * distance}

    seen = []
    io = _io(tiny)
    start = io.model.visual.transformer.cross_image.detach().clone()
    frozen = io.model.visual.conv1.weight.detach().clone()
    config = _config(shapes, objective="test-quadratic", batch_size=2, epochs=1, trainable="cross_image", weight_decay=0.0)
    assert config.task_weight == 1.0 and config.js_weight == 0.0
    result = finetune(io, config)
    assert result.steps == 3 and sorted(seen) == list(range(6))
    assert [set(r) >= {"distance", "loss"} for r in result.history] == [True] * 3
    assert result.history[0]["distance"] == pytest.approx(((start - 1.0) ** 2).sum().item(), rel=1e-6)
    assert result.history[-1]["distance"] < result.history[0]["distance"]
    assert not torch.equal(io.model.visual.transformer.cross_image, start)
    assert torch.equal(io.model.visual.conv1.weight, frozen)  # --trainable kept the rest frozen


def test_transformers_model_finetunes_through_its_tokenizer(shapes, tmp_path):
    from tiny_models import save_hf_folder

    save_hf_folder(tmp_path / "hf")
    loaded = load_model(str(tmp_path / "hf"))
    crossget_cli.patch(loaded.model, vision_r=2, text_r=2)
    io = model_io(loaded)
    result = finetune(io, _config(shapes, epochs=4, lr=2e-3))
    losses = [r["loss"] for r in result.history]
    assert sum(losses[-4:]) < 0.9 * sum(losses[:4])
    assert loaded.model.vision_model.encoder.cross_image.abs().sum() > 0


def test_torchrun_two_processes_through_the_cli(shapes, tiny, tmp_path):
    """The same command line under torchrun: rank 0 alone prints and writes."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    out = tmp_path / "out"
    command = [torchrun, "--nproc-per-node", "2", "--master-port", "29531", "-m", "crossget_cli.cli.app", "compress"]
    command += ["-m", str(tiny), "--vision-r", "2", "--text-r", "2", "-o", str(out), "--no-speed", "--json"]
    command += [
        "--finetune",
        "--train-data",
        str(shapes / "data.json"),
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--lr",
        "1e-4",
        "--seed",
        "3",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)["report"]  # exactly one JSON document: rank 1 printed nothing
    single = finetune(_io(tiny), _config(shapes, max_steps=3, lr=1e-4))
    assert [r["loss"] for r in report["finetune"]["history"]] == pytest.approx([r["loss"] for r in single.history], abs=1e-5)
    assert (out / "model.safetensors").is_file()


def test_validation_keeps_the_best_epoch(shapes, tiny, tmp_path):
    out = tmp_path / "out"
    args = ["compress", "-m", str(tiny), "--vision-r", "2", "--text-r", "2", "-o", str(out), "--no-speed", "--json"]
    ft = [
        "--finetune",
        "--train-data",
        str(shapes / "data.json"),
        "--val-data",
        str(shapes / "data.json"),
        "--val-split",
        "train",
    ]
    result = runner.invoke(app, [*args, *ft, "--batch-size", "4", "--epochs", "3", "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    best = json.loads(result.stdout)["report"]["finetune"]["best"]
    assert best["metric"] == "r_mean" and 0 <= best["epoch"] < 3
    validation = json.loads((out / "report.json").read_text())["finetune"]["validation"]
    assert [v["epoch"] for v in validation] == [0, 1, 2]  # the convergence, not only the best epoch
    assert max(v["scores"]["r_mean"] for v in validation) == best["value"]
    assert validation[best["epoch"]]["scores"] == best["scores"]
    from crossget_cli.metrics.retrieval import retrieval_recall

    io = model_io(load_model(str(out)))
    from crossget_cli.data.retrieval import load_retrieval

    data = load_retrieval(str(shapes / "data.json"), split="train")
    batches = (images for _, images in torch.utils.data.DataLoader(data.image_dataset(io.transform), batch_size=64))
    scores = retrieval_recall(io.encode_images(batches), io.encode_texts(data.captions, 64), data.caption_to_image)
    assert scores["r_mean"] == pytest.approx(best["value"], abs=1e-4)  # the exported weights are the best epoch's


def _cross_norm_score(io):
    """A validation score that falls as the cross tokens grow (they start at
    zero), so the first epoch is the best one and the last is not."""
    model = io.model
    with torch.no_grad():
        norm = model.visual.transformer.cross_image.abs().sum() + model.transformer.cross_text.abs().sum()
    return {"r_mean": -norm.item()}


def test_resume_with_validation_exports_the_best_epoch(shapes, tiny, tmp_path):
    whole = _io(tiny)
    reference = finetune(whole, _config(shapes), evaluate=_cross_norm_score)
    assert reference.best["epoch"] == 0 and reference.steps == 8

    class Crash(Exception):
        pass

    def crash_at_step_6(record):
        if record["step"] == 6:
            raise Crash

    config = _config(shapes, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)
    with pytest.raises(Crash):
        finetune(_io(tiny), config, progress=crash_at_step_6, evaluate=_cross_norm_score)
    second = _io(tiny)
    resumed = finetune(second, FinetuneConfig(**{**config.__dict__, "resume": True}), evaluate=_cross_norm_score)
    assert resumed.best == reference.best
    assert [r["step"] for r in resumed.history] == list(range(1, 9))
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in reference.history], abs=1e-6)
    log = [json.loads(line) for line in (tmp_path / "ckpt" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "validation" not in r]
    assert [r["step"] for r in steps] == list(range(1, 9))  # the steps redone after the crash are not repeated
    # One validation per epoch, logged after the epoch's last step, each once.
    assert [(v["epoch"], v["step"]) for v in reference.validation] == [(0, 4), (1, 8)]
    assert resumed.validation == reference.validation
    validated = [r for r in log if "validation" in r]
    assert [(r["epoch"], r["step"], r["validation"]) for r in validated] == [
        (v["epoch"], v["step"], v["scores"]) for v in reference.validation
    ]
    assert log.index(validated[0]) == 4  # right after step 4
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name


class _WritesAFile:
    """Unpickling this runs ``open(path, 'w')``: what a crafted checkpoint does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_never_unpickles_code(shapes, tiny, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "payload": _WritesAFile(str(marker))}, ckpt / "checkpoint.pt")
    with pytest.raises(CrossGetError, match="cannot resume"):
        finetune(_io(tiny), _config(shapes, checkpoint_dir=str(ckpt), resume=True))
    assert not marker.exists()
    (ckpt / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CrossGetError, match="cannot resume"):
        finetune(_io(tiny), _config(shapes, checkpoint_dir=str(ckpt), resume=True))


def test_resume_refuses_other_settings(shapes, tiny, tmp_path):
    config = _config(shapes, max_steps=2, checkpoint_dir=str(tmp_path / "ckpt"))
    finetune(_io(tiny), config, settings={"text_r": 0})
    again = FinetuneConfig(**{**config.__dict__, "resume": True})
    with pytest.raises(CrossGetError, match=r"text_r=0.*text_r=4"):
        finetune(_io(tiny), again, settings={"text_r": 4})
    with pytest.raises(CrossGetError, match=r"lr=0.001.*lr=0.01"):
        finetune(_io(tiny), FinetuneConfig(**{**again.__dict__, "lr": 1e-2}), settings={"text_r": 0})
    finetune(
        _io(tiny), FinetuneConfig(**{**again.__dict__, "max_steps": 3}), settings={"text_r": 0}
    )  # a stopping rule may change


def test_export_records_the_steps_that_ran(shapes, tiny, tmp_path):
    out = tmp_path / "out"
    args = ["compress", "-m", str(tiny), "--vision-r", "2", "-o", str(out), "--no-speed", "--json"]
    ft = ["--finetune", "--train-data", str(shapes / "data.json"), "--batch-size", "4", "--max-steps", "1"]
    result = runner.invoke(app, [*args, *ft])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["report"]["finetune"]["steps"] == 1
    from crossget_cli.recipes import load_recipe
    from crossget_cli.train.loop import recipe_settings

    spec = load_recipe(out / "crossget.yaml").finetune
    assert spec.max_steps == 1  # not just "epochs: 12": a re-run of the recipe stops where this one did
    assert recipe_settings(spec)["max_steps"] == 1


class _Offset(nn.Module):
    """The toy objective's own module: a 1-D and a 2-D parameter (no decay / decay)."""

    def __init__(self, width: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(width))
        self.gain = nn.Parameter(torch.ones(2, width))


@dataclass(frozen=True)
class _TargetOptions:
    target: float = 1.0


@register_objective("test-own-module")
class _OwnModule(Objective):
    """Pull the vision cross tokens to an offset the objective owns, and the offset to
    ``target``: the loss needs the module, so only a run that trains and restores it
    reproduces the reference. SGD with momentum by default (its buffers are resumed too)."""

    parts = ("distance",)
    default_js_weight = 0.0
    defaults: ClassVar[dict] = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05, "weight_decay": 0.01, "trainable": "cross_image"}
    Options = _TargetOptions

    def dataset(self, io, config):
        return list(range(8))

    def modules(self, io, config, items):
        self.offset = _Offset(io.model.visual.transformer.cross_image.shape[-1])
        return {"offset": self.offset}

    def losses(self, model, io, items, config):
        cross = model.visual.transformer.cross_image
        pulled = ((cross - self.offset.shift * self.offset.gain[0]) ** 2).sum()
        target = self.parsed_options(config).target
        distance = pulled + len(items) * ((self.offset.shift - target) ** 2).sum()
        return {"distance": distance, "total": config.task_weight * distance}


def test_an_objectives_own_module_is_trained_checkpointed_and_resumed(shapes, tiny, tmp_path):
    base = {"data": str(shapes / "data.json"), "objective": "test-own-module", "batch_size": 2, "epochs": 2, "seed": 3}
    config = FinetuneConfig(**base, options={"target": 2.0})
    assert (config.optimizer, config.lr, config.trainable) == ("sgd", 0.05, "cross_image")  # the objective's defaults
    assert FinetuneConfig(**base, lr=0.01).lr == 0.01  # a flag still wins
    whole = _io(tiny)
    frozen = whole.model.visual.conv1.weight.detach().clone()
    reference = finetune(whole, config)
    offset = reference.modules["offset"]
    assert reference.steps == 8 and not offset.training
    assert offset.shift.abs().min() > 0 and not torch.equal(offset.gain, torch.ones_like(offset.gain))  # both trained
    assert reference.history[-1]["distance"] < reference.history[0]["distance"]
    assert torch.equal(whole.model.visual.conv1.weight, frozen)

    class Crash(Exception):
        pass

    def crash_at_step_6(record):
        if record["step"] == 6:
            raise Crash

    checkpointed = FinetuneConfig(**{**config.__dict__, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 2})
    with pytest.raises(Crash):
        finetune(_io(tiny), checkpointed, progress=crash_at_step_6)
    saved = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 4 and set(saved["modules"]) == {"offset"}  # the module's state at the checkpoint
    second = _io(tiny)  # a fresh process: the objective builds a fresh module, the checkpoint fills it
    resumed = finetune(second, FinetuneConfig(**{**checkpointed.__dict__, "resume": True}))
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in reference.history], abs=1e-6)
    for name, value in offset.state_dict().items():
        assert torch.allclose(resumed.modules["offset"].state_dict()[name], value, atol=1e-6, rtol=0), name
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    # Another option value is another run: refused on resume, like any other setting.
    other = FinetuneConfig(**{**checkpointed.__dict__, "resume": True, "options": {"target": 3.0}})
    with pytest.raises(CrossGetError, match="options"):
        finetune(_io(tiny), other)
