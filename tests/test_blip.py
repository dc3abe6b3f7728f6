"""BLIP and BLIP-2 adapters on tiny random models loaded through ``--model``:
patched forward/generate, exact unpatch, token counts, the size bias in the
image cross-attention, eval end to end, and bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.cli.app import app
from crossget_cli.core import trace_reduction
from crossget_cli.loading.models import load_model

from tiny_blip import blip, blip2, save

runner = CliRunner()
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "white": (240, 240, 240)}
IDS = torch.tensor([[2, 10, 11, 12, 3, 0, 0], [2, 13, 14, 3, 0, 0, 0], [2, 15, 16, 17, 18, 19, 3]])


def _images(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip")
    built = {}
    for kind in ("retrieval", "captioning", "vqa"):
        built[kind] = save(blip(kind), root / kind)
    built["blip2"] = save(blip2("generation"), root / "blip2")
    built["blip2-itm"] = save(blip2("retrieval"), root / "blip2-itm")
    return built


def _load(folders, name):
    return load_model(str(folders[name])).model


def _outputs(model, name):
    """Everything the model computes on fixed inputs, as a list of tensors."""
    images = _images()
    mask = (IDS != 0).long()
    with torch.no_grad():
        if name == "retrieval":
            itm = model(input_ids=IDS, pixel_values=images, attention_mask=mask).itm_score
            itc = model(input_ids=IDS, pixel_values=images, attention_mask=mask, use_itm_head=False).itm_score
            return [itm, itc]
        if name == "captioning":
            logits = model(pixel_values=images, input_ids=IDS, attention_mask=mask).logits
            return [logits, model.generate(pixel_values=images, max_new_tokens=4, num_beams=2)]
        if name == "vqa":
            return [model.generate(input_ids=IDS, pixel_values=images, attention_mask=mask, max_new_tokens=4, num_beams=2)]
        if name == "blip2":
            ids = torch.tensor([[7] * 4 + [2, 10, 11]] * 3)
            logits = model(pixel_values=images, input_ids=ids).logits
            return [logits, model.generate(pixel_values=images, input_ids=ids, max_new_tokens=4, num_beams=2)]
        ids = torch.tensor([[2, 10, 11, 3]] * 3)
        out = model(pixel_values=images, input_ids=ids, attention_mask=torch.ones_like(ids), use_image_text_matching_head=True)
        return [out.logits_per_image]


NAMES = ["retrieval", "captioning", "vqa", "blip2", "blip2-itm"]


@pytest.mark.parametrize("name", NAMES)
def test_found_by_structure_and_unpatch_is_exact(folders, name):
    model = _load(folders, name)
    assert find_adapter(model).name == ("blip2" if name.startswith("blip2") else "blip")
    before = _outputs(model, name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for r in (0, 4):
        crossget_cli.patch(model, vision_r=r, text_r=2 if name == "retrieval" else 0)
        patched = _outputs(model, name)  # forward and generate run on the patched model
        assert all(torch.isfinite(p.float()).all() for p in patched)
        crossget_cli.unpatch(model)
        after = _outputs(model, name)
        assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", NAMES)
def test_token_counts_follow_the_schedule(folders, name):
    model = _load(folders, name)
    crossget_cli.patch(model, vision_r=4)
    # 16 patches + CLS + the cross slot = 18; r = 4 at both layers, nothing clamped.
    with trace_reduction() as trace, torch.no_grad():
        out = model.vision_model(pixel_values=_images(2))
    vision = [step["x"].shape[1] for step in trace if step["modality"] == "vision"]
    assert vision == [14, 10]
    tower = find_adapter(model).towers(model)[0]
    assert tower.token_counts() == [18, 14, 10]
    assert out.last_hidden_state.shape[1] == 9  # the cross slot is not passed on
    assert out.token_sizes.shape == (2, 9) and torch.equal(out.token_sizes.sum(1), torch.full((2,), 17.0))


def test_text_tokens_of_the_itc_encoder(folders):
    model = _load(folders, "retrieval")
    crossget_cli.patch(model, vision_r=0, text_r=2)
    with trace_reduction() as trace, torch.no_grad():
        out = model.text_encoder(input_ids=IDS, attention_mask=(IDS != 0).long())
    # 7 tokens + the cross slot; text keeps |P| = 3 for the clamp (SPEC §1), here
    # [CLS] (pooled and guide), the cross slot, and [CLS] again as the pooled token:
    # 8 -> 8 - min(2, (8-3)//2) = 6 -> 6 - min(2, (6-3)//2) = 5.
    assert [s["x"].shape[1] for s in trace if s["modality"] == "text"] == [6, 5]
    assert out.last_hidden_state.shape[1] == 4
    # The ITM pass (with image tokens) keeps every text token.
    with torch.no_grad():
        image = model.vision_model(pixel_values=_images()).last_hidden_state
        itm = model.text_encoder(input_ids=IDS, attention_mask=(IDS != 0).long(), encoder_hidden_states=image)
    assert itm.last_hidden_state.shape[1] == 7


def test_text_padding_is_never_attended(folders):
    """Padding keys stay masked through merging: extra padding changes nothing
    when no merge involves it (r = 0 on the reduced path = training mode here)."""
    model = _load(folders, "retrieval")
    crossget_cli.patch(model, vision_r=0, text_r=1)
    ids = IDS[1:2, :4]  # [CLS] a b [SEP]
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        model.text_encoder.encoder.crossget_schedule = (0, 0)
        model.text_encoder.train()  # the reduced path with r = 0: cross slot, no merge
        short = model.text_encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        long = model.text_encoder(input_ids=padded, attention_mask=(padded != 0).long()).last_hidden_state
    model.text_encoder.eval()
    torch.testing.assert_close(long[:, :4], short, rtol=1e-5, atol=1e-5)


def _sharpen(model):
    """Larger weights than the 0.02 init, so that outputs depend clearly on the image."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))


def _expanded(tokens: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Each merged token repeated ``size`` times (sizes are whole numbers)."""
    return torch.cat([tokens[i].repeat_interleave(sizes[i].round().long(), dim=0)[None] for i in range(len(tokens))])


def test_size_bias_equals_repeating_merged_tokens(folders):
    """log(size) on a key is exactly attention to ``size`` copies of it: the
    patched decoder on merged tokens matches the original decoder on the merged
    tokens repeated by their sizes (an independent reference)."""
    model = _load(folders, "captioning")
    _sharpen(model)
    crossget_cli.patch(model, vision_r=4)
    images = _images(1)
    ids = IDS[:1, :5]
    with torch.no_grad():
        logits = model(pixel_values=images, input_ids=ids).logits
        vision = model.vision_model(pixel_values=images)
        assert vision.token_sizes.max() > 1
        repeated = _expanded(vision.last_hidden_state, vision.token_sizes)
        reference = model.text_decoder(input_ids=ids, encoder_hidden_states=repeated).logits
        unbiased = model.text_decoder(input_ids=ids, encoder_hidden_states=vision.last_hidden_state).logits
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    assert (logits - unbiased).abs().max() > 0.1  # the bias matters


def test_qformer_gets_the_size_bias(folders):
    model = _load(folders, "blip2")
    crossget_cli.patch(model, vision_r=4)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=_images(2))
        vision = model.vision_model(pixel_values=_images(2))
        queries = model.query_tokens.expand(2, -1, -1)
        repeated = _expanded(vision.last_hidden_state, vision.token_sizes)
        reference = model.qformer(query_embeds=queries, encoder_hidden_states=repeated).last_hidden_state
    torch.testing.assert_close(features.qformer_outputs.last_hidden_state, reference, rtol=1e-4, atol=1e-5)
    assert features.pooler_output.shape[1] == 4  # the queries stay


@pytest.mark.parametrize("name", ["captioning", "vqa", "blip2"])
def test_beam_search_on_a_batch_matches_one_image_at_a_time(folders, name):
    """Beams repeat the encoder states; the size bias must follow them."""
    model = _load(folders, name)
    crossget_cli.patch(model, vision_r=4)
    images = _images(3, seed=1)
    kwargs = dict(max_new_tokens=5, num_beams=3)
    with torch.no_grad():
        if name == "captioning":
            batch = model.generate(pixel_values=images, **kwargs)
            single = [model.generate(pixel_values=images[i : i + 1], **kwargs) for i in range(3)]
        elif name == "vqa":
            mask = (IDS != 0).long()
            batch = model.generate(input_ids=IDS, pixel_values=images, attention_mask=mask, **kwargs)
            single = [
                model.generate(input_ids=IDS[i : i + 1], pixel_values=images[i : i + 1], attention_mask=mask[i : i + 1], **kwargs)
                for i in range(3)
            ]
        else:
            ids = torch.tensor([[7] * 4 + [2, 10]] * 3)
            batch = model.generate(pixel_values=images, input_ids=ids, **kwargs)
            single = [model.generate(pixel_values=images[i : i + 1], input_ids=ids[i : i + 1], **kwargs) for i in range(3)]
    for i in range(3):
        assert torch.equal(batch[i, : single[i].shape[1]], single[i][0])


def test_losses_reach_the_cross_tokens(folders):
    """ITC + L_JS on BLIP retrieval and the LM loss on captioning backpropagate
    into the cross tokens."""
    from crossget_cli.core import collect_cross_tokens, contrastive_loss, js_loss

    model = _load(folders, "retrieval")
    crossget_cli.patch(model, vision_r=4, text_r=2)
    adapter = find_adapter(model)
    model.train()
    with collect_cross_tokens() as cross:
        image = adapter.encode_image(model, _images(3))
        text = adapter.encode_text(model, IDS)
    itc = contrastive_loss(image, text, adapter.logit_scale(model).detach())
    js = js_loss(
        adapter.project_cross(model, "vision", cross["vision"][0]), adapter.project_cross(model, "text", cross["text"][0])
    )
    (0.5 * itc + 0.5 * js).backward()
    towers = adapter.towers(model)
    assert all(t.cross.grad is not None and t.cross.grad.abs().sum() > 0 for t in towers)

    captioner = _load(folders, "captioning")
    crossget_cli.patch(captioner, vision_r=4)
    captioner.train()
    loss = captioner(pixel_values=_images(2), input_ids=IDS[:2], labels=IDS[:2]).loss
    loss.backward()
    assert find_adapter(captioner).towers(captioner)[0].cross.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("blipdata")
    images, questions, records = [], [], []
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        picture = Image.new("RGB", (40, 48), rgb)
        picture.paste((0, 0, 0), (4 * i, 4, 4 * i + 12, 20))
        picture.save(root / f"{colour}.jpg")
        picture.save(root / f"COCO_val2014_{i + 1:012d}.jpg")
        sentences = [{"raw": f"a {colour} square"}, {"raw": f"a photo of a {colour} square"}]
        images.append({"filename": f"{colour}.jpg", "split": "test", "sentences": sentences})
        questions.append({"question_id": i, "image_id": i + 1, "question": "what color is the square?"})
        records.append({"question_id": i, "image_id": i + 1, "answer_type": "other", "answers": [{"answer": colour}] * 10})
    (root / "karpathy.json").write_text(json.dumps({"images": images}))
    (root / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    (root / "a.json").write_text(json.dumps({"annotations": records}))
    return root


def _compress(folder: Path, out: Path, *args: str) -> Path:
    result = runner.invoke(app, ["compress", "-m", str(folder), "-o", str(out), "--no-speed", *args])
    assert result.exit_code == 0, result.output
    return out


def _eval(models, *args):
    argv = ["eval", *[a for m in models for a in ("-m", str(m))], *args, "--json"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _pixels(folder, root, names):
    from transformers import BlipImageProcessor

    processor = BlipImageProcessor.from_pretrained(str(folder))
    return processor(images=[Image.open(root / n).convert("RGB") for n in names], return_tensors="pt")["pixel_values"]


def test_eval_retrieval_itc_and_itm_rerank(folders, data, tmp_path):
    """Recall from the CLI equals recall from scores computed here directly with
    the model's own forward (ITC and ITM heads), ranking by ITM + ITC over all
    pairs (k covers every candidate)."""
    from transformers import BertTokenizer

    model = blip("retrieval")
    _sharpen(model)  # spread the scores: no near-ties for rounding to flip
    folder = save(model, tmp_path / "sharp")
    small = _compress(folder, tmp_path / "small", "--vision-r", "4", "--text-r", "2")
    for itm_k in ("0", "8"):
        report = _eval([small], "-t", "retrieval", "-d", str(data / "karpathy.json"), "--image-root", str(data), "--itm-k", itm_k)
        scores = report["results"]["retrieval"][str(small)]
        model = crossget_cli.load(str(small))
        tokenizer = BertTokenizer.from_pretrained(str(small))
        captions = [s["raw"] for c in COLOURS for s in ({"raw": f"a {c} square"}, {"raw": f"a photo of a {c} square"})]
        enc = tokenizer(captions, padding="max_length", max_length=35, return_tensors="pt")
        pixels = _pixels(small, data, [f"{c}.jpg" for c in COLOURS])
        owner = [i for i in range(4) for _ in range(2)]
        with torch.no_grad():
            itc = model(input_ids=enc["input_ids"], pixel_values=pixels, attention_mask=enc["attention_mask"], use_itm_head=False)
            sim = itc.itm_score  # [images, captions] cosine
            if itm_k == "0":
                expected = _recall_from_matrix(sim, owner)
            else:
                itm = torch.zeros(4, 8)
                for i in range(4):
                    out = model(
                        input_ids=_enc_ids(enc["input_ids"]),
                        pixel_values=pixels[i : i + 1].expand(8, -1, -1, -1),
                        attention_mask=enc["attention_mask"],
                    )
                    itm[i] = out.itm_score[:, 1]
                expected = _recall_from_matrix(sim + itm, owner)
        assert scores == pytest.approx(expected)


def _enc_ids(ids):
    ids = ids.clone()
    ids[:, 0] = 5  # [ENC] = bos id of the tiny config, as BLIP's ITM does
    return ids


def _recall_from_matrix(scores: torch.Tensor, owner) -> dict:
    owner = torch.tensor(owner)
    i2t = scores.argsort(dim=1, descending=True, stable=True)
    t2i = scores.t().argsort(dim=1, descending=True, stable=True)
    out = {}
    for k in (1, 5, 10):
        out[f"txt_r{k}"] = 100.0 * (owner[i2t[:, :k]] == torch.arange(4)[:, None]).any(1).float().mean().item()
    for k in (1, 5, 10):
        out[f"img_r{k}"] = 100.0 * (t2i[:, :k] == owner[:, None]).any(1).float().mean().item()
    out["r_mean"] = sum(out.values()) / 6
    return out


@pytest.mark.parametrize("name", ["captioning", "blip2"])
def test_eval_captioning_end_to_end(folders, data, tmp_path, name):
    from transformers import AutoTokenizer

    from crossget_cli.metrics.caption import caption_scores

    small = _compress(folders[name], tmp_path / "small", "--vision-r", "4")
    report = _eval(
        [folders[name], small],
        "-t",
        "captioning",
        "-d",
        str(data / "karpathy.json"),
        "--image-root",
        str(data),
        "--max-new-tokens",
        "4",
    )
    assert set(report["results"]["captioning"]) == {str(folders[name]), str(small)}
    model = crossget_cli.load(str(small))
    tokenizer = AutoTokenizer.from_pretrained(str(small))
    pixels = _pixels(small, data, [f"{c}.jpg" for c in COLOURS])
    with torch.no_grad():
        if name == "captioning":
            ids = model.generate(pixel_values=pixels, max_new_tokens=4, num_beams=3)
        else:
            prompt = torch.tensor([[7] * 4 + [2]] * 4)
            ids = model.generate(pixel_values=pixels, input_ids=prompt, max_new_tokens=4, num_beams=3)[:, 5:]
    captions = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    refs = {str(i): [f"a {c} square", f"a photo of a {c} square"] for i, c in enumerate(COLOURS)}
    expected = caption_scores(refs, {str(i): c for i, c in enumerate(captions)})
    scores = report["results"]["captioning"][str(small)]
    assert {k: scores[k] for k in expected} == pytest.approx(expected)  # METEOR too where Java is installed


@pytest.mark.parametrize("name", ["vqa", "blip2"])
def test_eval_vqa_end_to_end(folders, data, tmp_path, name):
    small = _compress(folders[name], tmp_path / "small", "--vision-r", "4")
    args = ["-t", "vqa", "-d", str(data / "q.json"), "--annotations", str(data / "a.json"), "--image-root", str(data)]
    report = _eval([small], *args, "--max-new-tokens", "3", "--num-beams", "1")
    model = crossget_cli.load(str(small))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(small))
    pixels = _pixels(small, data, [f"COCO_val2014_{i + 1:012d}.jpg" for i in range(4)])
    with torch.no_grad():
        if name == "vqa":
            enc = tokenizer(["what color is the square?"] * 4, return_tensors="pt")
            ids = model.generate(
                input_ids=enc["input_ids"], pixel_values=pixels, attention_mask=enc["attention_mask"], max_new_tokens=3
            )
        else:
            words = tokenizer("Question: what color is the square? Answer:", add_special_tokens=False)["input_ids"]
            prompt = torch.tensor([[7] * 4 + [2] + words] * 4)
            ids = model.generate(pixel_values=pixels, input_ids=prompt, max_new_tokens=3)[:, prompt.shape[1] :]
    answers = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    expected = 100.0 * sum(a == c for a, c in zip(answers, COLOURS)) / 4
    assert report["results"]["vqa"][str(small)]["overall"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "name,task",
    [
        ("captioning", "vqa"),
        ("captioning", "retrieval"),
        ("vqa", "captioning"),
        ("retrieval", "captioning"),
        ("blip2", "retrieval"),
        ("blip2-itm", "captioning"),
    ],
)
def test_task_without_a_head_is_one_line_exit_2(folders, data, name, task):
    args = ["eval", "-m", str(folders[name]), "-t", task, "--image-root", str(data)]
    args += ["-d", str(data / ("q.json" if task == "vqa" else "karpathy.json"))]
    if task == "vqa":
        args += ["--annotations", str(data / "a.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "has no head for task" in lines[0] and "Traceback" not in result.output


def test_exported_blip_reloads_bit_identical(folders, tmp_path):
    small = _compress(folders["captioning"], tmp_path / "small", "--vision-r", "4")
    model = _load(folders, "captioning")
    crossget_cli.patch(model, vision_r=4)
    reloaded = crossget_cli.load(str(small))
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, "captioning"), _outputs(reloaded, "captioning")))
    assert copy.deepcopy(reloaded) is not None


@pytest.mark.parametrize(
    "name,objective,data_args",
    [
        ("retrieval", "blip-retrieval", []),
        ("captioning", "blip-caption", []),
        ("vqa", "blip-vqa", ["--annotations", "a.json"]),
    ],
)
def test_finetune_objectives_through_compress(folders, data, tmp_path, name, objective, data_args):
    """``compress --finetune --objective blip-*``: the losses are logged, the cross
    tokens move (they start at zero), and the export reloads."""
    train = data / ("q.json" if objective == "blip-vqa" else "karpathy.json")
    args = ["compress", "-m", str(folders[name]), "-o", str(tmp_path / "out"), "--no-speed", "--vision-r", "4"]
    args += ["--finetune", "--objective", objective, "--train-data", str(train), "--image-root", str(data)]
    args += ["--split", "test", "--batch-size", "4", "--max-steps", "2", "--lr", "1e-2", "--checkpoint-dir", str(tmp_path / "ck")]
    args += [a if a != "a.json" else str(data / "a.json") for a in data_args]
    if name == "retrieval":
        args += ["--text-r", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (tmp_path / "ck" / "train_log.jsonl").read_text().splitlines()]
    steps = [entry for entry in log if "loss" in entry]
    parts = {"blip-retrieval": ("itc", "itm", "js"), "blip-caption": ("lm", "js"), "blip-vqa": ("lm", "js")}[objective]
    assert steps and all(all(p in e and e[p] == e[p] for p in parts) for e in steps)
    model = crossget_cli.load(str(tmp_path / "out"))
    towers = find_adapter(model).towers(model)
    assert all(t.cross.abs().sum() > 0 for t in towers)  # trained away from the zero init


@pytest.mark.parametrize("r", [0, 4])
def test_blip2_retrieval_scores_match_the_model_forward(folders, r):
    """The adapter's ITC (best query) and ITM paths give the model's own
    ``logits_per_image``, unpatched and patched (where both use the size bias)."""
    from crossget_cli.metrics.retrieval import similarity

    model = _load(folders, "blip2-itm")
    if r:
        crossget_cli.patch(model, vision_r=r)
    adapter = find_adapter(model)
    images, ids = _images(3), IDS[:, :5]
    mask = (ids != 0).long()
    # transformers expects the query placeholders (image_token_index) before the text
    full = torch.cat([torch.full((3, 4), 7), ids], dim=1)
    full_mask = torch.cat([torch.ones(3, 4, dtype=torch.long), mask], dim=1)
    with torch.no_grad():
        itc = model(pixel_values=images, input_ids=full, attention_mask=full_mask).logits_per_image
        itm = model(pixel_values=images, input_ids=full, attention_mask=full_mask, use_image_text_matching_head=True)
        image = torch.nn.functional.normalize(adapter.encode_image(model, images), dim=-1)
        text = torch.nn.functional.normalize(adapter.encode_text(model, ids), dim=-1)
        tokens, sizes = adapter.image_tokens(model, images)
        ours_itm = adapter.itm_logits(model, tokens, sizes, ids)
    torch.testing.assert_close(similarity(image, text), itc)
    torch.testing.assert_close(ours_itm, itm.logits_per_image)


def test_eval_blip2_retrieval_end_to_end(folders, data, tmp_path):
    """ITC + ITM re-ranking of a compressed BLIP-2 retrieval model: recall from
    the CLI equals recall from the model's own forward over all pairs."""
    model = blip2("retrieval")
    _sharpen(model)
    small = _compress(save(model, tmp_path / "sharp"), tmp_path / "small", "--vision-r", "4")
    report = _eval([small], "-t", "retrieval", "-d", str(data / "karpathy.json"), "--image-root", str(data), "--itm-k", "8")
    model = crossget_cli.load(str(small))
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(small))
    captions = [t for c in COLOURS for t in (f"a {c} square", f"a photo of a {c} square")]
    enc = tokenizer(captions, padding="max_length", max_length=35, return_tensors="pt")
    ids = torch.cat([torch.full((8, 4), 7), enc["input_ids"]], dim=1)
    mask = torch.cat([torch.ones(8, 4, dtype=torch.long), enc["attention_mask"]], dim=1)
    pixels = _pixels(small, data, [f"{c}.jpg" for c in COLOURS])
    with torch.no_grad():
        itc = torch.stack(
            [model(pixel_values=pixels[i : i + 1], input_ids=ids, attention_mask=mask).logits_per_image[0] for i in range(4)]
        )
        itm = torch.stack(
            [
                model(
                    pixel_values=pixels[i : i + 1].expand(8, -1, -1, -1),
                    input_ids=ids,
                    attention_mask=mask,
                    use_image_text_matching_head=True,
                ).logits_per_image[:, 1]
                for i in range(4)
            ]
        )
    owner = [i for i in range(4) for _ in range(2)]
    assert report["results"]["retrieval"][str(small)] == pytest.approx(_recall_from_matrix(itc + itm, owner))
