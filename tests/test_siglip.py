"""SigLIP (open_clip and transformers) and timm ViTs: the no-CLS protected set's
token counts against a formula written here, r = 0 and unpatch exactness,
size-biased MAP pooling against implementations written here, compress -> load
round trips, retrieval on real files, the siglip objective, timm classifiers,
and bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image
from sweep import example_inputs, features, randomise_cross
from tiny_models import RGB
from typer.testing import CliRunner

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.siglip import tiny
from crossget_cli.adapters.contrastive import clip_losses
from crossget_cli.adapters.siglip.adapter import sigmoid_loss
from crossget_cli.adapters.timm_vit.tiny import tiny_vit
from crossget_cli.cli.app import app
from crossget_cli.core import trace_reduction
from crossget_cli.errors import CrossGetError

runner = CliRunner()
MODELS = {
    "openclip": tiny.openclip_siglip_tiny,
    "hf": tiny.hf_siglip_tiny,
    "hf-eager": lambda: tiny.hf_siglip_tiny("eager"),
}
VISION_R, TEXT_R = [5, 0, 3, 9], [4, 4, 4, 30]


def no_cls_counts(tokens: int, rs: list[int], protected: int) -> list[int]:
    """The README's formula: a layer with T tokens removes min(r, floor((T - P) / 2)),
    P = 1 for vision (the cross slot) and 2 for text (the pooled last token, the slot)."""
    counts = [tokens]
    for r in rs:
        counts.append(counts[-1] - min(r, (counts[-1] - protected) // 2))
    return counts


def build(name: str):
    torch.manual_seed(0)
    return MODELS[name]()


@pytest.mark.parametrize("name", list(MODELS))
def test_token_counts_follow_the_no_cls_formula(name):
    model = build(name)
    images, texts = example_inputs(model)
    crossget_cli.patch(model, vision_r=VISION_R, text_r=TEXT_R)
    with trace_reduction() as trace:
        features(model, images, texts)
    # 16 patches + the cross slot; 16 text tokens + the cross slot
    expected = {"vision": no_cls_counts(17, VISION_R, 1), "text": no_cls_counts(17, TEXT_R, 2)}
    assert expected == {"vision": [17, 12, 12, 9, 5], "text": [17, 13, 9, 6, 4]}
    for modality, counts in expected.items():
        assert [r["x"].shape[1] for r in trace if r["modality"] == modality] == counts[1:]
    assert {t.modality: t.token_counts() for t in find_adapter(model).towers(model)} == expected
    # token 0 is an ordinary token: it is merged away somewhere in the batch
    plans = [r["plan"] for r in trace if r["plan"] is not None and r["modality"] == "vision"]
    assert any(bool((p.src_idx == 0).any()) for p in plans)
    for record in (r for r in trace if r["plan"] is not None):
        t = record["plan"].num_tokens
        assert not bool((record["plan"].src_idx == t - 1).any())  # the cross slot
        if record["modality"] == "text":
            assert not bool((record["plan"].src_idx == t - 2).any())  # the pooled last token


@pytest.mark.parametrize("name", list(MODELS))
def test_r_zero_is_the_original_and_unpatch_is_exact(name):
    model = build(name)
    images, texts = example_inputs(model)
    before = features(model, images, texts)
    for method in ("tome", "crossget"):
        crossget_cli.patch(model, vision_r=0, text_r=0, method=method)
        randomise_cross(model)
        now = features(model, images, texts)
        assert torch.equal(now["text"], before["text"])  # r = 0 text runs the original code
        if method == "tome":  # no cross slot: the computation itself
            assert torch.equal(now["image"], before["image"])
    crossget_cli.patch(model, vision_r=3, text_r=2)
    randomise_cross(model)
    assert not torch.equal(features(model, images, texts)["image"], before["image"])
    crossget_cli.unpatch(model)
    after = features(model, images, texts)
    assert all(torch.equal(after[k], before[k]) for k in before)


def _merged_tokens(model, images):
    """The last vision block's output (cross slot dropped) and the sizes of a
    patched model's forward, from the trace."""
    with trace_reduction() as trace, torch.no_grad():
        pooled = find_adapter(model).encode_image(model, images)
    last = [r for r in trace if r["modality"] == "vision"][-1]
    keep = last["x"].shape[1] - (crossget_cli.reduction_config(model).method == "crossget")
    return pooled, last["x"][:, :keep], last["sizes"][:, :keep, 0]


@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_hf_map_head_by_hand(method):
    """transformers' pooling head on the merged tokens, written out: one probe
    query, per-head softmax of q.k / sqrt(d) + log(size), out-projection, the
    residual MLP."""
    model = build("hf")
    crossget_cli.patch(model, vision_r=[3, 3, 3, 3], method=method)
    randomise_cross(model)
    images, _ = example_inputs(model)
    pooled, x, sizes = _merged_tokens(model, images)
    assert sizes.sum(dim=1).tolist() == [16.0] * 3 and x.shape[1] == 16 - 12
    vision = model.vision_model
    head = vision.head
    with torch.no_grad():
        x = vision.post_layernorm(x)
        d = x.shape[-1]
        heads = head.attention.num_heads
        w, b = head.attention.in_proj_weight, head.attention.in_proj_bias
        q = (head.probe[0] @ w[:d].t() + b[:d]).view(heads, -1)  # [H, d_h]
        k = (x @ w[d : 2 * d].t() + b[d : 2 * d]).view(3, -1, heads, d // heads)  # [N, T, H, d_h]
        v = (x @ w[2 * d :].t() + b[2 * d :]).view(3, -1, heads, d // heads)
        logits = torch.einsum("hc,nthc->nht", q, k) / (d // heads) ** 0.5 + sizes.log()[:, None, :]
        out = torch.einsum("nht,nthc->nhc", logits.softmax(dim=-1), v).reshape(3, d)
        out = head.attention.out_proj(out)
        expected = out + head.mlp(head.layernorm(out))
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


def test_timm_map_head_equals_attending_to_repeated_tokens():
    """Proportional attention in open_clip SigLIP's MAP head: pooling merged
    tokens with log(size) equals pooling the token list in which each merged
    token appears size times."""
    model = build("openclip")
    crossget_cli.patch(model, vision_r=[3, 3, 3, 3])
    randomise_cross(model)
    images, _ = example_inputs(model)
    pooled, x, sizes = _merged_tokens(model, images)
    trunk = model.visual.trunk
    with torch.no_grad():
        x = trunk.norm(x)
        for i in range(3):
            repeated = x[i].repeat_interleave(sizes[i].round().long(), dim=0)[None]
            torch.testing.assert_close(pooled[i : i + 1], trunk.attn_pool(repeated), rtol=1e-5, atol=1e-5)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "a", "square", "picture", "that", "is", "mostly", *RGB]
    vocab = {w: i for i, w in enumerate(words)}
    vocab["</s>"] = 63
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 63)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def save_openclip_siglip(folder):
    """A tiny open_clip SigLIP folder as open_clip saves one, its tokenizer (an
    offline word-level stand-in for SigLIP's SentencePiece) next to it."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = tiny.openclip_siglip_tiny()
    folder.mkdir(parents=True)
    _tokenizer().save_pretrained(str(folder / "tokenizer"))
    cfg = copy.deepcopy(tiny.OPENCLIP_TINY_CFG)
    cfg["text_cfg"].update(hf_tokenizer_name=str(folder / "tokenizer"), tokenizer_kwargs={"clean": "canonicalize"})
    preprocess = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}))
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return model


def save_hf_siglip(folder):
    from transformers import SiglipImageProcessor

    torch.manual_seed(0)
    model = tiny.hf_siglip_tiny()
    model.save_pretrained(str(folder))
    _tokenizer().save_pretrained(str(folder))
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return model


SAVERS = {"openclip": save_openclip_siglip, "hf": save_hf_siglip}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Four PNGs with two captions each, Karpathy-style JSON."""
    root = tmp_path_factory.mktemp("pictures")
    images = []
    for i, colour in enumerate(list(RGB)[:4]):
        picture = Image.new("RGB", (40, 48), RGB[colour])
        picture.paste((255, 255, 255), (5 * i, 5, 5 * i + 10, 20))
        picture.save(root / f"{colour}.png")
        sentences = [{"raw": f"a {colour} square."}, {"raw": f"a picture that is mostly {colour}"}]
        images.append({"filename": f"{colour}.png", "split": "test", "sentences": sentences})
    (root / "data.json").write_text(json.dumps({"images": images}))
    return root


@pytest.mark.parametrize("kind", list(SAVERS))
def test_compress_load_round_trip_and_retrieval(kind, pictures, tmp_path):
    SAVERS[kind](tmp_path / "model")
    out = tmp_path / "small"
    args = ["compress", "-m", str(tmp_path / "model"), "--vision-r", "3", "--text-r", "2", "-o", str(out), "--no-speed"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["report"]
    assert report["tokens_per_layer"] == {"vision": [17, 14, 11, 8, 5], "text": [17, 15, 13, 11, 9]}

    from crossget_cli.loading.models import load_model

    reference = load_model(str(tmp_path / "model")).model
    crossget_cli.patch(reference, vision_r=3, text_r=2)
    loaded = crossget_cli.load(str(out))
    assert type(loaded) is type(reference)
    images, texts = example_inputs(reference)
    ours, expected = features(loaded, images, texts), features(reference, images, texts)
    assert all(torch.equal(ours[k], expected[k]) for k in expected)

    data = ["--data", str(pictures / "data.json"), "--image-root", str(pictures), "--json"]
    result = runner.invoke(app, ["eval", "-m", str(tmp_path / "model"), "-m", str(out), "-t", "retrieval", *data])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["results"]["retrieval"]
    assert set(scores) == {str(tmp_path / "model"), str(out)}
    assert all(0 <= s["txt_r1"] <= 100 for s in scores.values())


def test_finetune_from_the_cli_trains_with_the_sigmoid_loss(pictures, tmp_path):
    save_hf_siglip(tmp_path / "model")
    data = ["--train-data", str(pictures / "data.json"), "--image-root", str(pictures), "--split", "test"]
    args = ["compress", "-m", str(tmp_path / "model"), "--vision-r", "2", "-o", str(tmp_path / "ft"), "--no-speed"]
    result = runner.invoke(app, [*args, "--finetune", *data, "--max-steps", "1", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert crossget_cli.reduction_config(crossget_cli.load(str(tmp_path / "ft"))).vision_r == 2


@pytest.mark.parametrize("name", ["openclip", "hf"])
def test_the_clip_objective_trains_siglip_with_its_sigmoid_loss(name):
    model = build(name)
    crossget_cli.patch(model, vision_r=3, text_r=2)
    randomise_cross(model)
    model.train()
    images, texts = example_inputs(model)
    first = clip_losses(model, images, texts)
    assert set(first) >= {"itc", "js", "total"} and float(first["js"]) > 0
    adapter = find_adapter(model)
    sigmoid = sigmoid_loss(first["image_features"], first["text_features"], adapter.logit_scale(model), adapter.logit_bias(model))
    torch.testing.assert_close(first["itc"], sigmoid)
    first["total"].backward()
    cross = {n: p.grad for n, p in model.named_parameters() if n.endswith(("cross_image", "cross_text"))}
    assert len(cross) == 2 and all(g is not None and bool(g.abs().sum() > 0) for g in cross.values())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        loss = clip_losses(model, images, texts)["total"]
        loss.backward()
        optimizer.step()
    assert float(clip_losses(model, images, texts)["total"]) < float(first["total"])


def test_the_family_contrastive_loss_is_transformers_sigmoid_loss():
    model = build("hf")
    images, texts = example_inputs(model)
    with torch.no_grad():
        expected = model(input_ids=texts, pixel_values=images, return_loss=True).loss
        image = model.get_image_features(pixel_values=images).pooler_output
        text = model.get_text_features(input_ids=texts).pooler_output
        ours = find_adapter(model).contrastive_loss(model, image, text)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("pool", ["token", "map"])
@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_timm_classifier(pool, method):
    from crossget_cli.profile.report import reduction_report
    from crossget_cli.profile.speed import ProfileConfig, profile_model

    torch.manual_seed(0)
    model = tiny_vit(class_token=pool == "token", global_pool=pool)
    crossget_cli.patch(model, vision_r=VISION_R, method=method)
    with trace_reduction() as trace, torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    cls, slot = int(pool == "token"), int(method == "crossget")
    if method == "tome":  # bipartite clamp: also at most the even positions less the protected ones
        counts = [16 + cls]
        for r in VISION_R:
            t = counts[-1]
            counts.append(t - min(r, (t - cls) // 2, (t + 1) // 2 - cls))
    else:
        counts = no_cls_counts(16 + cls + slot, VISION_R, cls + slot)
    assert [r["x"].shape[1] for r in trace] == counts[1:]
    assert find_adapter(model).towers(model)[0].token_counts() == counts
    report = reduction_report(model)
    assert report["tokens_per_layer"] == {"vision": counts} and report["gmacs_ratio"] < 1
    sweep = ProfileConfig(vision_r=[VISION_R], text_r=[0], batch_sizes=[1], warmup=0, repeats=1, towers="image", method=method)
    assert next(run.label for run in profile_model(model, sweep).runs) == "original"


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(CrossGetError, match="merge no text tokens"):
        crossget_cli.patch(tiny_vit(), vision_r=2, text_r=2)
    for model in (tiny_vit(), build("hf"), build("openclip")):
        with pytest.raises(CrossGetError, match="layers"):
            crossget_cli.patch(model, vision_r=[1, 2])
    model = crossget_cli.patch(build("hf"), vision_r=2, text_r=2)
    _, texts = example_inputs(model)
    with pytest.raises(CrossGetError, match="padding mask"):
        model.get_text_features(input_ids=texts, attention_mask=(texts != 0).long())
    registers = crossget_cli.patch  # a ViT with register tokens is refused, not run unpatched
    with pytest.raises(CrossGetError, match="register"):
        registers(tiny_vit(reg_tokens=2), vision_r=2)
    save_hf_siglip(tmp_path / "model")
    args = ["compress", "-m", str(tmp_path / "model"), "--vision-r", "1,2", "-o", str(tmp_path / "out"), "--no-speed"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "layers" in lines[0], result.stderr
