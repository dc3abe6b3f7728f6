"""LLaVA-OneVision (SigLIP) and LLaVA-NeXT (CLIP): "anyres" tiles reduced one by one,
packed flat (README "LLaVA-OneVision and LLaVA-NeXT"). Tiny random models built here,
saved with ``save_pretrained`` and loaded through the real ``--model`` path."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_tokenizer

import crossget_cli
from crossget_cli.adapters.llava_next.adapter import num_image_tokens, prepare_inputs
from crossget_cli.adapters.llava_next.tiny import image_processor, tiny_next, tiny_onevision
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.core import trace_reduction
from crossget_cli.errors import CrossGetError

PROMPT = "USER: <image>\n{question} ASSISTANT:"
QUESTIONS = ["what color is the circle ?", "shape ?", "what is the shape of the two blue square ?"]
BUILDERS = {"onevision": tiny_onevision, "next": tiny_next}
#: (height, width) -> tiles with the tiny grid (32 px tiles; pinpoints 32x32, 32x64, 64x32, 64x64)
SIZES = {(64, 64): 5, (32, 48): 3, (32, 32): 2}


def pixels(n_tiles: int, n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, n_tiles, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def per_tile(kind: str, r: int, vision_layers: int = 4) -> int:
    """SPEC §1 clamping by hand: SigLIP tiles (16 patches + cross slot, P = 1, ``full``
    of layer -1); CLIP tiles (CLS + 16 patches + cross slot, P = 2, layer -2, CLS dropped)."""
    siglip = kind == "onevision"
    tokens, protected = (17, 1) if siglip else (18, 2)
    runs = vision_layers if siglip else vision_layers - 1
    for _ in range(runs):
        tokens -= min(r, (tokens - protected) // 2)
    return tokens - (not siglip)


def batch(model, sizes, seed=0):
    """A processor-like batch: each image's tiles, padded to the batch's most, and its size."""
    n = max(SIZES[s] for s in sizes)
    return pixels(n, len(sizes), seed), torch.tensor(sizes)


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("r", [0, 2, 3, 7])
def test_token_counts_follow_the_formula(kind, r):
    model = BUILDERS[kind]()
    adapter = find_adapter(model)
    assert adapter.name == "llava-next"
    # Unpatched: the model's own spatial packing (unpad, a newline per row).
    assert num_image_tokens(model, [[64, 64], [32, 48]]) == [16 + 64 + 8, 16 + 24 + 4]
    crossget_cli.patch(model, vision_r=r)
    n = per_tile(kind, r)
    assert adapter.num_image_tokens(model) == n
    for size, tiles in SIZES.items():
        expected = n + (tiles - 1) * (n + 1)  # base tile, then each grid tile + one newline
        assert num_image_tokens(model, [list(size)]) == [expected]
        px, sizes = batch(model, [size])
        with torch.no_grad():
            (features,) = adapter.image_features(model, px, sizes)
        assert features.shape[0] == expected
    if kind == "onevision":  # a multi-image prompt: one tile per image, its tokens and a newline
        assert num_image_tokens(model, [[64, 64], [32, 48]], batch_num_images=[2]) == [n + 1, n + 1]


def test_paper_like_onevision_count():
    """OneVision-0.5B's tower shape (729 patches, 26 layers, ``full`` of layer -1), tiny width."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=16, num_hidden_layers=26, num_attention_heads=1, image_size=384, patch_size=14
    )
    text = Qwen2Config(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1)
    model = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(vision_config=vision, text_config=text))
    adapter = find_adapter(model)
    assert adapter.num_image_tokens(model) == 729
    crossget_cli.patch(model, vision_r=14)
    assert adapter.num_image_tokens(model) == 730 - 26 * 14 == 366
    # 768 x 768: base + 2 x 2 grid tiles
    assert num_image_tokens(model, [[768, 768]]) == [366 + 4 * 367]


@pytest.mark.parametrize("kind", BUILDERS)
def test_every_tile_is_reduced_alone_with_the_same_schedule(kind):
    model = crossget_cli.patch(BUILDERS[kind](), vision_r=[5, 0, 3, 2])
    adapter = find_adapter(model)
    px, sizes = batch(model, [(64, 64), (32, 48)])
    with trace_reduction() as trace, torch.no_grad():
        adapter.image_features(model, px, sizes)
    tower = adapter.towers(model)[0]
    vision = [r for r in trace if r["modality"] == "vision"]
    assert [r["x"].shape[1] for r in vision] == tower.token_counts()[1:]
    assert {r["x"].shape[0] for r in vision} == {5 + 3}  # every tile of both images, one batch
    # a tile's features do not depend on the other tiles
    with torch.no_grad():
        alone = adapter.tile_features(model, px[0, 2:3])
        together = adapter.tile_features(model, px[0])
    torch.testing.assert_close(alone[0], together[2], atol=1e-5, rtol=1e-5)


def inputs_for(model, sizes=((64, 64), (32, 48), (32, 32)), seed=0):
    px, image_sizes = batch(model, list(sizes), seed)
    prompts = [PROMPT.format(question=q) for q in QUESTIONS[: len(sizes)]]
    return prepare_inputs(model, tiny_tokenizer(), prompts, px, image_sizes)


def reference_embeds(model, inputs):
    """The LLM's input embeddings by hand: text embeddings with the patched model's
    packed visual features written over the image tokens."""
    features = torch.cat(find_adapter(model).image_features(model, inputs["pixel_values"], inputs["image_sizes"]))
    embeds = model.get_input_embeddings()(inputs["input_ids"]).clone()
    mask = inputs["input_ids"] == model.config.image_token_id
    assert int(mask.sum()) == features.shape[0]
    embeds[mask] = features
    return embeds


@pytest.mark.parametrize("kind", BUILDERS)
def test_generate_matches_features_fed_by_hand(kind):
    """Greedy and sampled generation of the patched model (a left-padded batch of
    5-, 3- and 2-tile images) equal the unpatched model generating from the reduced
    features built by hand; the prefill logits are bit-identical."""
    model = crossget_cli.patch(BUILDERS[kind](), vision_r=2)
    inputs = inputs_for(model)
    assert (inputs["attention_mask"] == 0).any()
    reference = BUILDERS[kind]()
    with torch.inference_mode():
        embeds = reference_embeds(model, inputs)
        assert torch.equal(
            model(**inputs).logits, reference(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        )
    for sample in (False, True):
        kwargs = {"max_new_tokens": 5, "do_sample": sample, "top_k": 0, "pad_token_id": 0, "eos_token_id": None}
        torch.manual_seed(7)
        patched = model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :]
        torch.manual_seed(7)
        by_hand = reference.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], **kwargs)
        assert torch.equal(patched, by_hand), sample


@pytest.mark.parametrize("kind", BUILDERS)
def test_llm_cross_token_acts_in_prefill(kind):
    model = crossget_cli.patch(BUILDERS[kind](), vision_r=2)
    inputs = inputs_for(model, sizes=((64, 64), (32, 32)))
    with torch.no_grad():
        zero = model(**inputs).logits
        model.model.language_model.cross_text.normal_(std=0.5)
        assert not torch.allclose(model(**inputs).logits, zero)


@pytest.mark.parametrize("kind", BUILDERS)
def test_unpatch_is_exact(kind):
    model = BUILDERS[kind]()
    inputs = inputs_for(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(**inputs).logits
        crossget_cli.patch(model, vision_r=2)
        assert model(**inputs_for(model)).logits.shape[1] < before.shape[1]
        crossget_cli.unpatch(model)
        assert set(model.state_dict()) == set(state)
        assert torch.equal(model(**inputs).logits, before)


@pytest.mark.parametrize("kind", BUILDERS)
def test_flops_per_tile_follow_the_token_counts(kind):
    from crossget_cli.profile.flops import model_macs

    model = BUILDERS[kind]()
    original = model_macs(model).image_gmacs
    crossget_cli.patch(model, vision_r=3)
    with trace_reduction() as trace:
        reduced = model_macs(model).image_gmacs
    assert 0 < reduced < original
    tower = find_adapter(model).towers(model)[0]
    seen = [r["x"].shape for r in trace if r["modality"] == "vision"]
    assert [s[0] for s in seen] == [1] * 4 and [s[1] for s in seen] == tower.token_counts()[1:]  # one tile


@pytest.mark.parametrize("kind", BUILDERS)
def test_bad_input_is_one_clear_line(kind):
    model = BUILDERS[kind]()
    adapter = find_adapter(model)
    with pytest.raises(CrossGetError, match="merge no text tokens") as err:
        crossget_cli.patch(model, vision_r=2, text_r=2)
    assert "\n" not in str(err.value)
    crossget_cli.patch(model, vision_r=2)
    bad = [
        (pixels(4), None, "fits no grid"),  # 4 tiles: no pinpoint gives 1 + 3
        (pixels(3), torch.tensor([[64, 64]]), "needs 5 tiles"),  # a 64 x 64 image in 3 tiles
        (torch.randn(1, 5, 3, 48, 48), None, "takes \\[N, tiles, 3, 32, 32\\]"),  # tiles of the wrong size
    ]
    for px, sizes, message in bad:
        with pytest.raises(CrossGetError, match=message) as err:
            adapter.image_features(model, px, sizes)
        assert "\n" not in str(err.value)
    if kind == "onevision":
        with pytest.raises(CrossGetError, match="images only"):
            model.model.get_video_features(torch.randn(1, 2, 3, 32, 32))


def test_unreduced_model_needs_sizes_for_an_ambiguous_grid():
    """3 tiles are a 1 x 2 or a 2 x 1 grid: the spatial packing needs the image size."""
    model = tiny_onevision()
    with pytest.raises(CrossGetError, match="several grids"):
        find_adapter(model).image_features(model, pixels(3))
    crossget_cli.patch(model, vision_r=2)  # reduced tiles: the count is enough
    assert find_adapter(model).image_features(model, pixels(3))[0].shape[0] == num_image_tokens(model, [[32, 64]])[0]


# --------------------------------------------------------------------------- through --model and the CLI


def save_tiny(folder, kind="onevision"):
    model = BUILDERS[kind]()
    model.save_pretrained(str(folder))
    tiny_tokenizer().save_pretrained(str(folder))
    image_processor(model).save_pretrained(str(folder))
    return folder


def _image_files(folder, n, size=64):
    from PIL import Image

    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        array = (torch.rand(size, size, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def _answer_by_hand(loaded, image_path, question: str, template: str, max_new_tokens: int) -> str:
    """One question, batch 1, through the processor's own outputs (image sizes included)."""
    from PIL import Image

    processed = loaded.image_processor(images=Image.open(image_path).convert("RGB"), return_tensors="pt")
    model, tokenizer = loaded.model, loaded.tokenizer
    count = num_image_tokens(model, processed["image_sizes"])[0]
    ids = tokenizer(template.format(question=question).replace("<image>", "<image>" * count), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            pixel_values=processed["pixel_values"],
            image_sizes=processed["image_sizes"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_compress_and_eval_vqa_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from crossget_cli.adapters.llava_next.adapter import VQA_TEMPLATE
    from crossget_cli.cli.app import app
    from crossget_cli.loading.models import load_model

    original, reduced = str(save_tiny(tmp_path / "ov")), str(tmp_path / "ov-r3")
    runner = CliRunner()
    result = runner.invoke(app, ["compress", "-m", original, "-o", reduced, "--vision-r", "3", "--no-speed", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["report"]
    assert report["tokens_per_layer"]["vision"] == [17, 14, 11, 8, 5]  # per tile: 16 patches + the cross slot
    assert report["tokens_per_layer"]["text"] == [5] * 3  # per tile into the LLM (full strategy, layer -1)

    paths = _image_files(tmp_path, 3)  # 64 x 64: 1 + 4 tiles
    loaded = {m: load_model(m) for m in (original, reduced)}
    assert num_image_tokens(loaded[reduced].model, [[64, 64]]) == [5 + 4 * 6]
    truth = [_answer_by_hand(loaded[reduced], p, q, VQA_TEMPLATE, 3) for p, q in zip(paths, QUESTIONS)]
    truth_original = [_answer_by_hand(loaded[original], p, q, VQA_TEMPLATE, 3) for p, q in zip(paths, QUESTIONS)]
    truth[2] = "no such answer"  # the third question is answered wrongly
    rows = [{"image": p.name, "question": q, "answers": [a] * 10} for p, q, a in zip(paths, QUESTIONS, truth)]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    args = ["eval", "--task", "vqa", "--data", str(tmp_path / "q.jsonl"), "--max-new-tokens", "3", "--batch-size", "2"]
    result = runner.invoke(app, [*args, "-m", original, "-m", reduced, "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["results"]["vqa"]
    assert scores[reduced]["overall"] == pytest.approx(200 / 3, abs=0.01)
    # the original answers as the processor's image sizes make it (square images: the grid's aspect ratio)
    expected = 100 * sum(a == t for a, t in zip(truth_original[:2], truth[:2])) / 3
    assert scores[original]["overall"] == pytest.approx(expected, abs=0.01)
