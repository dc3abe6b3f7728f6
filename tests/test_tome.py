"""The ToMe baseline (``method="tome"``): bipartite soft matching against a
hand-worked example, and swept over every registered adapter: token counts,
bipartite plans, no cross tokens, exact unpatch."""

from __future__ import annotations

import copy

import pytest
import torch

import crossget_cli
from crossget_cli.adapters.registry import find_adapter, get_adapter, list_adapters
from crossget_cli.core import bipartite_matching, ensemble_merge, trace_reduction
from crossget_cli.errors import CrossGetError
from crossget_cli.profile.report import tokens_per_layer
from sweep import CASES, build, example_inputs, features, is_cross_token, same_computation_tolerance
from tiny_models import openclip_tiny


def test_bipartite_matching_hand_worked():
    # A = tokens 0, 2, 4 (0 is CLS, protected); B = tokens 1, 3, 5.
    # Token 2 is nearly token 1, token 4 is nearly token 5: r = 2 merges 2 -> 1
    # and 4 -> 5 (the strongest edges); r = 1 merges only the stronger, 4 -> 5.
    metric = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0.2, 0], [0, 0, 1.0, 0], [0, 0, 0.05, 1.0], [0, 0, 0, 1.0]]])
    protected = torch.tensor([[0]])
    plan = bipartite_matching(metric, 2, protected)
    assert sorted(zip(plan.src_idx[0].tolist(), plan.dst_idx[0].tolist())) == [(2, 1), (4, 5)]
    assert plan.keep_idx.tolist() == [[0, 1, 3, 5]]
    assert bipartite_matching(metric, 1, protected).src_idx.tolist() == [[4]]

    # The merge is ToMe's size-weighted average: sizes (1, 3) -> (x_s + 3 x_d) / 4.
    x = torch.arange(6.0).view(1, 6, 1)
    sizes = torch.tensor([[[1.0], [3.0], [1.0], [1.0], [1.0], [1.0]]])
    merged, new_sizes, _ = ensemble_merge(x, sizes, plan)
    assert merged[0, :, 0].tolist() == pytest.approx([0.0, (2 * 1 + 1 * 3) / 4, 3.0, (4 + 5) / 2])
    assert new_sizes[0, :, 0].tolist() == [1.0, 4.0, 1.0, 2.0]


def test_protected_tokens_are_kept():
    gen = torch.Generator().manual_seed(1)
    metric = torch.randn(3, 12, 8, generator=gen)
    eot = torch.tensor([3, 6, 11])
    protected = torch.stack([torch.zeros(3, dtype=torch.long), eot], dim=1)
    from crossget_cli.core import clamp_r

    r = clamp_r(5, 12, 2, bipartite=True)
    assert r == 4  # 6 even positions, of which 2 may be protected
    plan = bipartite_matching(metric, r, protected)
    for i in range(3):
        touched = set(plan.src_idx[i].tolist()) | set(plan.dst_idx[i].tolist())
        assert not touched & {0, int(eot[i])}


VISION_R, TEXT_R = [4, 3, 2, 9], [2, 2, 0, 9]

#: ToMe's token counts for VISION_R / TEXT_R by hand, keyed by the tokens
#: entering the tower (ToMe has no cross slot) and the protected count P:
#: CLS (vision; P = 1), SOT/[CLS] and EOT (text; P = 2); SigLIP has no CLS
#: (vision P = 0, text P = 1: the pooled last token). A step of T tokens removes
#: at most min((T - P) // 2, (T + 1) // 2 - P): bipartite sources are the even positions.
HAND_COUNTS = {
    # every tiny ViT: 16 patches + CLS; 8 -> min(7 // 2, 9 // 2 - 1) = 3 of the last r = 9
    ("vision", 17, 1): [17, 13, 10, 8, 5],
    # CLIP's context; 12 -> min(10 // 2, 13 // 2 - 2) = 4 of the last r = 9 (complete-graph clamping: 5)
    ("text", 16, 2): [16, 14, 12, 12, 8],
    # BLIP's context (35); 31 -> min(29 // 2, 32 // 2 - 2) = 14: r = 9 unclamped
    ("text", 35, 2): [35, 33, 31, 31, 22],
    # SigLIP's 16 patches, no CLS: 16 -> min(16 // 2, 17 // 2) = 8 (r = 4), 12 -> 6 (r = 3), 9 -> 4 (r = 2),
    # 7 -> min(7 // 2, 8 // 2) = 3 of the last r = 9
    ("vision", 16, 0): [16, 12, 9, 7, 4],
    # SigLIP's context, the last token protected: 12 -> min(11 // 2, 13 // 2 - 1) = 5 of the last r = 9
    ("text", 16, 1): [16, 14, 12, 12, 7],
}
#: LLaVA's LLM receives the hidden state of vision_feature_layer = -2 (the
#: output of block 2 of 4: 8 tokens), less CLS.
LLAVA_VISUAL_TOKENS = 7


def _assert_bipartite(plan, rows, protect_first: bool = True):
    """ToMe's plan: sources at even positions merge into odd ones (sets A and
    B), token 0 is untouched (when it is CLS/SOT), the merge is a plain sum (no
    CrossGET weights)."""
    assert plan.source_weight is None
    src, dst = plan.src_idx[rows], plan.dst_idx[rows]
    assert bool((src % 2 == 0).all()) and bool((dst % 2 == 1).all())
    assert not protect_first or not bool((src == 0).any())


@pytest.mark.parametrize("adapter_name,model_name", CASES)
def test_tome_on_every_adapter(adapter_name, model_name):
    """ToMe runs on every registered family: no cross tokens, bipartite plans,
    the hand-worked token counts, with r = 0 the original computation, and an
    exact unpatch."""
    model = build(adapter_name, model_name)
    pristine = copy.deepcopy(model)
    adapter = find_adapter(model)
    images, texts = example_inputs(model)
    keys = set(model.state_dict())
    classes = {name: type(m) for name, m in model.named_modules()}
    before = features(pristine, images, texts)
    reduced = adapter.reduces

    crossget_cli.patch(model, vision_r=VISION_R, text_r=TEXT_R if "text" in reduced else 0, method="tome")
    assert set(model.state_dict()) == keys  # ToMe has no cross tokens
    assert not any(is_cross_token(name) for name, _ in model.named_parameters())
    with trace_reduction() as trace:
        features(model, images, texts)
    towers = [t for t in adapter.towers(model) if t.blocks and t.modality in reduced]
    assert towers
    for tower in towers:
        expected = HAND_COUNTS[(tower.modality, tower.num_tokens - 1, tower.num_protected - 1)]
        assert tower.token_counts() == expected
        assert tokens_per_layer(model)[tower.modality] == expected
        records = [r for r in trace if r["modality"] == tower.modality]
        assert [r["x"].shape[1] for r in records] == expected[1:]
        # caption 1 is padded, and padding-aware families merge padding anywhere
        rows = [0, 1, 2] if tower.modality == "vision" else [0, 2]
        for record in records:
            assert record["cross_in"] is None
            if record["plan"] is not None:
                _assert_bipartite(record["plan"], rows, tower.protect_first)
        assert sum(r["plan"] is not None for r in records) == sum(r > 0 for r in tower.schedule)
    if adapter_name == "llava":
        assert adapter.num_image_tokens(model) == LLAVA_VISUAL_TOKENS
        with torch.no_grad():
            assert adapter.image_features(model, images).shape[1] == LLAVA_VISUAL_TOKENS

    crossget_cli.patch(model, vision_r=0, text_r=0, method="tome")
    nothing_merged = features(model, images, texts)
    for key in before:
        torch.testing.assert_close(nothing_merged[key], before[key], **same_computation_tolerance(adapter_name))

    crossget_cli.unpatch(model)
    assert set(model.state_dict()) == keys
    assert {name: type(m) for name, m in model.named_modules()} == classes
    after = features(model, images, texts)
    for key in before:
        assert torch.equal(after[key], before[key])


@pytest.mark.parametrize("adapter_name", [name for name in list_adapters() if "text" not in get_adapter(name).reduces])
def test_tome_refuses_a_tower_the_family_does_not_reduce(adapter_name):
    """LLaVA merges vision tokens only: a text r is a clear error for ToMe too."""
    model = build(adapter_name, next(iter(get_adapter(adapter_name).tiny_models())))
    with pytest.raises(CrossGetError, match="merge no text tokens"):
        crossget_cli.patch(model, vision_r=2, text_r=2, method="tome")


def test_switching_methods_adds_and_drops_cross_tokens():
    model = openclip_tiny()
    crossget_cli.patch(model, vision_r=2, method="tome")
    assert not any("cross" in k for k in model.state_dict())
    crossget_cli.patch(model, vision_r=2)
    assert {k for k in model.state_dict() if "cross" in k} == {"visual.transformer.cross_image", "transformer.cross_text"}
    crossget_cli.patch(model, vision_r=2, method="tome")
    assert not any("cross" in k for k in model.state_dict())


def test_tome_from_the_cli(tmp_path):
    import json

    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from crossget_cli.cli.app import app
    from tiny_models import OPENAI_TINY

    runner = CliRunner()
    save_file(openclip_tiny(OPENAI_TINY).state_dict(), str(tmp_path / "clip.safetensors"))
    result = runner.invoke(
        app,
        [
            "compress",
            "-m",
            str(tmp_path / "clip.safetensors"),
            "--vision-r",
            "4",
            "--method",
            "tome",
            "-o",
            str(tmp_path / "out"),
            "--no-speed",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["recipe"]["reduction"]["method"] == "tome"
    assert data["report"]["tokens_per_layer"]["vision"] == [17, 13, 9, 5, 3]
    assert crossget_cli.reduction_config(crossget_cli.load(str(tmp_path / "out"))).method == "tome"
    sweep = ["profile", "-m", str(tmp_path / "clip.safetensors"), "--vision-r", "4", "--method", "tome", "--towers", "image"]
    result = runner.invoke(app, [*sweep, "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert [run["label"] for run in json.loads(result.stdout)["runs"]] == ["original", "tome_rv4_rl0"]
    both = [*sweep[:6], "crossget,tome", *sweep[7:], "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--json"]
    result = runner.invoke(app, both)
    assert result.exit_code == 0, result.output
    assert [run["label"] for run in json.loads(result.stdout)["runs"]] == ["original", "rv4_rl0", "tome_rv4_rl0"]
    result = runner.invoke(app, [*sweep[:6], "tome,crossget,nope", *sweep[7:]])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "error: unknown method 'nope' (choose crossget or tome, or both: crossget,tome)"
    ]
    # A ToMe export is profiled with ToMe unless --method says otherwise.
    exported = ["profile", "-m", str(tmp_path / "out"), "--towers", "image", "--batch-sizes", "1", "--repeats", "1"]
    for extra, labels in (([], ["original", "tome_rv4_rl0"]), (["--method", "crossget"], ["original", "rv4_rl0"])):
        result = runner.invoke(app, [*exported, "--warmup", "0", *extra, "--json"])
        assert result.exit_code == 0, result.output
        assert [run["label"] for run in json.loads(result.stdout)["runs"]] == labels
