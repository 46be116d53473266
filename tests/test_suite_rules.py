"""The suite's own rules (issue 20): CI fails on a skip, markers are strict, tests read no
data from outside the repository, import no other test file and never skip first-party code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent


def _pytest(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``folder`` with this suite's conftest loaded as a plugin."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{REPO}", **env}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p",
                           "no:cacheprovider", "--rootdir", str(folder), str(folder)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=folder)


@pytest.fixture
def skipping(tmp_path: Path) -> Path:
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "test_x.py").write_text(
        "import pytest\n\ndef test_ok():\n    assert 1 + 1 == 2\n\n"
        "def test_gone():\n    pytest.skip('tool missing')\n", encoding="utf-8")
    return folder


def test_a_skip_fails_the_run_in_ci(skipping: Path) -> None:
    proc = _pytest(skipping, {"CI": "true"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "CI: unexpected skip: test_x.py::test_gone: Skipped: tool missing" in proc.stderr


def test_a_skip_outside_ci_is_only_reported(skipping: Path) -> None:
    proc = _pytest(skipping, {"CI": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout


def test_markers_are_strict_and_model_is_declared() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]
    assert "--strict-markers" in options["addopts"].split()
    assert {m.split(":")[0] for m in options["markers"]} >= {"integration", "model", "browser"}


SOURCES = sorted(TESTS.glob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_test_file_breaks_the_rules(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if path.name == "test_suite_rules.py":
        return
    # Data from outside the repository: ../shared, or a path climbing above the repo.
    # (Docstrings may name ../shared/repro as where a case came from; code may not read it.)
    assert not re.search(r"parents\[[2-9]\]|[\"']shared[\"']\s*/", text), (
        "read test data from tests/data/ (vendored slices), not from outside the repository")
    # A broken first-party import must fail, not skip.
    assert not re.search(r"importorskip\(\s*[\"']tunewise", text)
    # Fixtures and helpers are shared through conftest.py or helper modules, not test files.
    assert not re.search(r"^\s*(from|import)\s+test_\w+", text, re.M)
