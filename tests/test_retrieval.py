"""Retrieval recall and zero-shot accuracy against independent brute-force
implementations and hand-worked cases."""

from __future__ import annotations

import pytest
import torch

from crossget_cli.metrics.retrieval import retrieval_recall
from crossget_cli.evaluation.zeroshot import topk_accuracy
from reference_metrics import brute_force_recall


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_recall_matches_brute_force(chunk):
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(23, 8, generator=gen), dim=-1)
    owner = [i for i in range(23) for _ in range(1 + i % 4)]  # 1 to 4 captions per image
    texts = torch.nn.functional.normalize(images[owner] + 0.9 * torch.randn(len(owner), 8, generator=gen), dim=-1)
    scores = retrieval_recall(images, texts, owner, chunk=chunk)
    for k in (1, 5, 10):
        txt, img = brute_force_recall(images, texts, owner, k)
        assert scores[f"txt_r{k}"] == pytest.approx(txt)
        assert scores[f"img_r{k}"] == pytest.approx(img)
    six = [scores[f"{d}_r{k}"] for d in ("txt", "img") for k in (1, 5, 10)]
    assert scores["r_mean"] == pytest.approx(sum(six) / 6)
    assert 0 < scores["txt_r1"] < scores["txt_r10"] <= 100


def test_recall_hand_worked():
    images = torch.eye(3)
    # captions 0,1 -> image 0; caption 2 -> image 1 (but looks like image 2); caption 3 -> image 2
    texts = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 1.0], [0, 0.6, 0.8]])
    scores = retrieval_recall(images, texts, [0, 0, 1, 2], ks=(1,))
    # image->text top-1: image 0 -> caption 0 (hit); image 1 -> caption 1 (0.6, owner 0: miss); image 2 -> caption 2 (miss)
    assert scores["txt_r1"] == pytest.approx(100 / 3)
    # text->image top-1: c0 -> i0 hit, c1 -> i0 hit, c2 -> i2 miss, c3 -> i2 hit
    assert scores["img_r1"] == pytest.approx(75.0)


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    scores = topk_accuracy(logits, labels, ks=(1, 2))
    assert scores["top1"] == pytest.approx(100 / 3)
    assert scores["top2"] == pytest.approx(200 / 3)
