"""Retrieval: chunking, BM25, dense, fusion, the persisted index and its cache."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewise.dataset import Document
from tunewise.evaluate import retrieval_scores
from tunewise.retrieval.bm25 import BM25
from tunewise.retrieval.chunking import chunk_document, token_spans
from tunewise.retrieval.fusion import rrf
from tunewise.retrieval.index import RetrievalIndex, corpus_hash
from tunewise.rungs.rag import parse_citations

SHARED = Path(__file__).parent / "data" / "slices"  # vendored slices (README there)


class FakeEmbedder:
    """Hashed bag of words: deterministic, instant, and counts what it encodes."""

    id = "fake-bow"

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        self.encoded += len(texts)
        out = np.zeros((len(texts), 64), np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


DOCS = [
    Document("hours", "The clinic opens at 8:30 a.m. and closes at 6 p.m. on weekdays."),
    Document("parking", "Patients park free for three hours in car park P2 near the Atrium."),
    Document("pharmacy", "The pharmacy is in room G14. Repeat prescriptions take two days."),
    Document("wifi", "The guest wireless network password is rainbarrel77."),
]


# ---- chunking ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab c.\n,1")), min_size=0, max_size=300),
       st.integers(1, 20), st.data())
def test_chunks_cover_every_token_with_the_asked_overlap(text, size, data):
    overlap = data.draw(st.integers(0, size - 1))
    chunks = chunk_document(Document("d", text or "x"), size, overlap)
    spans = token_spans(text or "x")
    for c in chunks:
        assert c.doc_id == "d" and c.text == (text or "x")[c.start : c.end]
        assert len(token_spans(c.text)) <= size
    if spans:
        assert chunks[0].start == spans[0][0] and chunks[-1].end == spans[-1][1]
        starts = [next(i for i, s in enumerate(spans) if s[0] == c.start) for c in chunks]
        assert all(b - a == size - overlap for a, b in zip(starts, starts[1:], strict=False))
    assert [c.id for c in chunks] == [f"d#{i}" for i in range(len(chunks))]


def test_chunk_settings_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        chunk_document(DOCS[0], 8, 8)


# ---- retrievers and fusion --------------------------------------------------------------
def test_bm25_finds_the_rare_word_and_drops_non_matches():
    bm25 = BM25.build([d.text for d in DOCS])
    hits = bm25.search(["what is the wifi password", "the of and"], 3)
    assert hits[0][0][0] == 3
    assert hits[1] == []  # stopwords only: nothing matches, nothing is invented


def test_rrf_rewards_agreement_and_is_deterministic():
    fused = rrf([[1, 2, 3], [3, 1, 4]])
    assert [i for i, _ in fused][:2] == [1, 3]
    assert rrf([[5], [6]]) == rrf([[5], [6]])
    assert [i for i, _ in rrf([[5], [6]])] == [5, 6]


def test_retrieval_scores_recall_and_mrr():
    scores = retrieval_scores([["a", "b"], ["c", "a", "a"], ["x"]], ["b", "a", "a"], k=2)
    assert scores["recall@2"]["value"] == pytest.approx(2 / 3)
    assert scores["mrr@2"]["value"] == pytest.approx((0.5 + 0.5 + 0) / 3)


def test_parse_citations_strips_and_maps_labels():
    text, cited = parse_citations("8:30 a.m. [2]", ["1", "2", "3"])
    assert (text, cited) == ("8:30 a.m.", ["2"])
    text, cited = parse_citations("P2 [Passage 1, 3] [7]", ["1", "2", "3"])
    assert (text, cited) == ("P2", ["1", "3"])
    assert parse_citations("no citation", ["1"]) == ("no citation", [])


# ---- the persisted index ----------------------------------------------------------------
def test_index_is_reused_until_a_document_changes(tmp_path):
    fake = FakeEmbedder()
    opened = []

    def embedder():
        opened.append(1)
        return fake

    index, report = RetrievalIndex.open(DOCS, tmp_path, chunk_tokens=8, overlap=2,
                                        method="hybrid", embedder=embedder)
    assert report.status == "built" and set(report.built) == {"chunks", "bm25", "dense"}
    assert fake.encoded == report.chunks > len(DOCS)
    assert index.search(["guest wireless password"], 1)[0][0].chunk.doc_id == "wifi"

    fake.encoded = 0
    again, report2 = RetrievalIndex.open(DOCS, tmp_path, chunk_tokens=8, overlap=2,
                                         method="hybrid", embedder=embedder)
    assert report2.status == "cache hit" and report2.built == []
    assert fake.encoded == 0 and report2.folder == report.folder

    edited = [*DOCS[:3], Document("wifi", "The guest wireless password is sunflower12.")]
    assert corpus_hash(edited) != corpus_hash(DOCS)
    fresh, report3 = RetrievalIndex.open(edited, tmp_path, chunk_tokens=8, overlap=2,
                                         method="hybrid", embedder=embedder)
    assert report3.status == "built" and report3.folder != report.folder
    hit = fresh.search(["guest wireless password"], 1, "bm25")[0][0]
    assert "sunflower12" in hit.chunk.text


def test_bm25_only_index_never_loads_the_embedder(tmp_path):
    def embedder():
        raise AssertionError("the embedder must not be loaded for bm25")

    index, report = RetrievalIndex.open(DOCS, tmp_path, chunk_tokens=16, overlap=4,
                                        method="bm25", embedder=embedder)
    assert report.built == ["chunks", "bm25"]
    assert index.search_docs(["car park"], 2, "bm25")[0][0] == "parking"


@pytest.mark.integration
def test_real_embedder_reembeds_only_the_changed_document(tmp_path):
    from tunewise.retrieval.embeddings import Embedder

    rows = [json.loads(x) for x in (SHARED / "coqa_stories.jsonl").read_text().split("\n")[:12]]
    docs = [Document(r["id"], r["text"]) for r in rows]
    first = Embedder(tmp_path / "emb")
    index, report = RetrievalIndex.open(docs, tmp_path / "idx", chunk_tokens=128, overlap=32,
                                        method="hybrid", embedder=lambda: first)
    assert report.status == "built" and first.encoded == report.chunks

    # A new process: same corpus -> cache hit, the model is not even asked for vectors.
    second = Embedder(tmp_path / "emb")
    index, report = RetrievalIndex.open(docs, tmp_path / "idx", chunk_tokens=128, overlap=32,
                                        method="hybrid", embedder=lambda: second)
    assert report.status == "cache hit" and second.encoded == 0

    changed = [Document(docs[0].id, docs[0].text + " The end."), *docs[1:]]
    n_changed = len(chunk_document(changed[0], 128, 32))
    index, report = RetrievalIndex.open(changed, tmp_path / "idx", chunk_tokens=128,
                                        overlap=32, method="hybrid", embedder=lambda: second)
    assert report.status == "built"
    assert 1 <= second.encoded <= n_changed  # only the edited document's new chunks
    top = index.search_docs([rows[3]["text"][:200]], 1, "dense")[0]
    assert top == [docs[3].id]
