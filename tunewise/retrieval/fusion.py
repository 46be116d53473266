"""Reciprocal rank fusion: combine rankings without calibrating their scores.

BM25 scores and cosine similarities live on different scales; RRF uses only ranks
(Cormack et al., 2009): ``score(d) = sum_i w_i / (c + rank_i(d))``. It needs no training
data, which matters for a tool that must work on a user's first corpus.
"""

from __future__ import annotations

from collections.abc import Sequence

RRF_C = 60  # the constant from the paper; larger flattens the head of each ranking


def rrf(rankings: Sequence[Sequence[int]], weights: Sequence[float] | None = None,
        c: int = RRF_C) -> list[tuple[int, float]]:
    """Fuse rankings (lists of item ids, best first) into one, best first.

    Ties keep the order in which items were first seen across the rankings, so the result
    is deterministic.
    """
    weights = weights or [1.0] * len(rankings)
    scores: dict[int, float] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + w / (c + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
