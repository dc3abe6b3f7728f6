"""The ToMe baseline (``method="tome"``): bipartite soft matching against a
hand-worked example, token counts, no cross tokens, exact unpatch."""

from __future__ import annotations

import copy

import pytest
import torch

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.core import bipartite_matching, ensemble_merge, trace_reduction
from tiny_models import TINY_MODELS


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


@pytest.mark.parametrize("adapter_name,model_name", [("openclip", "openclip-CLIP"), ("hf-clip", "CLIPModel")])
def test_tome_patch_counts_tokens_and_unpatches(adapter_name, model_name):
    model = TINY_MODELS[adapter_name][model_name]()
    pristine = copy.deepcopy(model)
    adapter = find_adapter(model)
    spec = adapter.inputs(model)
    images, texts = spec.example_images(2, seed=1), spec.example_texts(2, length=9, seed=2)
    keys = set(model.state_dict())

    crossget_cli.patch(model, vision_r=[4, 3, 2, 9], text_r=2, method="tome")
    assert set(model.state_dict()) == keys  # ToMe has no cross tokens
    with torch.no_grad(), trace_reduction() as trace:
        adapter.encode_image(model, images)
        adapter.encode_text(model, texts)
    vision = [r["x"].shape[1] for r in trace if r["modality"] == "vision"]
    text = [r["x"].shape[1] for r in trace if r["modality"] == "text"]
    assert vision == [13, 10, 8, 5]  # 17 tokens, CLS protected; last r = 9 clamped to (8 - 1) // 2
    assert text == [14, 12, 10, 8]  # 16 tokens, SOT and EOT protected
    from crossget_cli.profile.report import tokens_per_layer

    assert tokens_per_layer(model) == {"vision": [17, *vision], "text": [16, *text]}

    crossget_cli.patch(model, vision_r=0, text_r=0, method="tome")
    with torch.no_grad():
        assert torch.allclose(adapter.encode_image(model, images), adapter.encode_image(pristine, images), atol=1e-5)
    crossget_cli.unpatch(model)
    with torch.no_grad():
        assert torch.equal(adapter.encode_image(model, images), adapter.encode_image(pristine, images))


def test_switching_methods_adds_and_drops_cross_tokens():
    model = TINY_MODELS["openclip"]["openclip-CLIP"]()
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
    from test_export import OPENAI_TINY
    from tiny_models import openclip_tiny

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
