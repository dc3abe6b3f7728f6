"""CoOp with CrossGET (SPEC §4, last paragraph) on tiny models with CLIP's real BPE
vocabulary: the prompt embeddings against prompts tokenized normally, L_JS against
ground-truth rows picked by hand, a short training run, the prompt files."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import BPE_TINY, save_hf_folder, save_openclip_folder
from torch import nn

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.core import collect_cross_tokens, js_loss
from crossget_cli.errors import CrossGetError
from crossget_cli.train.coop import (
    PROMPTS_FILE,
    PROMPTS_META,
    CoopConfig,
    PromptLearner,
    coop_classifier,
    coop_losses,
    evaluate_coop,
    few_shot_indices,
    load_prompts,
    save_prompts,
    token_embedding,
    train_coop,
)
from crossget_cli.data.classification import load_classification
from crossget_cli.adapters.model_io import ModelIO
from crossget_cli.loading.preprocessing import model_io
from crossget_cli.adapters.model_io import LoadedModel
from crossget_cli.loading.models import load_model

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


def _train(folder, data, **overrides):
    io = _io(folder)
    base = {"shots": 3, "n_ctx": 4, "batch_size": 3, "epochs": 100, "lr": 0.002, "max_steps": 30, "seed": 0}
    config = CoopConfig(**{**base, **overrides})
    records = []
    learner, history = train_coop(io, data, config, progress=records.append)
    assert records == history
    return io, learner, history


def test_training_lowers_loss_and_changes_only_prompt_and_cross(folders, image_folder):
    data = load_classification(str(image_folder))
    assert data.classnames == ["blue", "green", "red"]
    before = {k: v.clone() for k, v in _io(folders["openclip"]).model.state_dict().items()}
    initial_ctx = PromptLearner(_io(folders["openclip"]), data.classnames, n_ctx=4, seed=0).ctx.detach().clone()

    io, learner, history = _train(folders["openclip"], data)
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
    io2, learner2, history2 = _train(folders["openclip"], data)
    assert [r["loss"] for r in history2] == losses
    assert torch.equal(learner2.ctx, learner.ctx)
    assert all(torch.equal(v, io2.model.state_dict()[k]) for k, v in after.items())

    scores = evaluate_coop(io, learner, data, batch_size=5)
    assert set(scores) == {"top1", "top5"} and scores["top5"] == 100.0 and 0 <= scores["top1"] <= 100


def test_training_hf_runs(folders, image_folder):
    data = load_classification(str(image_folder))
    _, _, history = _train(folders["hf"], data, max_steps=6, lr=0.02)
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
    io, learner, _ = _train(folders["openclip"], data, max_steps=3, init=init)
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
    data = load_classification(str(image_folder))
    with pytest.raises(CrossGetError, match="fewer than shots=5"):
        train_coop(io, data, CoopConfig(shots=5, n_ctx=4, max_steps=1))
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
    bad_configs = [{"shots": 0}, {"n_ctx": -1}, {"lr": 0}, {"batch_size": True}, {"momentum": 1.0}, {"init": "  "}]
    for bad in bad_configs:
        with pytest.raises(CrossGetError):
            CoopConfig(**bad)
    with pytest.raises(CrossGetError, match="is on cpu"):
        train_coop(io, data, CoopConfig(shots=1, n_ctx=4, device="cuda"))

    fake = ModelIO(LoadedModel(nn.Sequential(nn.Linear(2, 2)), "mystery", "x"), lambda x: x, io.tokenize, io.device, io.dtype)
    with pytest.raises(CrossGetError, match="cannot find the token embedding"):
        PromptLearner(fake, ["red"], n_ctx=4)
    with pytest.raises(CrossGetError, match="token embedding"):
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
    from crossget_cli.train.coop import evaluate_coop, load_prompts
    from crossget_cli.data.classification import load_classification

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
