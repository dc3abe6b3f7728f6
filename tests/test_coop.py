"""CoOp with CrossGET (SPEC §4, last paragraph) on tiny models with CLIP's real BPE
vocabulary: the prompt embeddings against prompts tokenized normally, L_JS against
ground-truth rows picked by hand, a short training run through the shared loop, the
prompt files, the objective's options and its recipe."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import BPE_TINY, save_hf_folder, save_openclip_folder
from torch import nn

import crossget_cli
from crossget_cli.adapters.coop import coop_losses, few_shot_indices
from crossget_cli.adapters.model_io import LoadedModel, ModelIO
from crossget_cli.adapters.prompts import (
    PROMPTS_FILE,
    PROMPTS_META,
    PromptLearner,
    coop_classifier,
    load_prompts,
    save_prompts,
    token_embedding,
)
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.training import FinetuneConfig
from crossget_cli.core import collect_cross_tokens, js_loss
from crossget_cli.data.classification import load_classification
from crossget_cli.errors import CrossGetError
from crossget_cli.evaluation.zeroshot import evaluate_coop
from crossget_cli.loading.models import load_model
from crossget_cli.loading.preprocessing import model_io
from crossget_cli.train.loop import finetune

CLASSES = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 30, 220)}
PHRASE = "a photo of a"
EOT = 49407


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("coop_models")
    save_openclip_folder(root / "openclip")
    save_hf_folder(root / "hf")
    return {"openclip": root / "openclip", "hf": root / "hf"}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An ImageFolder tree: 3 colour classes x 4 PNG images."""
    root = tmp_path_factory.mktemp("coop_images")
    for colour, rgb in CLASSES.items():
        (root / colour).mkdir()
        for j in range(4):
            picture = Image.new("RGB", (32, 32), tuple(max(0, v - 30 * j) for v in rgb))
            picture.paste((128, 128, 128), (4 * j, 8, 4 * j + 8, 16))
            picture.save(root / colour / f"{j}.png")
    return root


def _io(folder, text_r: int = 0) -> ModelIO:
    loaded = load_model(str(folder))
    crossget_cli.patch(loaded.model, vision_r=2, text_r=text_r)
    return model_io(loaded)


def _phrase_embeddings(io: ModelIO) -> torch.Tensor:
    """The token embeddings of PHRASE, looked up by hand in the model's table."""
    ids = io.tokenize([PHRASE])[0]
    assert ids[0] == 49406 and ids[5] == EOT  # SOT + 4 tokens + EOT
    return io.model.state_dict()[_embedding_key(io)][ids[1:5]].clone()


def _embedding_key(io: ModelIO) -> str:
    keys = [k for k in io.model.state_dict() if k.endswith("token_embedding.weight")]
    assert len(keys) == 1
    return keys[0]


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("family", ["openclip", "hf"])
@pytest.mark.parametrize("text_r", [0, 2])
def test_context_replaces_placeholders_exactly(folders, family, text_r):
    io = _io(folders[family], text_r)
    names = list(CLASSES)
    learner = PromptLearner(io, names, n_ctx=4, seed=1)
    ids = learner.token_ids
    assert ids.shape == (3, 16)
    assert (ids[:, 0] == 49406).all()
    assert (ids[:, 1:5] == ids[0, 1]).all()  # one placeholder token, 4 times
    eot = ids.argmax(dim=-1)
    assert (ids[torch.arange(3), eot] == EOT).all()
    assert eot.tolist() == [7, 7, 7]  # SOT, 4 ctx, one-token colour name, ".", EOT
    assert learner.ctx.shape == (4, 64) and learner.ctx.std().item() == pytest.approx(0.02, rel=0.5)

    phrase = _phrase_embeddings(io)
    with torch.no_grad():
        learner.ctx.copy_(phrase)
    embeddings, returned = learner()
    assert torch.equal(returned, ids) and embeddings.shape == (3, 16, 64)
    table = io.model.state_dict()[_embedding_key(io)]
    assert torch.equal(embeddings[:, 1:5], phrase.expand(3, -1, -1))
    keep = torch.ones(16, dtype=torch.bool)
    keep[1:5] = False
    assert torch.equal(embeddings[:, keep], table[ids[:, keep]])

    ours = coop_classifier(io, learner)
    reference = io.encode_texts([f"a photo of a {name}." for name in names], batch_size=8)
    assert ours.shape == (3, 32)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    # Random context gives other features: the comparison above is not vacuous.
    with torch.no_grad():
        learner.ctx.normal_(0, 0.5)
    assert (coop_classifier(io, learner) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["openclip", "hf"])
def test_init_phrase(folders, family):
    io = _io(folders[family])
    learner = PromptLearner(io, ["red", "dark_green"], n_ctx=16, init=PHRASE)
    assert learner.n_ctx == 4 and learner.template == "a photo of a {}."
    assert torch.equal(learner.ctx.detach(), _phrase_embeddings(io).float())
    assert torch.equal(learner.token_ids, io.tokenize(["a photo of a red.", "a photo of a dark green."]))
    reference = io.encode_texts(["a photo of a red.", "a photo of a dark green."], batch_size=8)
    torch.testing.assert_close(coop_classifier(io, learner), reference, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize("family", ["openclip", "hf"])
def test_losses_pick_ground_truth_rows(folders, family):
    io = _io(folders[family])
    model, adapter = io.model, find_adapter(io.model)
    with torch.no_grad():  # non-zero cross tokens so every layer's rows differ
        for name, param in model.named_parameters():
            if name.endswith(("cross_image", "cross_text")):
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    learner = PromptLearner(io, list(CLASSES), n_ctx=4, seed=2)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([2, 0, 1, 2, 1])
    model.train()
    losses = coop_losses(io, learner, images, labels)

    # Hand-built expectation from the raw collected cross tokens.
    with collect_cross_tokens() as cross:
        image_features = adapter.encode_image(model, images)
        embeddings, ids = learner()
        text_features = adapter.encode_text(model, ids, token_embeddings=embeddings)
    layers, n, c = 4, 5, 3
    assert cross["vision"][-1].shape == (layers * n, 128) and cross["text"][-1].shape == (layers * c, 64)
    image_rows = adapter.project_cross(model, "vision", cross["vision"][-1])
    text_rows = adapter.project_cross(model, "text", cross["text"][-1])
    picked = torch.stack([text_rows[layer * c + int(labels[i])] for layer in range(layers) for i in range(n)])
    expected_js = js_loss(image_rows, picked)
    scale = adapter.logit_scale(model).exp()
    logits = scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
    expected_ce = F.cross_entropy(logits, labels)
    model.eval()

    torch.testing.assert_close(losses["js"], expected_js, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(losses["ce"], expected_ce, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(losses["logits"], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses["total"], (expected_ce + 10 * expected_js) / 2, atol=1e-6, rtol=1e-5)
    # Other rows (each image paired with the next class) give another value.
    wrong = torch.stack([text_rows[layer * c + (int(labels[i]) + 1) % c] for layer in range(layers) for i in range(n)])
    assert (js_loss(image_rows, wrong) - expected_js).abs() > 1e-4
    # Gradients reach the context (through CE) and both cross tokens.
    losses["total"].backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        if name.endswith(("cross_image", "cross_text")):
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_losses_need_equal_depth_and_a_patched_model(tmp_path):
    cfg = {**BPE_TINY, "vision_layers": 3}
    save_openclip_folder(tmp_path / "uneven", cfg=cfg)
    loaded = load_model(str(tmp_path / "uneven"))
    io = model_io(loaded)
    learner = PromptLearner(io, list(CLASSES), n_ctx=4)
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(CrossGetError, match="patched"):
        coop_losses(io, learner, images, torch.tensor([0, 1]))
    crossget_cli.patch(loaded.model, vision_r=2, text_r=0)
    io.model.train()
    with pytest.raises(CrossGetError, match="equal depth"):
        coop_losses(io, learner, images, torch.tensor([0, 1]))


# --------------------------------------------------------------------------- training


OPTIONS = ("shots", "n_ctx", "ctx_init", "label_column", "classnames")


def _coop_config(images, **settings) -> FinetuneConfig:
    """A ``coop`` FinetuneConfig: the objective's options in ``options``, the rest as loop settings."""
    options = {k: v for k, v in settings.items() if k in OPTIONS}
    loop = {k: v for k, v in settings.items() if k not in OPTIONS}
    return FinetuneConfig(data=str(images), objective="coop", options=options, **loop)


def _train(folder, images, **overrides):
    io = _io(folder)
    base = {"shots": 3, "n_ctx": 4, "batch_size": 3, "epochs": 100, "lr": 0.002, "max_steps": 30, "seed": 0}
    config = _coop_config(images, **{**base, **overrides})
    records = []
    result = finetune(io, config, progress=records.append)
    learner, history = result.modules["prompts"], result.history
    assert records == history
    return io, learner, history


def test_training_lowers_loss_and_changes_only_prompt_and_cross(folders, image_folder):
    data = load_classification(str(image_folder))
    assert data.classnames == ["blue", "green", "red"]
    before = {k: v.clone() for k, v in _io(folders["openclip"]).model.state_dict().items()}
    initial_ctx = PromptLearner(_io(folders["openclip"]), data.classnames, n_ctx=4, seed=0).ctx.detach().clone()

    io, learner, history = _train(folders["openclip"], image_folder)
    assert len(history) == 30 and [r["step"] for r in history] == list(range(1, 31))
    losses = [r["loss"] for r in history]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    for record in history:
        assert record["loss"] == pytest.approx((record["ce"] + 10 * record["js"]) / 2, rel=1e-5)
    assert history[-1]["lr"] < history[0]["lr"]  # cosine

    after = io.model.state_dict()
    assert before.keys() == after.keys()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["transformer.cross_text", "visual.transformer.cross_image"]
    assert not torch.equal(learner.ctx.detach(), initial_ctx)
    assert not io.model.training and all(p.requires_grad for p in io.model.parameters())

    # Deterministic on the CPU: a second run is identical.
    io2, learner2, history2 = _train(folders["openclip"], image_folder)
    assert [r["loss"] for r in history2] == losses
    assert torch.equal(learner2.ctx, learner.ctx)
    assert all(torch.equal(v, io2.model.state_dict()[k]) for k, v in after.items())

    scores = evaluate_coop(io, learner, data, batch_size=5)
    assert set(scores) == {"top1", "top5", "mean_per_class_recall"} and scores["top5"] == 100.0 and 0 <= scores["top1"] <= 100


def test_training_hf_runs(folders, image_folder):
    _, _, history = _train(folders["hf"], image_folder, max_steps=6, lr=0.02)
    assert len(history) == 6 and all(r["loss"] == r["loss"] for r in history)
    assert history[-1]["loss"] < history[0]["loss"]


def test_few_shot_subset():
    labels = [0] * 5 + [1] * 3 + [2] * 4
    chosen = few_shot_indices(labels, 3, 2, seed=0)
    assert [labels[i] for i in chosen] == [0, 0, 1, 1, 2, 2]
    assert chosen == few_shot_indices(labels, 3, 2, seed=0)
    assert any(few_shot_indices(labels, 3, 2, seed=s) != chosen for s in range(1, 6))
    assert few_shot_indices(labels, 3, None, seed=0) == list(range(12))
    with pytest.raises(CrossGetError, match="fewer than shots=4"):
        few_shot_indices(labels, 3, 4, seed=0)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("init", [None, PHRASE])
def test_save_load_round_trip(folders, image_folder, tmp_path, init):
    data = load_classification(str(image_folder))
    io, learner, _ = _train(folders["openclip"], image_folder, max_steps=3, ctx_init=init)
    out = save_prompts(learner, tmp_path / "prompts")
    assert sorted(p.name for p in out.iterdir()) == sorted([PROMPTS_FILE, PROMPTS_META])
    meta = json.loads((out / PROMPTS_META).read_text())
    assert meta["classnames"] == data.classnames and meta["n_ctx"] == 4
    assert meta["template"] == ("X X X X {}." if init is None else "a photo of a {}.")

    loaded = load_prompts(io, out)
    assert torch.equal(loaded.ctx, learner.ctx) and torch.equal(loaded.token_ids, learner.token_ids)
    assert loaded.classnames == learner.classnames and loaded.template == learner.template
    assert torch.equal(coop_classifier(io, loaded), coop_classifier(io, learner))
    images = torch.stack([data.image_dataset(io.transform)[i][1] for i in range(6)])
    io.model.train()
    a = coop_losses(io, learner, images, torch.tensor(data.labels[:6]))["logits"]
    b = coop_losses(io, loaded, images, torch.tensor(data.labels[:6]))["logits"]
    io.model.eval()
    assert torch.equal(a, b)


def test_load_prompts_errors(folders, tmp_path):
    io = _io(folders["openclip"])
    with pytest.raises(CrossGetError, match="not found"):
        load_prompts(io, tmp_path / "missing")
    learner = PromptLearner(io, list(CLASSES), n_ctx=4)
    save_prompts(learner, tmp_path / "p")
    from safetensors.torch import save_file

    save_file({"ctx": torch.zeros(4, 65)}, str(tmp_path / "p" / PROMPTS_FILE))
    with pytest.raises(CrossGetError, match="do not fit this model"):
        load_prompts(io, tmp_path / "p")
    (tmp_path / "p" / PROMPTS_META).write_text("{not json")
    with pytest.raises(CrossGetError, match="not valid JSON"):
        load_prompts(io, tmp_path / "p")


# --------------------------------------------------------------------------- bad input


def test_bad_inputs(folders, image_folder):
    io = _io(folders["openclip"])
    with pytest.raises(CrossGetError, match="fewer than shots=5"):
        finetune(io, _coop_config(image_folder, shots=5, n_ctx=4, max_steps=1))
    with pytest.raises(CrossGetError, match="no room for class names"):
        PromptLearner(io, ["red"], n_ctx=14)
    with pytest.raises(CrossGetError, match="no room for class names"):
        PromptLearner(
            io, ["red"], init="one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
        )
    with pytest.raises(CrossGetError, match="does not fit"):
        PromptLearner(io, ["a very long class name with many words"], n_ctx=8)
    with pytest.raises(CrossGetError, match="at least one class"):
        PromptLearner(io, [], n_ctx=4)
    bad_configs = [{"shots": 0}, {"n_ctx": -1}, {"lr": 0}, {"batch_size": True}, {"momentum": 1.0}, {"ctx_init": "  "}]
    for bad in bad_configs:
        with pytest.raises(CrossGetError):
            _coop_config(image_folder, **bad)
    with pytest.raises(CrossGetError, match="is on cpu"):
        finetune(io, _coop_config(image_folder, shots=1, n_ctx=4, device="cuda"))

    fake = ModelIO(LoadedModel(nn.Sequential(nn.Linear(2, 2)), "mystery", "x"), lambda x: x, io.tokenize, io.device, io.dtype)
    with pytest.raises(CrossGetError, match="unsupported model type"):
        PromptLearner(fake, ["red"], n_ctx=4)
    with pytest.raises(CrossGetError, match="unsupported model type"):
        token_embedding(nn.Linear(2, 2))


def test_token_embedding_lookup(folders):
    from transformers import CLIPVisionModel

    oc = _io(folders["openclip"]).model
    assert token_embedding(oc) is oc.token_embedding
    hf = _io(folders["hf"]).model
    assert token_embedding(hf) is hf.text_model.embeddings.token_embedding
    assert token_embedding(hf.text_model) is hf.text_model.embeddings.token_embedding
    vision = CLIPVisionModel(hf.config.vision_config)
    with pytest.raises(CrossGetError):
        token_embedding(vision)


def test_compress_finetune_coop_then_eval_uses_the_learned_prompts(tmp_path):
    """The CLI path: CoOp fine-tune, export with the prompts, zero-shot eval of the
    export scores with the learned prompts (equal to evaluating them in-process)."""
    import json

    from typer.testing import CliRunner

    from crossget_cli.cli.app import app

    runner = CliRunner()
    save_openclip_folder(tmp_path / "tiny")
    root = tmp_path / "classes"
    for colour, rgb in {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 30, 220)}.items():
        (root / colour).mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (32, 32), tuple(max(0, v - 30 * j) for v in rgb)).save(root / colour / f"{j}.png")
    out = tmp_path / "coop"
    args = ["compress", "-m", str(tmp_path / "tiny"), "--vision-r", "2", "-o", str(out), "--no-speed", "--json"]
    ft = [
        "--finetune",
        "--objective",
        "coop",
        "--train-data",
        str(root),
        "--shots",
        "2",
        "--n-ctx",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "3",
    ]
    result = runner.invoke(app, [*args, *ft])
    assert result.exit_code == 0, result.output
    assert (out / "coop_prompts.json").is_file()
    recipe = (out / "crossget.yaml").read_text()
    assert "objective: coop" in recipe and "shots: 2" in recipe

    evaluated = runner.invoke(app, ["eval", "-m", str(out), "-t", "zeroshot", "-d", str(root), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert any("learned CoOp prompts" in note for note in report["notes"])
    io = model_io(load_model(str(out)))
    expected = evaluate_coop(io, load_prompts(io, out), load_classification(str(root)))
    assert report["results"]["zeroshot"][str(out)] == pytest.approx(expected)


# --------------------------------------------------------------------------- the objective: resume, options, recipe


def test_resumed_coop_run_equals_an_uninterrupted_one(folders, image_folder, tmp_path):
    """The prompt context is the objective's module: checkpointed, and restored on resume."""
    whole = _io(folders["openclip"])
    config = _coop_config(image_folder, shots=3, n_ctx=4, batch_size=3, epochs=2, seed=1)
    reference = finetune(whole, config)
    assert reference.steps == 6

    class Crash(Exception):
        pass

    def crash_at_step_5(record):
        if record["step"] == 5:
            raise Crash

    checkpointed = FinetuneConfig(**{**config.__dict__, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 2})
    with pytest.raises(Crash):
        finetune(_io(folders["openclip"]), checkpointed, progress=crash_at_step_5)
    second = _io(folders["openclip"])
    resumed = finetune(second, FinetuneConfig(**{**checkpointed.__dict__, "resume": True}))
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in reference.history], abs=1e-6)
    learned = reference.modules["prompts"].ctx
    assert not torch.allclose(learned, PromptLearner(whole, ["blue", "green", "red"], n_ctx=4, seed=1).ctx)
    torch.testing.assert_close(resumed.modules["prompts"].ctx, learned, atol=1e-6, rtol=0)
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name


def test_a_bad_objective_option_is_one_clear_error(image_folder, tmp_path, folders):
    from typer.testing import CliRunner

    from crossget_cli.cli.app import app
    from crossget_cli.recipes import recipe_from_dict

    data = str(image_folder)
    with pytest.raises(CrossGetError, match="objective 'coop' has no option 'shot'") as err:
        FinetuneConfig(data=data, objective="coop", options={"shot": 2})
    assert "shots" in err.value.hint
    with pytest.raises(CrossGetError, match="option shots must be a positive integer, got 0") as err:
        FinetuneConfig(data=data, objective="coop", options={"shots": 0})
    assert "--shots" in err.value.hint
    with pytest.raises(CrossGetError, match="objective 'clip' takes no option 'shots'") as err:
        FinetuneConfig(data=data, options={"shots": 2})
    assert "--shots" in err.value.hint and "--objective" in err.value.hint

    runner = CliRunner()
    base = ["compress", "-m", str(folders["openclip"]), "-o", str(tmp_path / "o"), "--finetune", "--train-data", data]
    for extra, named in [(["--shots", "2"], "takes no option 'shots'"), (["--objective", "coop", "--n-ctx", "0"], "n_ctx")]:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2 and named in result.stderr, result.output
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert not (tmp_path / "o").exists()

    with pytest.raises(CrossGetError, match=r"finetune\.options: .*no option 'shot'"):
        recipe_from_dict({"finetune": {"objective": "coop", "options": {"shot": 2}}})
    with pytest.raises(CrossGetError, match=r"unknown recipe key finetune\.shots") as err:
        recipe_from_dict({"finetune": {"objective": "coop", "shots": 16}})  # where older recipes had it
    assert "finetune.options.shots" in err.value.hint


def test_a_coop_recipe_round_trips_through_the_export(folders, image_folder, tmp_path):
    from dataclasses import asdict

    from crossget_cli.export.compress import compress
    from crossget_cli.recipes import load_recipe, recipe_from_dict
    from crossget_cli.train.loop import recipe_settings

    # Keys a coop recipe leaves out take CoOp's defaults, not the CLIP fine-tune's.
    shipped = FinetuneConfig(data="x", **recipe_settings(load_recipe("recipes/coop_vit_b16_rv16.yaml").finetune))
    settings = ("optimizer", "momentum", "lr", "weight_decay", "batch_size", "epochs", "trainable", "js_weight", "task_weight")
    assert tuple(getattr(shipped, k) for k in settings) == ("sgd", 0.9, 0.002, 5e-4, 32, 200, "cross", 10.0, 1.0)
    assert shipped.options["shots"] == 16 and shipped.options["n_ctx"] == 16

    recipe = recipe_from_dict(
        {"reduction": {"vision_r": 2}, "finetune": {"objective": "coop", "amp": "none", "options": {"shots": 2, "n_ctx": 4}}}
    )
    config = FinetuneConfig(data=str(image_folder), **{**recipe_settings(recipe.finetune), "batch_size": 3, "max_steps": 2})
    assert config.options == {"shots": 2, "n_ctx": 4, "ctx_init": None, "label_column": "label", "classnames": None}
    out = tmp_path / "out"
    result = compress(str(folders["openclip"]), out, recipe=recipe, finetune=config, measure_speed=False)
    assert sorted(p.name for p in out.glob("coop_prompts.*")) == sorted([PROMPTS_FILE, PROMPTS_META])
    exported = load_recipe(out / "crossget.yaml")
    assert exported.finetune == result.recipe.finetune
    assert exported.finetune.objective == "coop" and exported.finetune.trainable == "cross"
    assert exported.finetune.options == {"shots": 2, "n_ctx": 4, "label_column": "label"}  # unset ones are left out
    again = FinetuneConfig(data=exported.finetune.dataset, **recipe_settings(exported.finetune))
    assert asdict(again) == asdict(config)  # the export reproduces the run's settings
    assert recipe_from_dict(exported.to_dict()) == exported
