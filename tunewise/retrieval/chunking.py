"""Split documents into overlapping token windows that remember where they came from.

A chunk keeps its document id and character offsets, so a cited passage can be traced back
to the exact span of the source document, and an edited document changes only its own
chunks. "Tokens" here are words and punctuation marks (a regex, no model needed): they track
a subword tokenizer's count closely enough to budget a small model's context (English text
runs about 1.2 subword tokens per such token) and keep indexing free of model downloads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from tunewise.dataset import Document

TOKEN = re.compile(r"\w+|[^\w\s]")
TOKENIZER_ID = "words-v1"  # part of the index key: change it when TOKEN changes


@dataclass(frozen=True)
class Chunk:
    """A window of one document: ``text == document.text[start:end]``."""

    id: str
    doc_id: str
    start: int
    end: int
    text: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored in the index's ``chunks.jsonl``."""
        return asdict(self)


def token_spans(text: str) -> list[tuple[int, int]]:
    """Character ``(start, end)`` of every token of ``text``."""
    return [m.span() for m in TOKEN.finditer(text)]


def chunk_document(doc: Document, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """Windows of ``chunk_tokens`` tokens, each starting ``chunk_tokens - overlap`` later.

    The last window is the remainder, so no text is dropped; a document shorter than one
    window is one chunk. Chunk ids are ``<doc id>#<n>`` (n from 0).

    Raises:
        ValueError: ``overlap`` is not smaller than ``chunk_tokens``.
    """
    if chunk_tokens < 1 or not 0 <= overlap < chunk_tokens:
        raise ValueError("need chunk_tokens >= 1 and 0 <= overlap < chunk_tokens")
    spans = token_spans(doc.text)
    if not spans:
        return [Chunk(f"{doc.id}#0", doc.id, 0, len(doc.text), doc.text)]
    step = chunk_tokens - overlap
    chunks: list[Chunk] = []
    first = 0
    while True:
        last = min(first + chunk_tokens, len(spans)) - 1
        start, end = spans[first][0], spans[last][1]
        chunks.append(Chunk(f"{doc.id}#{len(chunks)}", doc.id, start, end, doc.text[start:end]))
        if last == len(spans) - 1:
            return chunks
        first += step


def chunk_documents(docs: Iterable[Document], chunk_tokens: int, overlap: int) -> list[Chunk]:
    """Chunks of every document, in corpus order."""
    return [c for doc in docs for c in chunk_document(doc, chunk_tokens, overlap)]
