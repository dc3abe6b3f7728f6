"""``crossget profile``'s policy as a library call (crossget_cli.run_profile): which
sweeps a model gets when none or one is given."""

from __future__ import annotations

import pytest

import crossget_cli
from crossget_cli.profile.job import default_sweeps
from sweep import build


@pytest.mark.parametrize(
    "given,expected",
    [
        ((None, None), ([16], [6])),  # SPEC §5's settings
        (([0, 8], None), ([0, 8], [0])),  # one tower asked for: the other stays original
        ((None, [2]), ([0], [2])),
        (([4], [2]), ([4], [2])),
    ],
)
def test_an_original_dual_encoder(given, expected):
    assert default_sweeps(build("openclip", "openclip-CLIP"), *given) == expected


def test_a_family_without_text_reduction_sweeps_vision_only():
    assert default_sweeps(build("llava", "LlavaForConditionalGeneration"), None, None) == ([16], [0])


def test_a_compressed_model_is_profiled_at_its_own_setting():
    model = crossget_cli.patch(build("openclip", "openclip-CLIP"), vision_r=[1, 2, 3, 4], text_r=3)
    assert default_sweeps(model, None, None) == ([(1, 2, 3, 4)], [3])
    assert default_sweeps(model, [5], None) == ([5], [0])


def test_run_profile_measures_the_chosen_sweep(tmp_path):
    from crossget_cli.profile.speed import ProfileConfig
    from tiny_models import save_openclip_folder

    save_openclip_folder(tmp_path / "tiny")
    config = ProfileConfig(batch_sizes=[1], warmup=0, repeats=1, towers="image")
    result = crossget_cli.run_profile(str(tmp_path / "tiny"), config, vision_r=[0, 4])
    labels = [run["label"] for run in result.data["runs"]]
    assert labels == ["original", "rv0_rl0", "rv4_rl0"] and "generation" not in result.data
