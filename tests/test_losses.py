"""Training-mode losses and gradients against the official implementation
(SPEC §4, §9), through both adapters, plus hand-checked loss values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import crossget_cli
from crossget_cli.core import contrastive_loss, js_loss
from crossget_cli.errors import CrossGetError
from tiny_models import golden_hf, golden_openclip

TRAIN_VARIANTS = ["ours_rv4_rl3", "ours_rv4_rl0", "ours_rv0_rl3", "ours_rv0_rl0"]


def _conv1(model):
    return model.visual.conv1.weight if hasattr(model, "visual") else model.vision_model.embeddings.patch_embedding.weight


def _cross(model, modality):
    for name, param in model.named_parameters():
        if name.endswith("cross_image" if modality == "vision" else "cross_text"):
            return param
    raise AssertionError(modality)


@pytest.mark.parametrize("family", ["openclip", "hf"])
@pytest.mark.parametrize("name", TRAIN_VARIANTS)
def test_losses_and_gradients_match_official(golden, family, name):
    variant = golden["variants"][name]
    model = (golden_openclip if family == "openclip" else golden_hf)(golden, variant)[0]
    model.train()
    out = crossget_cli.clip_losses(model, golden["image"], golden["text"])
    out["total"].backward()

    def close(ours, theirs, tol=1e-5):
        assert torch.allclose(ours, theirs, atol=tol, rtol=1e-4), (ours - theirs).abs().max()

    close(out["itc"], variant["train_loss_ita"])
    close(out["js"], variant["train_loss_kd"])
    close(out["image_cross"], variant["train_image_cross"])
    close(out["text_cross"], variant["train_text_cross"])
    close(out["image_features"], variant["train_image_features"])
    close(out["text_features"], variant["train_text_features"])
    close(_cross(model, "vision").grad, variant["grad_cross_image"])
    close(_cross(model, "text").grad, variant["grad_cross_text"])
    conv1 = _conv1(model).grad
    close(conv1, variant["grad_visual_conv1"], tol=1e-5)


def test_js_loss_is_the_reversed_kl_variant():
    p_logits = torch.tensor([[2.0, 0.0, -1.0]])
    q_logits = torch.tensor([[0.0, 1.0, 0.0]])
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    m = (p + q) / 2
    kl = lambda a, b: (a * (a / b).log()).sum()  # noqa: E731  KL(a||b)
    expected = (kl(m, p) + kl(m, q)) / 2
    assert js_loss(p_logits, q_logits).item() == pytest.approx(expected.item(), rel=1e-6)
    textbook = (kl(p, m) + kl(q, m)) / 2
    assert js_loss(p_logits, q_logits).item() != pytest.approx(textbook.item(), rel=1e-3)


def test_contrastive_loss_soft_targets():
    image = torch.eye(3)
    text = torch.eye(3)
    scale = torch.tensor(0.0)  # temperature 1
    loss = contrastive_loss(image, text, scale)
    expected = -math.log(math.e / (math.e + 2))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # images 0 and 1 share an id: both captions are positives for both images.
    shared = contrastive_loss(image, text, scale, torch.tensor([7, 7, 3]))
    row = -(0.5 * F.log_softmax(torch.tensor([1.0, 0, 0]), 0)[0] + 0.5 * F.log_softmax(torch.tensor([1.0, 0, 0]), 0)[1])
    last = -F.log_softmax(torch.tensor([0, 0, 1.0]), 0)[2]
    assert shared.item() == pytest.approx(((2 * row + last) / 3).item(), rel=1e-6)


def test_clip_losses_of_a_crossget_model_need_training_mode(golden):
    from tiny_models import openclip_tiny

    model = crossget_cli.patch(openclip_tiny(), vision_r=2, text_r=0).eval()
    with pytest.raises(CrossGetError, match="train"):
        crossget_cli.clip_losses(model, golden["image"], golden["text"])


@pytest.mark.parametrize("method", [None, "tome"])
def test_models_without_cross_tokens_train_on_itc_alone(golden, method):
    """The original (and ToMe, which has no cross tokens) gets the plain CLIP loss:
    equal to open_clip's own ClipLoss on the model's own features."""
    from open_clip.loss import ClipLoss

    from tiny_models import openclip_tiny

    model = openclip_tiny().train()
    if method:
        crossget_cli.patch(model, vision_r=2, text_r=2, method=method)
    out = crossget_cli.clip_losses(model, golden["image"], golden["text"])
    image = F.normalize(model.encode_image(golden["image"]), dim=-1)
    text = F.normalize(model.encode_text(golden["text"]), dim=-1)
    expected = ClipLoss()(image, text, model.logit_scale.exp())
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["itc"] is out["total"] and out["js"].item() == 0.0
    out["total"].backward()
    assert model.visual.conv1.weight.grad.abs().sum() > 0
