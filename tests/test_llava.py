"""LLaVA (SPEC §6): tiny random LLaVA models built here, saved with
``save_pretrained`` and loaded through the real ``--model`` path."""

from __future__ import annotations

import json

import pytest
import torch

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.llava.adapter import num_image_tokens, prepare_inputs
from crossget_cli.core import attention_importance, complete_graph_matching, protected_indices, trace_reduction
from tiny_models import save_tiny_llava, tiny_llava, tiny_tokenizer

PROMPT = "USER: <image>\n{question} ASSISTANT:"


def images(n, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


QUESTIONS = ["what color is the circle ?", "shape ?", "what is the shape of the two blue square ?"]


def inputs_for(model, n=3, seed=0):
    prompts = [PROMPT.format(question=q) for q in QUESTIONS[:n]]
    return prepare_inputs(model, tiny_tokenizer(), prompts, images(n, model.config.vision_config.image_size, seed))


def reference_embeds(model, inputs):
    """The LLM's input embeddings built by hand: the text embeddings with the
    (reduced) visual features of the patched model written over the image tokens."""
    features = find_adapter(model).image_features(model, inputs["pixel_values"])
    embeds = model.get_input_embeddings()(inputs["input_ids"]).clone()
    mask = inputs["input_ids"] == model.config.image_token_id
    assert int(mask.sum()) == features.shape[0] * features.shape[1]
    embeds[mask] = features.reshape(-1, features.shape[-1])
    return embeds


@pytest.mark.parametrize(
    "vision_layers, r, strategy, layer",
    [(3, 2, "default", -2), (4, 3, "default", -2), (3, 5, "full", -1), (2, 1, "default", -1), (3, 7, "default", -2)],
)
def test_visual_token_count_follows_the_formula(vision_layers, r, strategy, layer):
    model = tiny_llava(vision_layers=vision_layers, strategy=strategy, layer=layer)
    patches = (32 // 8) ** 2
    assert num_image_tokens(model) == patches + (strategy == "full")
    crossget_cli.patch(model, vision_r=r)
    # Layers run before the selected hidden state; each removes r, clamped to
    # half of the unprotected tokens (CLS and the kept cross slot are protected).
    runs = vision_layers + 1 + layer if layer < 0 else layer
    tokens = patches + 2
    for _ in range(runs):
        tokens -= min(r, (tokens - 2) // 2)
    expected = tokens - (strategy == "default")
    assert num_image_tokens(model) == expected
    features = find_adapter(model).image_features(model, images(2))
    assert features.shape == (2, expected, model.config.text_config.hidden_size)


def test_paper_setting_gives_278_visual_tokens():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=16, num_hidden_layers=24, num_attention_heads=1, image_size=336, patch_size=14
    )
    text = LlamaConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1, vocab_size=8)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=3))
    assert num_image_tokens(model) == 576
    crossget_cli.patch(model, vision_r=13)
    assert num_image_tokens(model) == 578 - 23 * 13 - 1 == 278


def test_reducer_uses_head_averaged_keys_and_received_attention():
    """The first reduction step, recomputed by hand from the layer's weights."""
    model = tiny_llava()
    crossget_cli.patch(model, vision_r=3)
    vision = model.model.vision_tower
    pixels = images(2)
    with trace_reduction() as trace, torch.no_grad():
        find_adapter(model).image_features(model, pixels)
        x = vision.pre_layrnorm(vision.embeddings(pixels))
    x = torch.cat([x, x[:, :1]], dim=1)  # cross slot: a copy of CLS; cross tokens are zero
    layer = vision.encoder.layers[0]
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    n, t, _ = h.shape
    heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(h).view(n, t, heads, hd)
    k = attn.k_proj(h).view(n, t, heads, hd)
    probs = torch.stack([torch.softmax(q[:, :, i] @ k[:, :, i].transpose(1, 2) * hd**-0.5, dim=-1) for i in range(heads)])
    mean = probs.mean(dim=0)  # [N, T, T]
    importance = torch.stack([mean[:, : t - 1, j].mean(dim=1) + mean[:, t - 1, j] for j in range(t)], dim=1)
    assert torch.allclose(attention_importance(probs.transpose(0, 1)), importance, atol=1e-6)
    plan = complete_graph_matching(k.mean(dim=2), None, 3, protected_indices(n, t, None, "cpu"), importance=importance)
    recorded = trace[0]["plan"]
    assert torch.equal(recorded.src_idx, plan.src_idx) and torch.equal(recorded.dst_idx, plan.dst_idx)
    assert torch.allclose(recorded.weight, plan.weight, atol=1e-6)


def test_unpatch_is_exact():
    model = tiny_llava()
    inputs = inputs_for(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(**inputs).logits
    crossget_cli.patch(model, vision_r=2)
    assert "model.language_model.cross_text" in dict(model.named_parameters())
    assert model(**inputs_for(model)).logits.shape[1] < before.shape[1]
    crossget_cli.unpatch(model)
    assert set(model.state_dict()) == set(state)
    assert torch.equal(model(**inputs).logits, before)


def test_generate_matches_features_fed_by_hand():
    """Greedy and sampled generation of the patched model, a padded batch, equal
    the unpatched model generating from the reduced features built by hand."""
    model = tiny_llava()
    crossget_cli.patch(model, vision_r=2)
    inputs = inputs_for(model)
    assert (inputs["attention_mask"] == 0).any()  # the prompts differ in length: left padding
    embeds = reference_embeds(model, inputs)
    reference = crossget_cli.unpatch(tiny_llava())
    for sample in (False, True):
        kwargs = dict(max_new_tokens=6, do_sample=sample, top_k=0, pad_token_id=0, eos_token_id=None)
        torch.manual_seed(7)
        patched = model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :]
        torch.manual_seed(7)
        by_hand = reference.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], **kwargs)
        assert torch.equal(patched, by_hand), sample


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_logits_equal_features_fed_by_hand_bit_for_bit(dtype):
    """The patched prefill (vision tower, projector, zero LLM cross tokens written
    over each prompt's first real token of a left-padded batch) gives the very
    logits of the unpatched model fed the reduced features through
    ``inputs_embeds``: the same ops in the same dtype with the same mask, so
    greedy decoding cannot drift even where a large random model has near ties."""
    model = crossget_cli.patch(tiny_llava().to(dtype), vision_r=2)
    inputs = inputs_for(model)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    assert (inputs["attention_mask"] == 0).any()
    reference = crossget_cli.unpatch(tiny_llava().to(dtype))
    with torch.inference_mode():
        embeds = reference_embeds(model, inputs)
        patched = model(**inputs).logits
        by_hand = reference(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        again = model(**inputs).logits  # and run to run
    assert patched.dtype == dtype and torch.equal(patched, by_hand) and torch.equal(patched, again)


def test_llm_cross_token_acts_in_prefill_and_lives_in_the_cache():
    """A trained LLM cross token changes the output; generating with the KV
    cache equals a greedy loop that re-runs the whole prompt every step."""
    model = tiny_llava()
    crossget_cli.patch(model, vision_r=2)
    inputs = inputs_for(model, n=2)
    zero = model(**inputs).logits
    with torch.no_grad():
        model.model.language_model.cross_text.normal_(std=0.5)
    assert not torch.allclose(model(**inputs).logits, zero)
    cached = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for _ in range(5):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"], use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert torch.equal(cached, ids)


def test_continuation_logprobs_score_each_prompt_as_alone():
    """Log-likelihood scoring (lmms-eval's ``loglikelihood``): a left-padded batch scores
    each prompt + continuation as the patched model does alone (log-softmax over the
    continuation's tokens, summed), and flags the greedy continuation greedy."""
    model = crossget_cli.patch(tiny_llava(), vision_r=2)
    tokenizer = tiny_tokenizer()
    adapter = find_adapter(model)
    assert adapter.scores_continuations(model)
    pixels = images(3)
    expected, continuations = [], []
    with torch.inference_mode():
        for i, question in enumerate(QUESTIONS):
            alone = prepare_inputs(model, tokenizer, [PROMPT.format(question=question)], pixels[i : i + 1])
            first = int(model(**alone).logits[0, -1].argmax())
            assert first > 3, "the greedy token is a special token: pick another seed"
            greedy = tokenizer.convert_ids_to_tokens(first)
            for word in (greedy, "red circle"):
                cont = torch.tensor([tokenizer(f" {word}", add_special_tokens=False)["input_ids"]])
                ids = torch.cat([alone["input_ids"], cont], dim=1)
                logits = model(input_ids=ids, pixel_values=alone["pixel_values"]).logits[0, -cont.shape[1] - 1 : -1]
                expected.append((logits.log_softmax(-1).gather(1, cont[0][:, None]).sum().item(), word == greedy))
                continuations.append((i, f" {word}"))
    scores = adapter.continuation_logprobs(
        model,
        pixels[[i for i, _ in continuations]],
        [QUESTIONS[i] for i, _ in continuations],
        [c for _, c in continuations],
        tokenizer=tokenizer,
        prompt=PROMPT,
    )
    assert [greedy for _, greedy in scores] == [greedy for _, greedy in expected]
    assert [s for s, _ in scores] == pytest.approx([e for e, _ in expected], abs=1e-4)


def test_load_compress_and_reload_through_model_path(tmp_path):
    from crossget_cli.export.compress import compress
    from crossget_cli.loading.models import load_model

    folder = save_tiny_llava(tmp_path / "llava")
    loaded = load_model(str(folder))
    assert find_adapter(loaded.model).name == "llava" and loaded.tokenizer is not None
    result = compress(str(folder), tmp_path / "out", vision_r=2, measure_speed=False)
    assert result.report["tokens_per_layer"]["vision"] == [18, 16, 14, 12]
    assert result.report["tokens_per_layer"]["text"] == [13, 13, 13]
    reloaded = load_model(str(tmp_path / "out"))
    assert num_image_tokens(reloaded.model) == 13
    inputs = inputs_for(reloaded.model)
    assert torch.equal(reloaded.model(**inputs).logits, result.model(**inputs).logits)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["tokens_per_layer"]["vision"][0] == 18


def _answer_by_hand(loaded, image_path, question: str, template: str, max_new_tokens: int) -> str:
    """One question, batch 1, the placeholder expanded by hand."""
    from PIL import Image

    from crossget_cli.loading.preprocessing import model_io

    io = model_io(loaded)
    pixels = io.transform(Image.open(image_path).convert("RGB"))[None]
    tokenizer = loaded.tokenizer
    text = template.format(question=question).replace("<image>", "<image>" * num_image_tokens(loaded.model))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = loaded.model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def _image_files(folder, n):
    from PIL import Image

    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def llava_folders(tmp_path_factory):
    from crossget_cli.export.compress import compress

    root = tmp_path_factory.mktemp("llava")
    save_tiny_llava(root / "original")
    compress(str(root / "original"), root / "r2", vision_r=2, measure_speed=False)
    return root


def test_eval_vqa_through_the_cli(llava_folders, tmp_path):
    from typer.testing import CliRunner

    from crossget_cli.adapters.llava.adapter import VQA_TEMPLATE
    from crossget_cli.cli.app import app
    from crossget_cli.loading.models import load_model

    paths = _image_files(tmp_path, 3)
    compressed = load_model(str(llava_folders / "r2"))
    truth = [_answer_by_hand(compressed, p, q, VQA_TEMPLATE, 3) for p, q in zip(paths, QUESTIONS)]
    truth[2] = "no such answer"  # the third question is answered wrongly
    rows = [{"image": p.name, "question": q, "answers": [a] * 10} for p, q, a in zip(paths, QUESTIONS, truth)]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    models = [str(llava_folders / "original"), str(llava_folders / "r2")]
    args = ["eval", "--task", "vqa", "--data", str(tmp_path / "q.jsonl"), "--max-new-tokens", "3", "--batch-size", "2"]
    result = CliRunner().invoke(app, [*args, "-m", models[0], "-m", models[1], "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["results"]["vqa"]
    assert scores[models[1]]["overall"] == pytest.approx(200 / 3, abs=0.01)
    assert set(scores) == set(models)


def test_eval_multiple_choice_through_the_cli(llava_folders, tmp_path):
    from typer.testing import CliRunner

    from crossget_cli.adapters.llava.adapter import CHOICE_TEMPLATE
    from crossget_cli.cli.app import app
    from crossget_cli.data.choice import format_options
    from crossget_cli.loading.models import load_model

    paths = _image_files(tmp_path, 2)
    compressed = load_model(str(llava_folders / "r2"))
    rows = []
    for i, path in enumerate(paths):
        # Option B becomes the model's own answer to the question with these
        # options (a fixed point, found by asking again with the answer as B).
        options = ["zz top", "yy"]
        for _ in range(5):
            answer = _answer_by_hand(compressed, path, f"{QUESTIONS[i]}\n{format_options(options)}", CHOICE_TEMPLATE, 2)
            if answer == options[1]:
                break
            options[1] = answer
        assert answer == options[1]
        rows.append({"image": path.name, "question": QUESTIONS[i], "options": options, "answer": "B" if i == 0 else 0})
    (tmp_path / "mc.json").write_text(json.dumps(rows))
    model = str(llava_folders / "r2")
    args = ["eval", "--task", "multiple-choice", "--data", str(tmp_path / "mc.json"), "--max-new-tokens", "2", "-m", model]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]["multiple-choice"][model] == {"accuracy": 50.0, "unparsed": 0.0}


@pytest.mark.parametrize(
    "text, expected",
    [("B", 1), ("(C) the third", 2), ("A. first", 0), ("The answer is C.", 2), ("second", 1), ("E", None), ("hmm", None)],
)
def test_parse_choice(text, expected):
    from crossget_cli.data.choice import parse_choice

    assert parse_choice(text, ["first", "second", "third"]) == expected


def test_compress_and_profile_through_the_cli(llava_folders, tmp_path):
    from typer.testing import CliRunner

    from crossget_cli.cli.app import app

    runner = CliRunner()
    original = str(llava_folders / "original")
    result = runner.invoke(app, ["compress", "-m", original, "-o", str(tmp_path / "r3"), "--vision-r", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["report"]
    assert report["tokens_per_layer"]["vision"] == [18, 15, 12, 9]  # 16 patches + CLS + cross, r = 3
    assert report["profile"]["runs"][1]["tokens_per_layer"]["text"] == [11] * 3  # 12 - CLS into the LLM

    args = ["profile", "-m", original, "--vision-r", "2,3", "--batch-sizes", "2", "--warmup", "0", "--repeats", "1"]
    result = runner.invoke(app, [*args, "--new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    profile = json.loads(result.stdout)
    assert [r["label"] for r in profile["runs"]] == ["original", "rv2_rl0", "rv3_rl0"]  # the vision tower's profile
    runs = profile["generation"]  # and generation timing, on by default for a generating model
    assert [r["label"] for r in runs] == ["original", "rv2_rl0", "rv3_rl0"]
    assert [r["facts"]["visual_tokens_into_llm"] for r in runs] == [16, 13, 11]
    # The prompts hold the visual tokens: the reduced runs' prompts are shorter by the difference.
    assert [runs[0]["facts"]["prompt_tokens"] - r["facts"]["prompt_tokens"] for r in runs] == [0, 3, 5]
    assert all(r["batch"] == 2 and r["new_tokens"] == 3 and r["items_per_s"] > 0 and r["prefill_ms"] > 0 for r in runs)
    table = runner.invoke(app, args + ["--new-tokens", "3"])
    assert table.exit_code == 0 and "visual tokens into llm" in table.stdout, table.output


def test_llm_depth_rows_follow_the_reference_repetition():
    from crossget_cli.adapters.llava.objective import llm_depth_rows

    # LLaVA-1.5-7B: 24 vision layers, 32 LLM layers; every third vision layer twice.
    rows = llm_depth_rows(24, 32).tolist()
    assert len(rows) == 32 and rows[:6] == [0, 1, 2, 2, 3, 4] and rows[-1] == 23
    assert llm_depth_rows(3, 2).tolist() == [1, 2]  # repeats floor(2/3) - 0 = 0, floor(4/3) - 0 = 1, 2 - 1 = 1
    assert llm_depth_rows(2, 4).tolist() == [0, 0, 1, 1]


def _conversations(folder, n):
    paths = _image_files(folder, n)
    rows = [
        {
            "id": str(i),
            "image": p.name,
            "conversations": [
                {"from": "human", "value": "<image>\nwhat color is the circle ?"},
                {"from": "gpt", "value": "red" if i % 2 else "blue"},
                {"from": "human", "value": "shape ?"},
                {"from": "gpt", "value": "square"},
            ],
        }
        for i, p in enumerate(paths)
    ]
    (folder / "train.json").write_text(json.dumps(rows))
    return folder / "train.json"


def test_conversation_labels_cover_the_answers_only():
    from crossget_cli.adapters.llava.objective import IGNORE, conversation_batch

    model = crossget_cli.patch(tiny_llava(), vision_r=2)
    tokenizer = tiny_tokenizer()
    batch = conversation_batch(model, tokenizer, [[("<image>\nshape ?", "red circle")], [("what ?", "blue"), ("is ?", "no")]])
    ids, labels = batch["input_ids"], batch["labels"]
    assert (ids[0] == 3).sum() == (ids[1] == 3).sum() == num_image_tokens(model)  # placeholder added to the second
    kept = [tokenizer.convert_ids_to_tokens(row[row != IGNORE].tolist()) for row in labels]
    assert kept == [["red", "circle", "</s>"], ["blue", "</s>", "no", "</s>"]]
    assert (labels[batch["attention_mask"] == 0] == IGNORE).all()


def test_llava_loss_is_ce_plus_weighted_js(tmp_path):
    from crossget_cli.core import collect_cross_tokens, js_loss
    from crossget_cli.loading.preprocessing import model_io
    from crossget_cli.adapters.training import FinetuneConfig, get_objective
    from crossget_cli.loading.models import load_model

    save_tiny_llava(tmp_path / "m")
    io = model_io(load_model(str(tmp_path / "m")))
    crossget_cli.patch(io.model, vision_r=2)
    with torch.no_grad():
        io.model.model.vision_tower.encoder.cross_image.normal_(std=0.3)
    config = FinetuneConfig(data=str(_conversations(tmp_path, 2)), objective="llava", trainable="cross")
    assert config.js_weight == 0.001 and config.task_weight == 1.0
    objective = get_objective("llava")
    items = [objective.dataset(io, config)[i] for i in range(2)]
    losses = objective.losses(io.model, io, items, config)
    assert losses["total"].item() == pytest.approx((losses["ce"] + 0.001 * losses["js"]).item())
    # L_JS by hand: projector applied to each vision layer's cross tokens; 3 vision layers, 2 LLM layers.
    with collect_cross_tokens() as cross:
        from crossget_cli.adapters.llava.objective import conversation_batch

        batch = conversation_batch(io.model, io.loaded.tokenizer, [turns for _, turns in items])
        io.model(**batch, pixel_values=torch.stack([im for im, _ in items]))
    vision = cross["vision"][0].view(3, 2, -1)
    projected = io.model.model.multi_modal_projector(vision)
    text = cross["text"][0].view(2, 2, -1)
    expected = js_loss(torch.cat([projected[1], projected[2]]), text.reshape(4, -1))
    assert losses["js"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_finetune_through_the_cli_moves_the_cross_tokens(tmp_path):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from crossget_cli.cli.app import app

    save_tiny_llava(tmp_path / "m")
    data = _conversations(tmp_path, 4)
    args = ["compress", "-m", str(tmp_path / "m"), "-o", str(tmp_path / "out"), "--vision-r", "2", "--no-speed"]
    args += ["--finetune", "--objective", "llava", "--train-data", str(data), "--batch-size", "2", "--max-steps", "2"]
    args += ["--lr", "1e-2", "--trainable", "cross,multi_modal_projector", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["recipe"]["finetune"]["objective"] == "llava" and out["report"]["finetune"]["steps"] == 2
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    original = tiny_llava().state_dict()  # what save_tiny_llava saved
    assert weights["model.vision_tower.encoder.cross_image"].abs().sum() > 0
    assert weights["model.language_model.cross_text"].abs().sum() > 0
    assert not torch.equal(
        weights["model.multi_modal_projector.linear_1.weight"], original["model.multi_modal_projector.linear_1.weight"]
    )
    frozen = "model.language_model.layers.0.mlp.up_proj.weight"
    assert torch.equal(weights[frozen], original[frozen])
    reloaded = crossget_cli.load(str(tmp_path / "out"))
    assert num_image_tokens(reloaded) == 13


def test_the_llm_is_not_reduced(tmp_path):
    from typer.testing import CliRunner

    from crossget_cli.cli.app import app
    from crossget_cli.errors import CrossGetError

    with pytest.raises(CrossGetError, match="merge no text tokens"):
        crossget_cli.patch(tiny_llava(), vision_r=2, text_r=1)
    folder = save_tiny_llava(tmp_path / "m")
    result = CliRunner().invoke(app, ["compress", "-m", str(folder), "-o", str(folder.parent / "o"), "--text-r", "2"])
    assert result.exit_code == 2 and "merge no text tokens" in result.output
