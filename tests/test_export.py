"""Loading every checkpoint format through the same path a user's takes,
compressing, exporting and reloading: outputs are bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import crossget_cli
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.errors import CrossGetError
from crossget_cli.export.compress import compress
from crossget_cli.loading.exported import load_exported
from crossget_cli.loading.models import load_model
from crossget_cli.loading.formats import openai_model_config
from tiny_models import OPENAI_TINY, TINY, hf_tiny, openclip_tiny


def _same_outputs(a, b):
    adapter = find_adapter(a)
    spec = adapter.inputs(a)
    images, texts = spec.example_images(2, seed=7), spec.example_texts(2, length=9, seed=8)
    with torch.no_grad():
        assert torch.equal(adapter.encode_image(a, images), adapter.encode_image(b, images))
        assert torch.equal(adapter.encode_text(a, texts), adapter.encode_text(b, texts))


def _randomise_cross(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "cross" in name:
                param.normal_(0, 0.3)


def _openclip_dir(tmp_path):
    model = openclip_tiny()
    cfg = openai_model_config(model.state_dict())
    cfg["text_cfg"]["heads"] = TINY["transformer_heads"]
    folder = tmp_path / "openclip-tiny"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder, model


def test_openclip_folder_round_trip(tmp_path):
    folder, original = _openclip_dir(tmp_path)
    loaded = load_model(str(folder))
    assert loaded.checkpoint_format == "open_clip"
    _same_outputs(loaded.model, original)

    result = compress(str(folder), tmp_path / "out", vision_r=4, text_r=3)
    _randomise_cross(result.model)  # export what a fine-tune would leave
    result = compress(str(folder), tmp_path / "out2", vision_r=[4, 4, 2, 2], text_r=3)
    reloaded = load_model(str(tmp_path / "out2")).model
    assert crossget_cli.reduction_config(reloaded).vision_r == (4, 4, 2, 2)
    _same_outputs(result.model, reloaded)
    files = sorted(p.name for p in (tmp_path / "out2").iterdir())
    assert files == ["crossget.yaml", "model.safetensors", "open_clip_config.json", "report.json"]


def test_hf_folder_round_trip_keeps_attention_implementation(tmp_path):
    original = hf_tiny()
    original.save_pretrained(tmp_path / "hf")
    loaded = load_model(str(tmp_path / "hf"))
    assert loaded.checkpoint_format == "transformers"
    _same_outputs(loaded.model, original)
    loaded.model.set_attn_implementation("eager")

    patched = crossget_cli.patch(loaded.model, vision_r=3, text_r=2)
    _randomise_cross(patched)
    from crossget_cli.recipes import Recipe
    from crossget_cli.export.compress import build_report, export

    export(loaded, tmp_path / "out", Recipe(), build_report(patched))
    reloaded = load_exported(tmp_path / "out").model
    assert reloaded.config._attn_implementation == "eager"
    assert torch.equal(
        reloaded.state_dict()["vision_model.encoder.cross_image"], patched.state_dict()["vision_model.encoder.cross_image"]
    )
    _same_outputs(patched, reloaded)
    assert (tmp_path / "out" / "config.json").is_file()


def test_hf_hub_id_offline_is_one_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CrossGetError, match="not in the HF cache, and the hub cannot be reached"):
        load_model("hf:crossget-tests/no-such-model")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_openai_checkpoint_and_official_crossget_checkpoint(tmp_path, suffix):
    official = openclip_tiny(OPENAI_TINY)
    crossget_cli.patch(official, vision_r=4, text_r=3)
    _randomise_cross(official)  # an official CrossGET checkpoint holds trained cross tokens
    state = official.state_dict()
    path = tmp_path / f"crossget{suffix}"
    if suffix == ".pt":
        torch.save({"model": state}, path)
    else:
        save_file(state, str(path))

    plain = load_model(str(path))
    assert set(plain.state_dict_extras) == {"visual.transformer.cross_image", "transformer.cross_text"}
    result = compress(str(path), tmp_path / "out", vision_r=4, text_r=3)
    _same_outputs(result.model, official)
    _same_outputs(load_model(str(tmp_path / "out")).model, official)


def test_openai_state_dict_without_cross_tokens(tmp_path):
    original = openclip_tiny(OPENAI_TINY)
    torch.save(original.state_dict(), tmp_path / "clip.pt")
    loaded = load_model(str(tmp_path / "clip.pt"))
    assert loaded.state_dict_extras == {}
    _same_outputs(loaded.model, original)


def test_report_counts_tokens_and_gmacs(tmp_path):
    folder, _ = _openclip_dir(tmp_path)
    report = compress(str(folder), tmp_path / "out", vision_r=4, text_r=3).report
    # 16 patches + CLS + cross slot; 16 text positions + cross slot.
    assert report["tokens_per_layer"]["vision"] == [18, 14, 10, 6, 4]
    assert report["tokens_per_layer"]["text"] == [17, 14, 11, 8, 6]
    assert report["compressed"]["gmacs"] < report["original"]["gmacs"]
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(report))


def test_existing_output_needs_overwrite_and_is_left_untouched(tmp_path):
    folder, _ = _openclip_dir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CrossGetError, match="already exists"):
        compress(str(folder), out, vision_r=2)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    compress(str(folder), out, vision_r=2, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_corrupt_export_is_detected(tmp_path):
    folder, _ = _openclip_dir(tmp_path)
    compress(str(folder), tmp_path / "out", vision_r=2)
    weights = tmp_path / "out" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CrossGetError, match="corrupt"):
        load_model(str(tmp_path / "out"))


def test_missing_parent_folders_are_created(tmp_path):
    folder, _ = _openclip_dir(tmp_path)
    compress(str(folder), tmp_path / "a" / "b" / "out", vision_r=2)
    assert (tmp_path / "a" / "b" / "out" / "model.safetensors").is_file()


def test_torchscript_checkpoint_like_openai_releases(tmp_path):
    original = openclip_tiny(OPENAI_TINY)
    images = torch.randn(1, 3, 32, 32)
    texts = torch.zeros(1, 16, dtype=torch.long)
    texts[0, :4] = torch.tensor([62, 5, 9, 63])
    torch.jit.trace(original, (images, texts), check_trace=False).save(str(tmp_path / "ViT-tiny.pt"))
    loaded = load_model(str(tmp_path / "ViT-tiny.pt"))
    _same_outputs(loaded.model, original)


def test_open_clip_architecture_with_weights_file(tmp_path):
    import open_clip

    original = openclip_tiny()
    cfg = openai_model_config(original.state_dict())
    cfg["text_cfg"]["heads"] = TINY["transformer_heads"]
    (tmp_path / "crossget-test-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "crossget-test-tiny.json")
    torch.save(original.state_dict(), tmp_path / "weights.pt")
    loaded = load_model("crossget-test-tiny", pretrained=str(tmp_path / "weights.pt"))
    _same_outputs(loaded.model, original)
    random = load_model("openclip:crossget-test-tiny@none")
    assert not torch.equal(random.model.visual.conv1.weight, original.visual.conv1.weight)
    with pytest.raises(CrossGetError, match="weights file not found"):
        load_model("crossget-test-tiny", pretrained=str(tmp_path / "missing.pt"))


def test_the_speed_report_measures_the_method_the_model_was_patched_with():
    from crossget_cli.export.compress import build_report

    for method in ("crossget", "tome"):
        model = crossget_cli.patch(openclip_tiny(), vision_r=2, method=method)
        runs = build_report(model, measure_speed=True)["profile"]["runs"]
        assert [run["method"] for run in runs] == ["none", method]
