"""The persisted retrieval index: chunks, BM25 and dense vectors, keyed by corpus content.

An index lives in ``<root>/<corpus hash>-c<chunk tokens>o<overlap>/``. Opening it for the
same documents and chunk settings is a cache hit (nothing is re-tokenised or re-embedded);
any change to any document changes the hash, so a new index is built, and the embedder's
own memo re-embeds only the chunks whose text changed. Parts are built on demand: a BM25-only
run never loads the embedding model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tunewise.dataset import Document
from tunewise.retrieval.bm25 import BM25
from tunewise.retrieval.chunking import TOKENIZER_ID, Chunk, chunk_documents
from tunewise.retrieval.dense import Dense
from tunewise.retrieval.embeddings import Embedder
from tunewise.retrieval.fusion import rrf

Method = Literal["bm25", "dense", "hybrid"]
METHODS: tuple[str, ...] = ("bm25", "dense", "hybrid")
PROGRESS_MIN_DOCS = 300  # corpora at least this big show a progress bar while indexing
FUSION_DEPTH = 50  # hits taken from each retriever before fusing
EMBED_BATCH = 256  # chunks per progress step while embedding


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk, ``rank`` from 1."""

    chunk: Chunk
    score: float
    rank: int


def corpus_hash(docs: Sequence[Document]) -> str:
    """Hash of the documents' ids and texts, in order: the index's identity."""
    h = hashlib.sha256()
    for doc in docs:
        h.update(json.dumps([doc.id, doc.text], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _needs(method: str) -> set[str]:
    return {"bm25": {"bm25"}, "dense": {"dense"}, "hybrid": {"bm25", "dense"}}[method]


@dataclass
class BuildReport:
    """What opening the index cost: reported in the rung's info and in benchmarks."""

    status: str  # "cache hit" or "built"
    folder: Path
    docs: int
    chunks: int
    built: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for result.json."""
        return {"index": self.status, "index_dir": str(self.folder), "docs": self.docs,
                "chunks": self.chunks, "index_built_parts": self.built,
                "index_s": round(self.seconds, 3)}


class RetrievalIndex:
    """Chunks of a corpus with the BM25 and dense indexes over them."""

    def __init__(self, folder: Path, chunks: list[Chunk],
                 embedder: Callable[[], Embedder] | None = None) -> None:
        self.folder = folder
        self.chunks = chunks
        self._embedder = embedder
        self.bm25: BM25 | None = None
        self.dense: Dense | None = None

    # ---- opening and building ------------------------------------------------------------
    @classmethod
    def open(cls, docs: Sequence[Document], root: Path, *, chunk_tokens: int, overlap: int,
             method: str = "hybrid", embedder: Callable[[], Embedder] | None = None,
             show_progress: bool | None = None) -> tuple[RetrievalIndex, BuildReport]:
        """Load the index of ``docs`` from ``root``, building whatever part is missing.

        Args:
            docs: the corpus.
            root: folder holding every index (one sub-folder per corpus hash and settings).
            chunk_tokens: tokens per chunk.
            overlap: tokens shared by consecutive chunks of a document.
            method: bm25 | dense | hybrid; decides which parts must exist.
            embedder: returns the embedder, called only when dense vectors are needed.
            show_progress: progress bar while building; default: corpora of
                :data:`PROGRESS_MIN_DOCS` documents or more.
        """
        from filelock import FileLock

        started = time.perf_counter()
        name = f"{corpus_hash(docs)}-c{chunk_tokens}o{overlap}"
        folder = Path(root) / name
        folder.parent.mkdir(parents=True, exist_ok=True)
        if show_progress is None:
            show_progress = len(docs) >= PROGRESS_MIN_DOCS
        built: list[str] = []
        with FileLock(str(folder) + ".lock"):
            meta_path = folder / "meta.json"
            if not meta_path.is_file():
                cls._write_chunks(folder, docs, chunk_tokens, overlap)
                built.append("chunks")
            # split on "\n" only: splitlines() also breaks at U+2028 inside JSON strings
            chunks = [Chunk(**json.loads(line)) for line in
                      (folder / "chunks.jsonl").read_text(encoding="utf-8").split("\n") if line]
            index = cls(folder, chunks, embedder)
            need = _needs(method)
            if "bm25" in need:
                if (folder / "bm25").is_dir():
                    index.bm25 = BM25.load(folder / "bm25")
                else:
                    index.bm25 = BM25.build([c.text for c in chunks])
                    tmp = folder / "bm25.tmp"
                    shutil.rmtree(tmp, ignore_errors=True)
                    index.bm25.save(tmp)
                    tmp.rename(folder / "bm25")
                    built.append("bm25")
            if "dense" in need:
                path = folder / f"dense-{index.embedder.id}.npy"
                if path.is_file():
                    index.dense = Dense.load(path)
                else:
                    index.dense = Dense(index._embed([c.text for c in chunks], show_progress))
                    index.dense.save(path)
                    built.append("dense")
        status = "built" if built else "cache hit"
        report = BuildReport(status, folder, len(docs), len(chunks), built,
                             time.perf_counter() - started)
        return index, report

    @staticmethod
    def _write_chunks(folder: Path, docs: Sequence[Document], chunk_tokens: int,
                      overlap: int) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        chunks = chunk_documents(docs, chunk_tokens, overlap)
        (tmp / "chunks.jsonl").write_text(
            "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in chunks),
            encoding="utf-8")
        meta = {"corpus_hash": corpus_hash(docs), "docs": len(docs), "chunks": len(chunks),
                "chunk_tokens": chunk_tokens, "overlap": overlap, "tokenizer": TOKENIZER_ID,
                "created_at": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    @property
    def embedder(self) -> Embedder:
        """The embedding model (loaded on first use)."""
        if self._embedder is None:
            raise ValueError("this index was opened without an embedder")
        return self._embedder()

    def _embed(self, texts: list[str], show_progress: bool) -> np.ndarray:
        if not show_progress:
            return self.embedder.encode(texts)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        parts = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("embedding chunks", total=len(texts))
            for i in range(0, len(texts), EMBED_BATCH):
                batch = texts[i : i + EMBED_BATCH]
                parts.append(self.embedder.encode(batch))
                progress.advance(task, len(batch))
        return np.concatenate(parts) if parts else self.embedder.encode([])

    # ---- searching -----------------------------------------------------------------------
    def _ranked(self, queries: list[str], n: int, method: str) -> list[list[tuple[int, float]]]:
        if method not in METHODS:
            raise ValueError(f"unknown retrieval method '{method}'")
        lexical = dense = None
        if method in ("bm25", "hybrid"):
            if self.bm25 is None:
                raise ValueError("the BM25 part of this index was not opened")
            lexical = self.bm25.search(queries, n if method == "bm25" else FUSION_DEPTH)
        if method in ("dense", "hybrid"):
            if self.dense is None:
                raise ValueError("the dense part of this index was not opened")
            vectors = self.embedder.encode(list(queries))
            dense = self.dense.search(vectors, n if method == "dense" else FUSION_DEPTH)
        if method == "bm25":
            return lexical
        if method == "dense":
            return dense
        return [rrf([[r for r, _ in a], [r for r, _ in b]])[:n]
                for a, b in zip(lexical, dense, strict=True)]

    def search(self, queries: Sequence[str], k: int, method: str = "hybrid") -> list[list[Hit]]:
        """The top ``k`` chunks for each query, best first."""
        return [[Hit(self.chunks[row], score, rank) for rank, (row, score) in
                 enumerate(hits, start=1)] for hits in self._ranked(list(queries), k, method)]

    def search_docs(self, queries: Sequence[str], k: int, method: str = "hybrid"
                    ) -> list[list[str]]:
        """The top ``k`` distinct document ids for each query (a document ranks by its best
        chunk), for document-level recall."""
        depth = max(FUSION_DEPTH, 4 * k)
        out = []
        for hits in self._ranked(list(queries), depth, method):
            seen: dict[str, None] = {}
            for row, _ in hits:
                seen.setdefault(self.chunks[row].doc_id, None)
                if len(seen) == k:
                    break
            out.append(list(seen))
        return out
