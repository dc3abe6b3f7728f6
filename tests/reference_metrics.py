"""Independent reference implementations of the metrics, written the slow and
obvious way, for tests to compare the library's vectorised code with."""

from __future__ import annotations

import torch


def brute_force_recall(images: torch.Tensor, texts: torch.Tensor, owner: list[int], k: int) -> tuple[float, float]:
    """Recall@k in percent, ``(image -> text, text -> image)``, by sorting every
    row and column of the similarity matrix in Python; ``owner[c]`` is the image
    caption ``c`` describes."""
    sim = (images @ texts.t()).tolist()
    i2t = 0
    for i, row in enumerate(sim):
        ranked = sorted(range(len(row)), key=lambda c: -row[c])[:k]
        i2t += any(owner[c] == i for c in ranked)
    t2i = 0
    for c in range(texts.shape[0]):
        col = [sim[i][c] for i in range(images.shape[0])]
        ranked = sorted(range(len(col)), key=lambda i: -col[i])[:k]
        t2i += owner[c] in ranked
    return 100.0 * i2t / images.shape[0], 100.0 * t2i / texts.shape[0]
