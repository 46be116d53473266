"""Backends: where the model runs. Heavy ones are imported only when asked for."""

from __future__ import annotations

from tunewise.backends.base import Backend
from tunewise.extras import require
from tunewise.task import BackendSpec


def make_backend(spec: BackendSpec) -> Backend:
    """Build the backend a task asks for."""
    if spec.kind == "dummy":
        from tunewise.backends.dummy import DummyBackend

        return DummyBackend(seed=spec.seed, batch_size=spec.batch_size)
    if spec.kind == "openai":
        from tunewise.backends.openai_compat import OpenAIBackend

        return OpenAIBackend(spec)
    require("local", feature="the local backend")
    from tunewise.backends.local import LocalBackend

    return LocalBackend(spec.model, batch_size=spec.batch_size,
                        score_end_of_turn=spec.score_end_of_turn, threads=spec.threads)
