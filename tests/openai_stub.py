"""A tiny OpenAI-compatible server on 127.0.0.1 with scripted faults, for backend tests.

Each request is keyed by its last user message (chat) or its prompt (completions); a
``plan(key, attempt)`` function says what the n-th attempt of that key gets: ``ok``,
``429`` (with Retry-After), ``500``, ``503``, ``hang`` (answers only after ``hang_s``,
longer than the client's timeout) or ``401``. Everything the server saw is recorded so
tests can assert that each request was answered exactly once.

What identifies the served model is scripted too: ``models`` (the ``/v1/models`` answer;
None answers 404), ``props`` (llama.cpp's ``/props``) and ``tags`` (Ollama's
``/api/tags``); each GET path is recorded in ``gets``. ``usage`` replaces the token counts
of chat answers (to test a server that sends a malformed one).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Plan = Callable[[str, int], str]


def always_ok(key: str, attempt: int) -> str:
    return "ok"


DEFAULT_MODELS: dict[str, Any] = {"data": [{"id": "stub", "max_model_len": 4096}]}
_UNSET: Any = object()


class StubServer:
    """Start with ``with StubServer(plan) as stub:``; ``stub.url`` ends in ``/v1``."""

    def __init__(self, plan: Plan = always_ok, *, hang_s: float = 1.0, retry_after: str = "1",
                 reject_grammar: bool = False, apply_template: bool = False,
                 ignore_grammar: bool = False, models: Any = DEFAULT_MODELS,
                 props: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
                 usage: Any = _UNSET, port: int = 0) -> None:
        self.plan = plan
        self.models, self.props, self.tags, self.usage = models, props, tags, usage
        self.gets: list[str] = []
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.reject_grammar = reject_grammar
        self.apply_template = apply_template
        self.ignore_grammar = ignore_grammar
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # 200 answers actually sent, per key
        self.seen: list[dict[str, Any]] = []  # path, key, mode, authorization, body
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    # ---- answers -----------------------------------------------------------------
    @staticmethod
    def key_of(body: dict[str, Any]) -> str:
        if "messages" in body:
            users = [m["content"] for m in body["messages"] if m["role"] == "user"]
            return users[-1] if users else ""
        return str(body.get("prompt", body.get("input", "")))

    @staticmethod
    def render(messages: list[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}</s>" for m in messages) + "<assistant>"

    def chat(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        choices = body.get("guided_choice")
        if choices:  # constrained: the label named in the question, else the first
            content = next((c for c in choices if c.split("_")[0] in key.lower()), choices[0])
        else:
            content = f"answer to: {key}\nsecond line"
        usage = ({"prompt_tokens": len(key.split()) + 10,
                  "completion_tokens": len(content.split())}
                 if self.usage is _UNSET else self.usage)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}], "usage": usage}

    @staticmethod
    def char_logprob(ch: str) -> float:
        return -0.01 * (ord(ch) % 7 + 1)

    @staticmethod
    def token_logprob(token_id: int) -> float:
        return -0.1 * (token_id % 5 + 1)

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = str(body["prompt"])
        forced = [int(i) for i in re.findall(r"<\[(\d+)\]>", body.get("grammar") or "")]
        if forced and not self.ignore_grammar:  # llama.cpp token grammar: exactly these ids
            return {"choices": [{"index": 0, "text": "".join(f"<{i}>" for i in forced),
                                 "finish_reason": "length", "logprobs": {
                "tokens": [f"<{i}>" for i in forced], "text_offset": list(range(len(forced))),
                "token_logprobs": [self.token_logprob(i) for i in forced],
                "top_logprobs": None}}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(forced)}}
        text = prompt + "." if body.get("echo") else "."
        lps: list[float | None] = [self.char_logprob(c) for c in text]
        if body.get("echo"):
            lps[0] = None  # as the OpenAI API does for the first echoed token
        return {"choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": {
            "tokens": list(text), "text_offset": list(range(len(text))),
            "token_logprobs": lps, "top_logprobs": None}}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, code: int, data: Any, headers: dict[str, str] | None = None
                      ) -> None:
                blob = json.dumps(data).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(blob)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(blob)
                except OSError:  # the client gave up (timeout) and closed the socket
                    pass

            def do_GET(self) -> None:
                with stub.lock:
                    stub.gets.append(self.path)
                answer = {"/v1/models": stub.models, "/props": stub.props,
                          "/api/tags": stub.tags}.get(self.path)
                if answer is not None:
                    self._send(200, answer)
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/extras/tokenize/count":
                    self._send(200, {"count": len(str(body["input"]))})  # a token a char
                    return
                if self.path == "/apply-template" and stub.apply_template:
                    self._send(200, {"prompt": stub.render(body["messages"])})
                    return
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    self._send(404, {"error": "not found"})
                    return
                key = stub.key_of(body)
                with stub.lock:
                    attempt = stub.attempts[key]
                    stub.attempts[key] += 1
                mode = stub.plan(key, attempt)
                if stub.reject_grammar and "grammar" in body:
                    mode = "400"
                stub.seen.append({"path": self.path, "key": key, "mode": mode, "body": body,
                                  "authorization": self.headers.get("Authorization")})
                if mode == "429":
                    self._send(429, {"error": "slow down"}, {"Retry-After": stub.retry_after})
                elif mode in ("500", "503", "401", "400"):
                    self._send(int(mode), {"error": {"message": f"scripted {mode}"}})
                elif mode == "hang":
                    time.sleep(stub.hang_s)
                    self._send(500, {"error": "hung"})
                else:
                    data = (stub.chat(body, key) if self.path.endswith("chat/completions")
                            else stub.completion(body))
                    with stub.lock:
                        stub.served[key] += 1
                    self._send(200, data)

        return Handler
