"""The library side of ``crossget profile`` on tiny models. Timing values are
never asserted, only their presence, their shape and the ratios between them."""

from __future__ import annotations

import json

import pytest
import torch

import crossget_cli
from crossget_cli.errors import CrossGetError
from crossget_cli.profile.flops import model_macs
from crossget_cli.profile.plot import plot_report
from crossget_cli.profile.results import SCHEMA_VERSION, ProfileReport
from crossget_cli.profile.speed import ProfileConfig, profile_model, tokens_per_layer
from tiny_models import TINY, hf_tiny, hf_tiny_config, openclip_tiny

FAST = dict(batch_sizes=[1, 2], warmup=1, repeats=2, threads=1)

RUN_KEYS = {
    "label", "method", "vision_r", "text_r", "image_gmacs", "text_gmacs", "gmacs", "macs_by_kind_gmacs",
    "tokens_per_layer", "throughput", "throughput_spread", "time_ms", "latency_ms", "peak_memory_mb",
    "matching_ms", "matching_fraction", "ratios",
}  # fmt: skip
TOP_KEYS = {
    "schema_version", "model", "device", "dtype", "threads", "compile", "batch_sizes", "towers", "warmup", "repeats",
    "profile_batch", "memory_method", "matching_method", "runs",
}  # fmt: skip


@pytest.fixture(scope="module")
def report():
    model = openclip_tiny()
    config = ProfileConfig(vision_r=[2, 4], text_r=[0, 3], **FAST)
    steps = []
    result = profile_model(model, config, progress=lambda done, total, what: steps.append((done, total, what)))
    result.steps = steps
    return result


def test_one_run_per_setting_plus_the_original(report):
    settings = [(r.vision_r, r.text_r, r.method) for r in report.runs]
    assert settings == [(0, 0, "none"), (2, 0, "crossget"), (2, 3, "crossget"), (4, 0, "crossget"), (4, 3, "crossget")]
    assert report.runs[0].label == "original"
    assert report.towers == ["image", "text"]
    assert report.threads == 1


def test_progress_counts_up_to_its_total(report):
    done = [d for d, _, _ in report.steps]
    assert done == list(range(1, len(done) + 1))
    assert all(total == len(done) for _, total, _ in report.steps)


def test_json_schema(report):
    data = json.loads(json.dumps(report.to_dict()))
    assert TOP_KEYS <= set(data)
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["device"] == "cpu" and data["dtype"] == "fp32" and data["batch_sizes"] == [1, 2]
    assert data["memory_method"].startswith("cpu:")
    first = data["runs"][0]
    assert (first["vision_r"], first["text_r"], first["method"]) == (0, 0, "none")
    for run in data["runs"]:
        assert RUN_KEYS <= set(run)
        assert set(run["tokens_per_layer"]) == {"vision", "text"}
        for tower in ("image", "text", "pair"):
            assert set(run["throughput"][tower]) == {"1", "2"}
            assert all(v > 0 for v in run["throughput"][tower].values())
            assert set(run["throughput_spread"][tower]["2"]) == {"min", "q1", "q3", "max"}
            assert run["latency_ms"][tower] > 0
            assert set(run["ratios"]["throughput"][tower]) == {"1", "2"}
        assert set(run["peak_memory_mb"]) == {"image", "text"}
        assert all(v is not None and v >= 0 for v in run["peak_memory_mb"].values())
        assert set(run["matching_ms"]) == set(run["matching_fraction"]) == {"image", "text", "pair"}


def test_ratios_are_consistent_with_the_numbers(report):
    base = report.runs[0]
    for run in report.runs:
        r = run.ratios
        assert r["gmacs"] == pytest.approx(run.gmacs / base.gmacs)
        assert r["image_gmacs"] == pytest.approx(run.image_gmacs / base.image_gmacs)
        assert r["text_gmacs"] == pytest.approx(run.text_gmacs / base.text_gmacs)
        for tower, per_batch in run.throughput.items():
            for b, value in per_batch.items():
                assert r["throughput"][tower][b] == pytest.approx(value / base.throughput[tower][b])
        for tower, value in run.latency_ms.items():
            assert r["latency"][tower] == pytest.approx(base.latency_ms[tower] / value)
        # pair throughput/latency come from the same repeats as the towers'
        assert run.latency_ms["pair"] == pytest.approx(run.time_ms["pair"]["1"])
        assert run.throughput["image"]["2"] == pytest.approx(2000 / run.time_ms["image"]["2"])
        spread = run.throughput_spread["image"]["2"]
        assert spread["min"] <= spread["q1"] <= run.throughput["image"]["2"] <= spread["q3"] <= spread["max"]
    assert base.ratios["gmacs"] == 1.0
    assert all(v == 1.0 for v in base.ratios["latency"].values())


def test_macs_and_tokens_match_the_patched_models(report):
    model = openclip_tiny()
    for run in report.runs[1:]:
        patched = crossget_cli.patch(openclip_tiny(), vision_r=run.vision_r, text_r=run.text_r)
        assert run.gmacs == pytest.approx(model_macs(patched).gmacs)
        assert run.tokens_per_layer == tokens_per_layer(patched)
    assert report.runs[0].gmacs == pytest.approx(model_macs(model).gmacs)
    grid = (TINY["image_resolution"] // TINY["vision_patch_size"]) ** 2
    assert report.runs[0].tokens_per_layer == {"vision": [grid + 1] * 5, "text": [TINY["context_length"]] * 5}
    rv4_rl3 = report.runs[4]
    assert rv4_rl3.tokens_per_layer == {"vision": [18, 14, 10, 6, 4], "text": [17, 14, 11, 8, 6]}
    assert rv4_rl3.gmacs < report.runs[3].gmacs < report.runs[1].gmacs < report.runs[0].gmacs


def test_matching_time_only_where_tokens_are_merged(report):
    base, rv2_rl0, rv2_rl3 = report.runs[0], report.runs[1], report.runs[2]
    assert base.matching_ms == {"image": 0.0, "text": 0.0, "pair": 0.0}
    assert rv2_rl0.matching_ms["image"] > 0 and rv2_rl0.matching_ms["text"] == 0.0
    assert rv2_rl3.matching_ms["text"] > 0
    for run in report.runs:
        assert all(0.0 <= f <= 1.0 for f in run.matching_fraction.values())


def test_model_is_left_unchanged_and_its_patch_state_removed_for_the_original():
    model = crossget_cli.patch(openclip_tiny(), vision_r=3, text_r=2)
    with torch.no_grad():
        model.visual.transformer.cross_image.normal_()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = ProfileConfig(vision_r=[3], text_r=[2], towers="image", **FAST)
    result = profile_model(model, config)
    assert crossget_cli.reduction_config(model).to_dict() == {"method": "crossget", "vision_r": 3, "text_r": 2}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    grid = (TINY["image_resolution"] // TINY["vision_patch_size"]) ** 2
    assert result.runs[0].tokens_per_layer["vision"] == [grid + 1] * 5
    assert result.runs[1].tokens_per_layer["vision"][0] == grid + 2


def test_single_tower_model_and_tower_selection():
    from transformers import CLIPVisionModel

    model = CLIPVisionModel(hf_tiny_config().vision_config).eval()
    result = profile_model(model, ProfileConfig(vision_r=[2], text_r=[0], **FAST))
    assert result.towers == ["image"]
    for run in result.runs:
        assert set(run.throughput) == {"image"} and run.text_gmacs is None
        assert set(run.latency_ms) == {"image"}
    with pytest.raises(CrossGetError):
        profile_model(model, ProfileConfig(vision_r=[2], text_r=[0], towers="text", **FAST))


def test_hf_model_text_only_with_per_layer_r():
    config = ProfileConfig(vision_r=[0], text_r=[[1, 2, 3, 4]], towers="text", **FAST)
    result = profile_model(hf_tiny(), config)
    assert result.towers == ["text"]
    run = result.runs[1]
    assert run.text_r == (1, 2, 3, 4) and run.label == "rv0_rl[1,2,3,4]"
    assert run.tokens_per_layer["text"] == [17, 16, 14, 11, 7]
    assert set(run.throughput) == {"text"}
    assert run.to_dict()["text_r"] == [1, 2, 3, 4]


def test_plot_writes_a_png(report, tmp_path):
    path = tmp_path / "profile.png"
    plot_report(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accuracy = {"original": 80.0, (2, 0): 79.5, "rv4_rl3": {"TR@1": 70.0, "IR@1": 60.0}}
    path2 = tmp_path / "with_accuracy.png"
    plot_report(report.to_dict(), path2, accuracy=accuracy)
    assert path2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_round_trips_through_json(report):
    data = json.loads(json.dumps(report.to_dict()))
    again = ProfileReport.from_dict(data)
    assert json.loads(json.dumps(again.to_dict())) == data
    with pytest.raises(CrossGetError):
        ProfileReport.from_dict({**data, "schema_version": 99})


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch_sizes=[0]),
        dict(batch_sizes=[]),
        dict(batch_sizes=[1, -4]),
        dict(device="tpu"),
        dict(device="cpu:1"),
        dict(dtype="fp64"),
        dict(vision_r=[-1]),
        dict(text_r=-2),
        dict(vision_r=[[2, -1, 2, 2]]),
        dict(vision_r=[]),
        dict(vision_r=["16"]),
        dict(threads=0),
        dict(warmup=-1),
        dict(repeats=0),
        dict(towers="audio"),
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(CrossGetError) as info:
        ProfileConfig(**kwargs)
    assert info.value.hint


def test_cuda_requested_but_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(CrossGetError, match="CUDA is not available"):
            ProfileConfig(device=device)


def test_config_normalises_values():
    config = ProfileConfig(vision_r=16, text_r=[0, 6, 6], batch_sizes=[32, 1, 32], dtype="bfloat16", device="CPU")
    assert config.vision_r == (16,) and config.text_r == (0, 6)
    assert config.batch_sizes == (32, 1)
    assert config.dtype == "bf16" and config.torch_dtype is torch.bfloat16
    assert config.device == "cpu"
    assert config.settings() == [(16, 0), (16, 6)]
    with pytest.raises(Exception):
        config.dtype = "fp32"  # frozen


def test_bf16_runs():
    config = ProfileConfig(vision_r=[4], text_r=[3], dtype="bf16", batch_sizes=[2], warmup=0, repeats=1, threads=1)
    result = profile_model(openclip_tiny(), config)
    assert result.dtype == "bf16" and len(result.runs) == 2
    assert result.runs[1].gmacs < result.runs[0].gmacs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_profile():
    config = ProfileConfig(vision_r=[4], text_r=[3], device="cuda", dtype="fp16", **FAST)
    result = profile_model(openclip_tiny(), config)
    assert result.device.startswith("cuda") and result.memory_method.startswith("cuda:")
    run = result.runs[1]
    assert run.peak_memory_mb["image"] > 0 and run.matching_ms["image"] > 0


def test_methods_compared_in_one_run():
    """``method="crossget,tome"``: every setting with each method, interleaved with
    one original; each run's MACs and token counts are those of the same model
    patched alone with that method (counted independently here)."""
    model = openclip_tiny()
    config = ProfileConfig(vision_r=[0, 4], text_r=[0], towers="image", method="crossget, tome,crossget", **FAST)
    assert config.method == "crossget,tome" and config.methods == ("crossget", "tome")
    report = profile_model(model, config)
    assert [(r.method, r.vision_r) for r in report.runs] == [
        ("none", 0),
        ("crossget", 0),
        ("crossget", 4),
        ("tome", 0),
        ("tome", 4),
    ]
    assert [r.label for r in report.runs] == ["original", "rv0_rl0", "rv4_rl0", "tome_rv0_rl0", "tome_rv4_rl0"]
    for run in report.runs[1:]:
        alone = crossget_cli.patch(openclip_tiny(), vision_r=run.vision_r, method=run.method)
        assert run.image_gmacs == pytest.approx(model_macs(alone).image_gmacs, rel=1e-9)
        assert run.tokens_per_layer == tokens_per_layer(alone)
        assert set(run.throughput["image"]) == {"1", "2"}
    assert report.to_dict()["runs"][3]["method"] == "tome"


@pytest.mark.parametrize("method", ["foo", "crossget,foo", "", ","])
def test_unknown_methods_are_refused(method):
    with pytest.raises(CrossGetError, match="unknown method"):
        ProfileConfig(method=method)
