"""Image-text retrieval recall (the numbers of the paper's Flickr30K/COCO tables).

Names follow the BLIP/CrossGET evaluation code: ``txt_r@k`` is image-to-text
retrieval (an image scores a hit when *any* of its captions is among its top k
captions, as in CLIP_benchmark), ``img_r@k`` is text-to-image retrieval (a
caption scores a hit when its image is among its top k images), ``r_mean`` is
the mean of the six. Similarities are dot products of L2-normalised features,
computed in chunks so that 5k images x 25k captions never materialise at once.

Re-ranking (BLIP's ITM over the top k of ITC) plugs in after :func:`_top_k`:
it reorders each query's candidate list before the hits are counted.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

#: ``score(image_idx, caption_idx) -> scores``, all ``[Q, k]``: a pairwise
#: re-ranking score (BLIP's ITM logit), added to the ITC similarity.
Reranker = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KS = (1, 5, 10)


def similarity(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``[Q, K]`` dot products. A side with several vectors per item (``[N, M, E]``,
    BLIP-2's query embeddings) scores by its best vector, as BLIP-2's ITC does."""
    if queries.dim() == 3:
        return (queries @ keys.t()).max(dim=1).values
    if keys.dim() == 3:
        return (keys @ queries.t()).max(dim=1).values.t()
    return queries @ keys.t()


def _top_k(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """``[Q, k]`` indices of the k most similar keys of each query."""
    k = min(k, keys.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk):
        out.append(similarity(queries[start : start + chunk], keys).topk(k, dim=1).indices)
    return torch.cat(out)


def _reranked(queries: torch.Tensor, keys: torch.Tensor, k_out: int, k_rerank: int, chunk: int, score) -> torch.Tensor:
    """``[Q, k_out]`` key indices: the ITC top ``k_rerank`` of each query reordered
    by ``score + similarity`` (as BLIP's evaluation), then the rest in ITC order."""
    candidates = _top_k(queries, keys, max(k_out, k_rerank), chunk)
    head = candidates[:, :k_rerank]
    itc = torch.cat(
        [similarity(queries[s : s + chunk], keys).gather(1, head[s : s + chunk]) for s in range(0, queries.shape[0], chunk)]
    )
    rows = torch.arange(queries.shape[0])[:, None].expand_as(head)
    order = (score(rows, head).float().cpu() + itc).argsort(dim=1, descending=True, stable=True)
    return torch.cat([head.gather(1, order), candidates[:, k_rerank:]], dim=1)[:, :k_out]


def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    caption_to_image: Sequence[int],
    ks: Sequence[int] = KS,
    chunk: int = 1024,
    rerank: Reranker | None = None,
    rerank_k: int = 0,
) -> dict[str, float]:
    """Recall@k in percent, both directions, and their mean.

    Args:
        image_features: ``[I, E]`` L2-normalised (or ``[I, M, E]``: M vectors per
            image, scored by the best, as BLIP-2's query embeddings).
        text_features: ``[C, E]`` L2-normalised.
        caption_to_image: for each caption, the index of its image.
        chunk: rows of the similarity matrix computed at a time.
        rerank: optional pairwise score that reorders the ITC top ``rerank_k`` of
            every query in both directions (BLIP's ITM re-ranking).
    """
    owner = torch.as_tensor(list(caption_to_image), dtype=torch.long)
    k_max = max(ks)
    if rerank is not None and rerank_k > 0:
        image_hits = _reranked(image_features, text_features, k_max, rerank_k, chunk, rerank)
        text_hits = _reranked(text_features, image_features, k_max, rerank_k, chunk, lambda t, i: rerank(i, t))
    else:
        image_hits = _top_k(image_features, text_features, k_max, chunk)  # [I, k] caption indices
        text_hits = _top_k(text_features, image_features, k_max, chunk)  # [C, k] image indices
    images = torch.arange(image_features.shape[0])
    # rank of the first correct caption of each image / of the image of each caption
    image_correct = owner[image_hits] == images[:, None]
    text_correct = text_hits == owner[:, None]
    scores = {}
    for k in ks:
        scores[f"txt_r{k}"] = 100.0 * image_correct[:, :k].any(dim=1).float().mean().item()
    for k in ks:
        scores[f"img_r{k}"] = 100.0 * text_correct[:, :k].any(dim=1).float().mean().item()
    scores["r_mean"] = sum(scores.values()) / len(scores)
    return scores


def hard_negative_accuracy(
    image_features: torch.Tensor,
    caption_features: torch.Tensor,
    negative_features: torch.Tensor,
    negative_owner: Sequence[int],
) -> float:
    """Percent of images whose true caption scores strictly higher than every one of
    its hard negatives (images without negatives are not counted).

    Args:
        image_features: ``[N, E]``; caption_features: ``[N, E]``, each image's true caption.
        negative_features: ``[M, E]``, all hard negatives, flat.
        negative_owner: ``M`` image indices, the image each negative belongs to.

    Features are L2-normalised here; scores are cosine similarities in float64.
    """
    img = torch.nn.functional.normalize(torch.as_tensor(image_features).double(), dim=-1)
    pos = torch.nn.functional.normalize(torch.as_tensor(caption_features).double(), dim=-1)
    neg = torch.nn.functional.normalize(torch.as_tensor(negative_features).double(), dim=-1)
    owner = torch.as_tensor(list(negative_owner), dtype=torch.long)
    if img.ndim != 2 or pos.shape != img.shape or neg.ndim != 2 or owner.shape != (neg.shape[0],):
        raise ValueError(f"feature shapes {tuple(img.shape)}, {tuple(pos.shape)}, {tuple(neg.shape)} do not fit")
    best = torch.full((img.shape[0],), -torch.inf, dtype=torch.float64)
    best = best.scatter_reduce(0, owner, (neg * img[owner]).sum(-1), reduce="amax")
    has_negatives = torch.isfinite(best)
    if not has_negatives.any():
        return float("nan")
    wins = (img * pos).sum(-1) > best
    return 100.0 * wins[has_negatives].double().mean().item()
