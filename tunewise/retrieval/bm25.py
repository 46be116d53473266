"""Lexical retrieval: BM25 over chunk texts with English stopwords (the ``bm25s`` package).

BM25 is the baseline every dense retriever must beat, and it finds rare exact strings
(names, codes, numbers) that a small embedding model blurs together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STOPWORDS = "en"


def _tokenize(texts: list[str], *, ids: bool):
    import bm25s

    return bm25s.tokenize(texts, stopwords=STOPWORDS, return_ids=ids, show_progress=False)


class BM25:
    """A BM25 index over a fixed list of texts (rows are positions in that list)."""

    def __init__(self, retriever) -> None:
        self.retriever = retriever

    @classmethod
    def build(cls, texts: list[str]) -> BM25:
        """Index ``texts`` (lower-cased, English stopwords removed, no stemming)."""
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(_tokenize(texts, ids=True), show_progress=False)
        return cls(retriever)

    def save(self, folder: Path) -> None:
        """Write the index files into ``folder``."""
        self.retriever.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> BM25:
        """Read an index written by :meth:`save`."""
        import bm25s

        return cls(bm25s.BM25.load(str(folder), show_progress=False))

    @property
    def size(self) -> int:
        """Number of indexed texts."""
        return int(self.retriever.scores["num_docs"])

    def search(self, queries: list[str], n: int) -> list[list[tuple[int, float]]]:
        """Up to ``n`` ``(row, score)`` per query, best first; rows with no shared term dropped."""
        if not queries:
            return []
        n = max(1, min(n, self.size))
        rows, scores = self.retriever.retrieve(
            _tokenize(queries, ids=False), k=n, show_progress=False, n_threads=1
        )
        return [
            [(int(r), float(s)) for r, s in zip(rr, ss, strict=True) if s > 0]
            for rr, ss in zip(np.asarray(rows), np.asarray(scores), strict=True)
        ]
