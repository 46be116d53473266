"""Shared fixtures: an isolated store and model cache, task-file factories, the CLI runner."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The converted SmolLM2 is cached across test sessions (conversion takes ~20 s).
MODEL_HOME = Path(os.environ.get("TUNEWISE_TEST_HOME", Path.home() / ".cache" / "tunewise-test"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own store; the model cache is shared and read-mostly."""
    monkeypatch.setenv("TUNEWISE_DB", str(tmp_path / "store.db"))
    monkeypatch.setenv("TUNEWISE_HOME", str(MODEL_HOME))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def make_task(tmp_path: Path) -> Callable[..., Path]:
    """Write a task.yaml (dummy backend by default) next to a copy of the given rows."""

    def make(rows: list[dict] | None = None, *, source: str | None = None, limit: int = 0,
             name: str = "task.yaml", **fields) -> Path:
        if rows is None:
            lines = (SHARED_DATA / (source or "snips_intents.jsonl")).read_text().splitlines()
            rows = [json.loads(x) for x in (lines[:limit] if limit else lines)]
        write_jsonl(tmp_path / "data.jsonl", rows)
        spec = {"name": "t", "kind": "classification", "data": {"path": "data.jsonl"},
                "target": 0.8, "split": {"test": 40, "dev": 20, "seed": 0},
                "backend": {"kind": "dummy"}, **fields}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec), encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2 backend, loaded once per test session (converted once per machine)."""
    os.environ["TUNEWISE_HOME"] = str(MODEL_HOME)
    from tunewise.backends.local import LocalBackend

    return LocalBackend("smollm2-135m", batch_size=4)
