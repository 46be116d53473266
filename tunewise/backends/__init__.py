"""Backends: where the model runs. Heavy ones are imported only when asked for.

Each kind is one file holding its backend and its spec class (``LocalSpec``, ``OpenAISpec``,
``DummySpec``; a plugin's in its package, registered under ``tunewise.backends``): the spec
validates the task's ``backend:`` keys and ``build()`` makes the backend.
"""

from __future__ import annotations

from tunewise.backends.base import Backend
from tunewise.task import BackendSpec


def make_backend(spec: BackendSpec) -> Backend:
    """Build the backend a task asks for."""
    return spec.build()
