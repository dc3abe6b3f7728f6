"""CUDA-graph capture for ``crossget profile --cuda-graphs``: refused clearly
without CUDA (CPU tests), and on a GPU a replay equals the eager forward."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.cli.app import app
from crossget_cli.errors import CrossGetError
from crossget_cli.profile.cuda_graphs import capture_graph, require_cuda_graphs
from crossget_cli.profile.speed import ProfileConfig, check_cuda_graphs, profile_model
from tiny_models import openclip_tiny

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
runner = CliRunner()


def test_capture_refuses_a_cpu_tensor():
    with pytest.raises(CrossGetError, match="need a CUDA device") as info:
        capture_graph(lambda x: x * 2, torch.ones(2, 3))
    assert "--device cuda" in info.value.hint


def test_capture_refuses_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CrossGetError, match="CUDA is not available") as info:
        require_cuda_graphs("cuda")
    assert info.value.hint
    with pytest.raises(CrossGetError, match="CUDA is not available"):
        ProfileConfig(device="cuda", cuda_graphs=True)


def test_profile_config_refuses_cpu_and_compile():
    with pytest.raises(CrossGetError, match="need a CUDA device"):
        ProfileConfig(cuda_graphs=True)
    with pytest.raises(CrossGetError, match="cannot be combined"):
        ProfileConfig(cuda_graphs=True, compile=True)
    with pytest.raises(CrossGetError, match="cannot be combined"):
        check_cuda_graphs("cuda", compile=True)
    assert ProfileConfig().to_dict()["cuda_graphs"] is False


def test_eager_report_records_the_mode():
    config = ProfileConfig(vision_r=[2], text_r=[0], towers="image", batch_sizes=[1], warmup=0, repeats=1, threads=1)
    data = json.loads(json.dumps(profile_model(openclip_tiny(), config).to_dict()))
    assert data["cuda_graphs"] is False and "CUDA graph" not in data["timing"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--cuda-graphs", "--device", "cpu"], "need a CUDA device"),
        (["--cuda-graphs"], "need a CUDA device"),  # --device defaults to cpu
        (["--cuda-graphs", "--compile", "--device", "cpu"], "cannot be combined"),
    ],
)
def test_cli_refuses_cuda_graphs_before_loading(tmp_path, args, expected):
    # The model does not exist: the option is refused before anything is loaded.
    missing, report = tmp_path / "missing.safetensors", tmp_path / "r.json"
    result = runner.invoke(app, ["profile", "-m", str(missing), *args, "-o", str(report)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "--cuda-graphs" in lines[0]
    assert not report.exists()


def test_help_names_the_option():
    result = runner.invoke(app, ["profile", "--help"])
    assert result.exit_code == 0 and "--cuda-graphs" in result.output


# --------------------------------------------------------------------------- GPU


def _tiny_on_cuda(method: str = "crossget") -> tuple:
    torch.manual_seed(0)
    model = crossget_cli.patch(openclip_tiny(), vision_r=4, text_r=3, method=method).cuda().eval()
    return model, find_adapter(model)


@needs_cuda
@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_replay_equals_eager(method):
    model, adapter = _tiny_on_cuda(method)
    inputs = adapter.inputs(model)
    makers = {
        "image": (adapter.encode_image, lambda seed: inputs.example_images(3, seed=seed)),
        # shorter captions move EOT: the pooled position is data, not shape
        "text": (adapter.encode_text, lambda seed: inputs.example_texts(3, length=16 - 3 * seed, seed=seed)),
    }
    for encode, make in makers.values():
        fn = lambda x, encode=encode: encode(model, x)  # noqa: E731
        graphed = capture_graph(fn, make(0).cuda())
        with torch.inference_mode():
            outputs = []
            for seed in (1, 2):  # new inputs through the same graph
                x = make(seed).cuda()
                expected = fn(x)
                got = graphed(x)
                outputs.append(got.clone())
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert graphed(make(1).cuda()) is got  # the static output, overwritten by each replay
            assert not torch.equal(outputs[0], outputs[1])


@needs_cuda
def test_replay_refuses_another_shape():
    model, adapter = _tiny_on_cuda()
    images = adapter.inputs(model).example_images
    graphed = capture_graph(lambda x: adapter.encode_image(model, x), images(2).cuda())
    with pytest.raises(CrossGetError, match="one input shape"):
        graphed(images(4).cuda())
    with pytest.raises(CrossGetError, match="one input shape"):
        graphed(images(2).cuda().half())


@needs_cuda
def test_cuda_graph_profile():
    config = ProfileConfig(
        vision_r=[4], text_r=[3], device="cuda", dtype="fp16", cuda_graphs=True, batch_sizes=[1, 2], warmup=1, repeats=2
    )
    report = profile_model(openclip_tiny(), config)
    data = report.to_dict()
    assert data["cuda_graphs"] is True and "CUDA graph replay" in data["timing"]
    run = report.runs[1]
    assert run.throughput["image"]["2"] > 0 and run.latency_ms["text"] > 0
    assert run.peak_memory_mb["image"] > 0 and run.matching_ms["image"] > 0
