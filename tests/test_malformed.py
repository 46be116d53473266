"""The malformed-input corpus: every case is one line on stderr, exit 2, no traceback, no run.

Each folder in ``tests/malformed/`` is one case: the files a user might have (``task.yaml``,
data, corpus) plus ``case.json`` with the command line and the exact error line expected
(``{dir}`` stands for the case folder). ``valid_baseline`` is the control: the same task and
data without a defect, which must run, so every other case fails only for its own defect.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import app

CORPUS = Path(__file__).parent / "malformed"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.name != "valid_baseline")
# Run as real processes too: the CLI error path end to end, stderr as the user sees it.
SUBPROCESS_CASES = [
    "yaml_unclosed_brace", "unknown_key_top", "data_non_utf8", "jsonl_truncated",
    "csv_missing_column", "unseen_test_label", "split_too_large", "store_corrupt",
]


def _spec(name: str) -> dict:
    return json.loads((CORPUS / name / "case.json").read_text(encoding="utf-8"))


def _setup(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """Copy the case into a fresh folder, enter it, and apply the case's environment."""
    where = tmp_path / name
    shutil.copytree(CORPUS / name, where)
    monkeypatch.chdir(where)
    spec = _spec(name)
    for key, value in spec.get("env", {}).items():
        monkeypatch.setenv(key, value.replace("{dir}", str(where)))
    return where, spec


def _runs(store: Path) -> list[tuple[str, str]]:
    """(id, status) of every run in a store; [] when the store was never created."""
    if not store.exists():
        return []
    with sqlite3.connect(store) as db:
        return list(db.execute("SELECT id, status FROM runs"))


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    for name in CASES:
        spec = _spec(name)
        assert spec["expect"].startswith("error: "), name
        assert spec["why"], name


def test_baseline_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared task and data are valid: the defects, not the fixtures, cause exit 2."""
    _setup("valid_baseline", tmp_path, monkeypatch)
    result = CliRunner().invoke(app, _spec("valid_baseline")["args"])
    assert result.exit_code == 0, result.output
    assert [status for _, status in _runs(Path(os.environ["TUNEWISE_DB"]))] == ["done"]


@pytest.mark.parametrize("name", CASES)
def test_malformed_case(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    where, spec = _setup(name, tmp_path, monkeypatch)
    before = sorted(p.relative_to(where) for p in where.rglob("*"))
    result = CliRunner().invoke(app, spec["args"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [spec["expect"].replace("{dir}", str(where))]
    assert result.stdout == ""
    assert "Traceback" not in result.output
    # Nothing half-done: no run row in the store, no run folder or other file written.
    if name != "store_corrupt":
        assert _runs(Path(os.environ["TUNEWISE_DB"])) == []
    assert sorted(p.relative_to(where) for p in where.rglob("*")) == before


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunewise.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_malformed_case_subprocess(name: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    where, spec = _setup(name, tmp_path, monkeypatch)
    proc = _cli(spec["args"], where)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [spec["expect"].replace("{dir}", str(where))]
    assert proc.stdout == ""
    if name != "store_corrupt":
        assert _runs(Path(os.environ["TUNEWISE_DB"])) == []


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--debug`` is the one way to see where an error was raised."""
    where, spec = _setup("unknown_key_top", tmp_path, monkeypatch)
    proc = _cli(["--debug", *spec["args"]], where)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "TunewiseError" in proc.stderr


def test_allow_unseen_labels_scores_anyway(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The unseen-label stop has a documented way out, and the data check still notes it."""
    _setup("unseen_test_label", tmp_path, monkeypatch)
    result = CliRunner().invoke(app, ["run", "task.yaml", "--allow-unseen-labels", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["data"]
    assert data["unseen_test_labels"] == ["Shipping"]
    assert any("never seen in train: Shipping" in note for note in data["notes"])
