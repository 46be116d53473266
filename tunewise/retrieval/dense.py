"""Dense retrieval: cosine similarity between normalised sentence embeddings.

Embeddings catch paraphrases BM25 misses ("when can I come in" vs "opening hours"). The
vectors are computed by :class:`~tunewise.retrieval.embeddings.Embedder`, whose on-disk memo
means an edited corpus re-embeds only the chunks that changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Dense:
    """A matrix of L2-normalised vectors, one row per indexed text."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.asarray(vectors, dtype=np.float32)

    def save(self, path: Path) -> None:
        """Write the vectors to ``path`` (``.npy``), atomically."""
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, self.vectors)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Dense:
        """Read vectors written by :meth:`save`."""
        return cls(np.load(path))

    def search(self, query_vectors: np.ndarray, n: int) -> list[list[tuple[int, float]]]:
        """Up to ``n`` ``(row, cosine)`` per query vector, best first."""
        if len(query_vectors) == 0 or len(self.vectors) == 0:
            return [[] for _ in range(len(query_vectors))]
        sims = np.asarray(query_vectors, dtype=np.float32) @ self.vectors.T
        n = min(n, sims.shape[1])
        top = np.argpartition(-sims, n - 1, axis=1)[:, :n]
        out = []
        for q, rows in enumerate(top):
            rows = rows[np.argsort(-sims[q, rows], kind="stable")]
            out.append([(int(r), float(sims[q, r])) for r in rows])
        return out
