"""The embedding memo in SQLite (issue 20): only new texts are written, only asked-for
vectors are read, an earlier version's .npz is taken over once.

A deterministic fake sentence model stands in for MiniLM (the class under test is the real
Embedder), so these run in the model-free tier.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from tunewise.retrieval.embeddings import Embedder, EmbeddingCache


class _Model:
    """Vectors from a text's bytes: deterministic, distinct, normalised."""

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        rows = []
        for t in texts:
            v = np.array([(sum(t.encode()) * (i + 3)) % 101 + 1.0 for i in range(6)])
            rows.append(v / np.linalg.norm(v))
        return np.array(rows, dtype=np.float32)

    def get_sentence_embedding_dimension(self) -> int:
        return 6


def _embedder(cache_dir: Path | None) -> Embedder:
    embedder = Embedder.__new__(Embedder)  # the real class, without loading MiniLM
    embedder._model, embedder.batch_size, embedder.id = _Model(), 64, "fake"
    embedder.cache_dir, embedder.encoded, embedder._memo = cache_dir, 0, {}
    return embedder


def _rows(cache_dir: Path) -> int:
    with sqlite3.connect(cache_dir / "embeddings.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]


def test_vectors_survive_a_new_process_and_are_not_recomputed(tmp_path: Path) -> None:
    texts = [f"text number {i}" for i in range(30)]
    first = _embedder(tmp_path)
    vectors = first.encode(texts)
    assert first.encoded == 30 and _rows(tmp_path) == 30

    second = _embedder(tmp_path)  # a later run: same folder, empty memory
    again = second.encode(texts)
    assert second.encoded == 0
    np.testing.assert_array_equal(again, vectors)
    assert again.dtype == np.float32 and again.shape == (30, 6)


def test_a_new_text_adds_one_row_and_reads_only_what_is_asked(tmp_path: Path) -> None:
    _embedder(tmp_path).encode([f"old {i}" for i in range(200)])
    later = _embedder(tmp_path)
    out = later.encode(["old 3", "brand new"])
    assert later.encoded == 1 and _rows(tmp_path) == 201
    assert set(later._memo) == {Embedder._key("old 3"), Embedder._key("brand new")}
    np.testing.assert_array_equal(out[0], _Model().encode(["old 3"])[0])


def test_duplicates_and_repeats_are_embedded_once(tmp_path: Path) -> None:
    embedder = _embedder(tmp_path)
    out = embedder.encode(["a", "b", "a"])
    embedder.encode(["b", "a"])
    assert embedder.encoded == 2 and _rows(tmp_path) == 2
    np.testing.assert_array_equal(out[0], out[2])


def test_an_earlier_npz_memo_is_taken_over_once(tmp_path: Path) -> None:
    vec = np.arange(6, dtype=np.float32)
    np.savez(tmp_path / "fake.npz", **{Embedder._key("kept"): vec})
    embedder = _embedder(tmp_path)
    out = embedder.encode(["kept"])
    assert embedder.encoded == 0  # served from the old memo, not the model
    np.testing.assert_array_equal(out[0], vec)
    assert not (tmp_path / "fake.npz").exists() and _rows(tmp_path) == 1


def test_models_do_not_share_vectors(tmp_path: Path) -> None:
    a, b = EmbeddingCache(tmp_path / "e.sqlite", "m1"), EmbeddingCache(tmp_path / "e.sqlite", "m2")
    a.put({"k": np.ones(3, np.float32)})
    assert b.get({"k"}) == {} and a.count() == 1 and b.count() == 0
    np.testing.assert_array_equal(a.get({"k"})["k"], np.ones(3, np.float32))


def test_without_a_cache_dir_nothing_is_written(tmp_path: Path) -> None:
    embedder = _embedder(None)
    embedder.encode(["x", "y"])
    assert embedder.encoded == 2 and list(tmp_path.iterdir()) == []
