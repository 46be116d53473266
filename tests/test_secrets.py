"""Secrets: API keys come only from the environment and never reach an output artefact.

A recognisable fake key is exported under a variable whose name does not look secret (so
only the backend's registration can mask it), a real `tunewise run` talks to a stub server
with it, and every byte the run leaves behind is searched: stdout, stderr, the store (with
its WAL), result.json, the run folder, the HTML report. The error path is checked against
a server that echoes the key back in its 401 body, as hosted APIs do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise import errors
from tunewise.cli import app
from tunewise.errors import MASK, TunewiseError, redact, register_secret

FAKE_KEY = "tw-FAKEKEY-7f3a9c1e5b2d4680-do-not-leak"
KEY_VAR = "ACME_LLM_CRED"  # deliberately not *KEY*/*TOKEN*: masking must not rely on names


# ---- the redaction helper ---------------------------------------------------------------
@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_REGISTERED", set())


def test_redact_masks_env_secrets_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_API_KEY", "abcDEF123456")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_zzzzzzzzzzzz")
    monkeypatch.setenv("SOME_SECRET", "short")  # too short to mask safely
    monkeypatch.setenv("HOME_DIR_SETTING", "abcDEF123456-not-secret-name")
    text = "a abcDEF123456 b ghp_zzzzzzzzzzzz c short"
    assert redact(text) == f"a {MASK} b {MASK} c short"


def test_redact_masks_registered_values_and_key_shapes() -> None:
    register_secret(FAKE_KEY)
    register_secret("tiny")  # ignored: would mask ordinary words
    text = (f"url http://h/v1?x={FAKE_KEY} header Authorization: Bearer abc.def-123_456 "
            "key sk-proj-AbCdEf0123456789 tiny")
    out = redact(text)
    assert FAKE_KEY not in out and "abc.def-123_456" not in out and "sk-proj" not in out
    assert out == f"url http://h/v1?x={MASK} header Authorization: Bearer {MASK} key {MASK} tiny"


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "data.jsonl:3: output: label 'sk-' is odd; see task.yaml (skip-list)"
    assert redact(text) == text


def test_cli_errors_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever raises, the printed line goes through redact (here: a key in a message)."""
    register_secret(FAKE_KEY)

    def boom(*args: object, **kwargs: object) -> None:
        raise TunewiseError(f"server said: invalid key {FAKE_KEY}", field="backend")

    monkeypatch.setattr("tunewise.cli._run", boom)
    result = CliRunner().invoke(app, ["run", "task.yaml"])
    assert result.exit_code == 2
    assert result.stderr == f"error: backend: server said: invalid key {MASK}\n"


def test_debug_traceback_and_internal_errors_are_redacted(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """--debug prints the traceback through redact; an unexpected crash is one masked line."""
    register_secret(FAKE_KEY)

    def user_error(*args: object, **kwargs: object) -> None:
        raise TunewiseError(f"server said: invalid key {FAKE_KEY}", field="backend")

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"connection to http://h/v1?key={FAKE_KEY} reset")

    monkeypatch.setattr("tunewise.cli._run", user_error)
    debug = CliRunner().invoke(app, ["--debug", "run", "task.yaml"])
    assert debug.exit_code == 2
    assert "Traceback (most recent call last)" in debug.stderr and "user_error" in debug.stderr
    assert FAKE_KEY not in debug.stderr and MASK in debug.stderr

    monkeypatch.setattr("tunewise.cli._run", crash)
    plain = CliRunner().invoke(app, ["run", "task.yaml"])
    assert plain.exit_code == 1
    assert plain.stderr.splitlines() == [
        f"internal error: RuntimeError: connection to http://h/v1?key={MASK} reset (finished "
        "work is saved; --debug shows the traceback, please report it)"]
    debug = CliRunner().invoke(app, ["--debug", "run", "task.yaml"])
    assert debug.exit_code == 1 and "in crash" in debug.stderr and FAKE_KEY not in debug.stderr


# ---- a real run on the openai backend ----------------------------------------------------
@pytest.fixture
def stub_url():
    from openai_stub import StubServer

    with StubServer() as stub:
        yield stub


def _openai_task(make_task, url: str) -> Path:
    return make_task(limit=120, target=0.99, split={"test": 8, "dev": 4, "seed": 0},
                     rungs=["zero_shot", "system_prompt"],
                     backend={"kind": "openai", "model": "stub", "base_url": url,
                              "api_key_env": KEY_VAR, "score_method": "constrained",
                              "max_retries": 0})


def _every_byte(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunewise.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_fake_key_reaches_the_server_and_nothing_else(make_task, tmp_path: Path,
                                                       stub_url) -> None:
    task = _openai_task(make_task, stub_url.url)
    env = {**os.environ, KEY_VAR: FAKE_KEY}
    runs = [_cli(["run", str(task), "--all", "--out", str(tmp_path / "out")], tmp_path, env),
            _cli(["show", "latest", "--json"], tmp_path, env),
            _cli(["runs"], tmp_path, env),
            _cli(["report", "latest", "-o", str(tmp_path / "report.html")], tmp_path, env),
            _cli(["--debug", "run", str(task), "--json"], tmp_path, env)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    # The key was really used: every request carried it.
    assert stub_url.seen, "the run made no request"
    assert {s["authorization"] for s in stub_url.seen} == {f"Bearer {FAKE_KEY}"}
    # ... and it is nowhere else.
    assert (tmp_path / "out" / "result.json").exists() and (tmp_path / "report.html").exists()
    assert Path(os.environ["TUNEWISE_DB"]).exists()
    leaks = [f"{name}" for name, blob in _every_byte(tmp_path).items()
             if FAKE_KEY.encode() in blob]
    leaks += [f"stdout/stderr of {p.args[3:5]}" for p in runs
              if FAKE_KEY in p.stdout or FAKE_KEY in p.stderr]
    assert leaks == []
    assert json.loads(runs[1].stdout)["rungs"][0]["status"] == "done"


class _EchoKey401(BaseHTTPRequestHandler):
    """Refuses every request, quoting the key it got, like "Incorrect API key: sk-...."."""

    def log_message(self, *args: object) -> None:
        pass

    def _refuse(self) -> None:
        got = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        blob = json.dumps({"error": {"message": f"Incorrect API key provided: {got}"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._refuse()

    do_GET = _refuse


def test_a_server_echoing_the_key_is_masked_in_the_error(make_task, tmp_path: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _EchoKey401)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        task = _openai_task(make_task, url)
        proc = _cli(["run", str(task)], tmp_path, {**os.environ, KEY_VAR: FAKE_KEY})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "401" in lines[-1] and MASK in lines[-1]
    assert FAKE_KEY not in proc.stderr + proc.stdout
    leaks = [name for name, blob in _every_byte(tmp_path).items() if FAKE_KEY.encode() in blob]
    assert leaks == []


def test_missing_key_variable_names_the_variable_not_a_value(make_task, tmp_path: Path,
                                                            monkeypatch) -> None:
    monkeypatch.delenv(KEY_VAR, raising=False)
    task = _openai_task(make_task, "http://127.0.0.1:9/v1")
    result = CliRunner().invoke(app, ["run", str(task)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: backend.api_key_env: ")
    assert KEY_VAR in result.stderr
