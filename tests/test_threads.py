"""backend.threads reaches torch, and a busy machine is pointed at threads: 1 once."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from tunewise.backends import local, make_backend
from tunewise.task import BackendSpec


def test_threads_is_validated_and_reaches_the_local_backend_without_loading_it() -> None:
    with pytest.raises(ValidationError):
        BackendSpec(threads=0)
    backend = make_backend(BackendSpec(kind="local", threads=1))
    assert backend.threads == 1
    assert backend._model is None and backend._tok is None  # nothing loaded yet


def test_busy_machine_warns_once_and_threads_are_set(monkeypatch, caplog) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(local, "_WARNED", [])
    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)
    try:
        monkeypatch.setattr(local.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
        with caplog.at_level(logging.WARNING):
            assert local.set_threads(2) == 2
        assert not caplog.records  # an idle machine: no warning
        monkeypatch.setattr(local.os, "getloadavg", lambda: (9.5, 9.0, 8.0))
        with caplog.at_level(logging.WARNING):
            local.set_threads(2)
            local.set_threads(2)
            assert local.set_threads(1) == 1  # one thread: nothing to say
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "load average 9.5 on 2 cores" in said[0]
        assert "backend.threads: 1" in said[0]
    finally:
        torch.set_num_threads(before)
