"""The openai backend against slow, stingy or broken servers, and badly set keys and URLs.

Every server here listens on 127.0.0.1 and stops by itself; no test sends a request off the
machine (``base_url: []`` once fell back to the public OpenAI API, with the key).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from openai_stub import StubServer

from tunewise.backends import openai_transport
from tunewise.backends.openai_compat import MAX_RETRY_AFTER_S, OpenAIBackend, _Retryable
from tunewise.errors import TunewiseError
from tunewise.task import BackendSpec, parse_task

TRICKLE_FOR_S = 12.0  # the trickle server gives up by itself after this long


def spec(url: str | list[str], **kw) -> BackendSpec:
    return BackendSpec(kind="openai", model="m", base_url=url, **kw)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def trickle() -> Iterator[str]:
    """A server that answers every GET and POST with 200, Content-Length 1e8, and then one
    byte every 0.1 s: each read is quick, the answer never completes. It stops writing
    after TRICKLE_FOR_S (so a test of code without a total deadline fails, not hangs)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _trickle(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000000")
            self.end_headers()
            end = time.monotonic() + TRICKLE_FOR_S
            try:
                while time.monotonic() < end:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up
                pass

        def do_GET(self) -> None:
            self._trickle()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._trickle()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---- Retry-After -----------------------------------------------------------------------


def _retry_state(after: float | None, attempt: int = 1) -> SimpleNamespace:
    exc = _Retryable("u", "HTTP 429", retry_after=after)
    return SimpleNamespace(attempt_number=attempt,
                           outcome=SimpleNamespace(exception=lambda: exc))


@pytest.mark.parametrize("after", [86400.0, 1e9, MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S - 1])
def test_the_retry_after_cap_holds_jitter_included(after: float) -> None:
    backend = OpenAIBackend(spec("http://127.0.0.1:1/v1"))
    waits = [backend.transport._wait(_retry_state(after)) for _ in range(200)]
    assert max(waits) <= MAX_RETRY_AFTER_S
    assert min(waits) >= min(after, MAX_RETRY_AFTER_S)


def test_short_retry_after_and_backoff_keep_their_jitter() -> None:
    backend = OpenAIBackend(spec("http://127.0.0.1:1/v1"), backoff_s=0.5)
    waits = [backend.transport._wait(_retry_state(2.0)) for _ in range(200)]
    assert min(waits) >= 2.0 and max(waits) <= 2.0 + 0.05 + 0.2
    assert len(set(waits)) > 100  # jittered: replicas are not hit in lockstep
    backoff = [backend.transport._wait(_retry_state(None, attempt=20)) for _ in range(50)]
    assert all(30.0 <= w <= 30.5 for w in backoff)


def test_a_day_long_retry_after_is_slept_for_the_cap_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through tenacity, as a run would: the cap (made small here) bounds the real sleep."""
    monkeypatch.setattr(openai_transport, "MAX_RETRY_AFTER_S", 0.3)
    out: list = []
    with StubServer(lambda key, n: "429" if n == 0 else "ok", retry_after="86400") as stub:
        backend = OpenAIBackend(spec(stub.url, max_retries=2))
        worker = threading.Thread(target=lambda: out.append(
            backend.generate([chat("hello")], 8, ["\n"])), daemon=True)
        start = time.monotonic()
        worker.start()
        worker.join(timeout=15)
        elapsed = time.monotonic() - start
    assert not worker.is_alive(), "the client slept for the server's Retry-After"
    assert [c.text for c in out[0]] == ["answer to: hello"]
    assert elapsed < 5
    assert [s["mode"] for s in stub.seen] == ["429", "ok"]


# ---- total deadline ----------------------------------------------------------------------


def test_a_trickling_server_cannot_outlast_the_deadline(trickle: str) -> None:
    backend = OpenAIBackend(spec(trickle, timeout_s=1.0, max_retries=0))
    start = time.monotonic()
    with pytest.raises(TunewiseError) as err:
        backend.generate([chat("hello")], 8)
    elapsed = time.monotonic() - start
    assert elapsed < 3.5, f"took {elapsed:.1f} s against a 1 s deadline"
    message = str(err.value)
    assert "no complete answer within 1 s; gave up after 1 attempts" in message
    assert trickle in message and "\n" not in message


def test_the_deadline_holds_per_attempt_with_retries(trickle: str) -> None:
    backend = OpenAIBackend(spec(trickle, timeout_s=0.8, max_retries=1), backoff_s=0.01)
    start = time.monotonic()
    with pytest.raises(TunewiseError, match="gave up after 2 attempts"):
        backend.score([chat("hello")], [["a", "b"]])
    assert time.monotonic() - start < 2 * 0.8 + 2.5


def test_probes_and_feature_requests_keep_the_deadline_too(trickle: str) -> None:
    """The one-off requests (server identity, tokenizer, template) are bounded as well."""
    backend = OpenAIBackend(spec(trickle, timeout_s=0.8, max_retries=0))
    start = time.monotonic()
    backend_id = backend.id  # /v1/models, /props and /api/tags, concurrently
    assert time.monotonic() - start < 0.8 + 3.0
    assert ":server=unverified-" in backend_id
    start = time.monotonic()
    assert backend.count_tokens("x" * 40) == 10  # two tokenize endpoints tried, then ~4 chars
    assert backend.render(chat("hi")) == "[user]\nhi\n\n[assistant]\n"
    assert time.monotonic() - start < 3 * 0.8 + 4.0


def test_a_run_against_a_trickling_server_ends_with_one_line(
        trickle: str, make_task, runner) -> None:
    from tunewise.cli import app

    rows = [{"input": f"question {i}", "output": ["billing", "shipping"][i % 2]}
            for i in range(12)]
    path = make_task(rows, split={"test": 3, "dev": 3, "seed": 0}, rungs=["zero_shot"],
                     backend={"kind": "openai", "model": "m", "base_url": trickle,
                              "score_method": "constrained", "timeout_s": 1,
                              "max_retries": 0})
    start = time.monotonic()
    result = runner.invoke(app, ["run", str(path)])
    elapsed = time.monotonic() - start
    assert result.exit_code == 2, result.output
    assert elapsed < 20, f"took {elapsed:.1f} s"  # ~6 s: several 1 s deadlines in a row
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert errors == [f"error: backend: {trickle}/chat/completions: no complete answer within "
                      "1 s; gave up after 1 attempts"], result.stderr
    assert "Traceback" not in result.output


# ---- base_url ------------------------------------------------------------------------------

TASK = ("name: t\nkind: classification\ndata: {path: d.jsonl}\ntarget: 0.5\n"
        "backend: {kind: openai, model: m, base_url: [], api_key_env: MYSVC_CRED}\n")


def test_an_empty_base_url_list_is_an_error_naming_the_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MYSVC_CRED", "k" * 10)
    path = tmp_path / "task.yaml"
    path.write_text(TASK, encoding="utf-8")
    with pytest.raises(TunewiseError) as err:
        parse_task(TASK, path)
    assert str(err.value) == (f"{path}:5: backend.base_url: an empty list names no server: "
                              "give one URL or several, or leave base_url out for the OpenAI API")
    # built around the schema (a plugin, a test): still no fallback to the public API
    unchecked = BackendSpec.model_construct(kind="openai", model="m", base_url=[],
                                            api_key_env="MYSVC_CRED")
    with pytest.raises(TunewiseError, match="base_url is an empty list"):
        OpenAIBackend(unchecked)


def test_an_empty_base_url_list_stops_the_cli_before_any_request(
        monkeypatch: pytest.MonkeyPatch, make_task, runner) -> None:
    from tunewise.cli import app

    monkeypatch.setenv("MYSVC_CRED", "k" * 10)
    sent: list[str] = []
    monkeypatch.setattr(openai_transport.Transport, "_send",
                        lambda self, c, url, body: sent.append(url))
    path = make_task([{"input": f"q {i}", "output": "a"} for i in range(6)],
                     backend={"kind": "openai", "model": "m", "base_url": [],
                              "api_key_env": "MYSVC_CRED"})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "backend.base_url: an empty list names no server" in result.stderr
    assert sent == []


# ---- answers and keys ----------------------------------------------------------------------


@pytest.mark.parametrize("usage,why", [
    ([1, 2], "'usage' is list, not an object"),
    ("12 tokens", "'usage' is str, not an object"),
    ({"prompt_tokens": "twelve"}, "usage.prompt_tokens is 'twelve', not a token count"),
    ({"prompt_tokens": -3}, "usage.prompt_tokens is -3, not a token count"),
    ({"prompt_tokens": 1.5}, "usage.prompt_tokens is 1.5, not a token count"),
    ({"prompt_tokens": 4, "completion_tokens": True}, "usage.completion_tokens is True"),
])
def test_a_malformed_usage_is_a_clear_error(usage: object, why: str) -> None:
    with StubServer(usage=usage) as stub:
        backend = OpenAIBackend(spec(stub.url))
        with pytest.raises(TunewiseError) as err:
            backend.generate([chat("hello")], 8)
        if "completion_tokens" not in why:  # scoring reads prompt_tokens only
            with pytest.raises(TunewiseError, match="unexpected answer: "):
                backend.score([chat("hello")], [["a", "b"]])
    message = str(err.value)
    assert message.startswith(f"backend: {stub.url}: unexpected answer: ")
    assert why in message and "\n" not in message


@pytest.mark.parametrize("usage,expected", [
    (None, (6, 4)),  # counted locally: 26 and 16 characters at ~4 a token
    ({"prompt_tokens": 7.0, "completion_tokens": 2}, (7, 2)),
    ({"prompt_tokens": 9}, (9, 4)),
])
def test_a_missing_or_partial_usage_is_counted_locally(usage: object,
                                                       expected: tuple[int, int]) -> None:
    with StubServer(usage=usage) as stub:
        out = OpenAIBackend(spec(stub.url)).generate([chat("hello")], 8, ["\n"])[0]
    assert (out.prompt_tokens, out.completion_tokens) == expected


def test_an_answer_that_is_not_an_object_is_a_clear_error() -> None:
    with StubServer() as stub:
        backend = OpenAIBackend(spec(stub.url))
        stub.chat = lambda body, key: [1, 2, 3]  # type: ignore[method-assign]
        with pytest.raises(TunewiseError, match="the answer is not a JSON object"):
            backend.generate([chat("hello")], 8)


@pytest.mark.parametrize("key,why", [
    ("sk-test-SECRET-1234\n", "ends with a newline"),
    ("sk-test-SECRET-1234\r\n", "ends with a newline"),
    (" sk-test-SECRET-1234", "has spaces before or after the key"),
    ("sk-test-SECRET\u20141234", "non-ASCII character (U+2014 at position 15"),
    ("\u201csk-test-SECRET-1234\u201d", "non-ASCII character (U+201C at position 1"),
    ("sk-test-SECRET\t1234", "a space or control character at position 15"),
])
def test_a_key_no_server_would_accept_is_refused_without_showing_it(
        monkeypatch: pytest.MonkeyPatch, key: str, why: str) -> None:
    monkeypatch.setenv("TW_BAD_KEY", key)
    with pytest.raises(TunewiseError) as err:
        OpenAIBackend(spec("http://127.0.0.1:1/v1", api_key_env="TW_BAD_KEY"))
    message = str(err.value)
    assert message.startswith("backend.api_key_env: environment variable TW_BAD_KEY ")
    assert why in message
    assert "SECRET" not in message and "1234" not in message


def test_a_clean_key_reaches_the_server_as_a_bearer_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_GOOD_KEY", "sk-test-SECRET-1234")
    with StubServer() as stub:
        OpenAIBackend(spec(stub.url, api_key_env="TW_GOOD_KEY")).generate([chat("x")], 8)
    assert stub.seen[0]["authorization"] == "Bearer sk-test-SECRET-1234"
    assert json.dumps(stub.seen[0]["body"]).count("SECRET") == 0
