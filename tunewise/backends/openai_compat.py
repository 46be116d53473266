"""OpenAI-compatible backend: vLLM, llama.cpp, Ollama, TGI servers or a hosted API.

How it behaves, and why:

- **Concurrent inside, simple outside.** The Backend protocol is synchronous; each call
  sends its requests concurrently (``httpx.AsyncClient``, at most ``concurrency`` in flight)
  so a server with parallel slots, or several replicas, is kept busy.
- **Retries.** 408/429/5xx answers, timeouts and dropped connections are retried with
  exponential backoff and jitter (tenacity); a ``Retry-After`` header is honoured. Each
  attempt goes to the next base URL (round-robin), so a dead replica is skipped. A request
  that still fails raises one :class:`TunewiseError` line naming the URL. No wait between
  attempts exceeds ``MAX_RETRY_AFTER_S``, jitter included, whatever the server asks for.
- **Deadlines.** ``timeout_s`` bounds each attempt as a whole (connecting, sending and
  reading the complete answer), not each read: a server that trickles a byte at a time
  cannot hold a run for ever.
- **Cache identity.** The backend ``id`` (part of every cache key) names the server as well
  as the model: the base URLs, the model id ``/v1/models`` reports, and the weights'
  fingerprint where the server gives one (llama.cpp: ``/v1/models`` meta and ``/props``;
  Ollama: ``/api/tags`` digest). Probed once per backend, when the id is first needed. A
  server that cannot be asked gets ``server=unverified-...``: base URLs and model name only.
- **Nothing finished is lost.** Each answer is handed to the cache as it arrives
  (``on_result``, set by :class:`CachedBackend`), so a request failing for good, Ctrl-C
  or a kill loses only what was still in flight.
- **The key stays secret.** It is read from the environment variable *named* in the task,
  goes only into the Authorization header, and is registered for redaction; it is never
  part of the backend id (the cache key), the store, logs or error lines.
- **Scoring.** ``logprob``: each choice is appended to the prompt rendered with the model's
  chat template and sent to ``/completions`` with ``echo`` + ``logprobs``; the choice's
  token log-probs are summed (exactly what the local backend computes). This needs the
  template (``backend.tokenizer``, or a server with ``/apply-template``) and a server that
  echoes prompt log-probs. ``forced``: for llama.cpp servers, whose echoed log-probs cost
  seconds per request (llama-cpp-python sorts the vocabulary in Python for every prompt
  token): one ``/completions`` request per choice whose GBNF grammar admits exactly the
  choice's token ids (``<[id]>``, from the local tokenizer), so the server generates the
  choice and reports the log-prob of each of its tokens, computed before the grammar
  masks anything. An end-of-generation token is never reported, so these scores leave out
  the end-of-turn term (``score_end_of_turn``). ``constrained``: the model generates the
  label, restricted by a grammar where the server accepts one (llama.cpp ``grammar``,
  vLLM ``guided_choice``), and :func:`parse_label` maps the text to a label.
  ``Scored.method`` records which. A multi-request score (logprob, forced) keeps one server
  for all the choices of an item, so the server's prompt cache evaluates the prompt once.
- **Token counts** come from the server's ``usage``. ``count_tokens`` uses the local
  tokenizer when one is configured, else the server's tokenize endpoint (llama.cpp,
  llama-cpp-python, vLLM), else the ~4 characters per token rule of thumb.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import random
import re
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, field_validator, model_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from tunewise.backends.base import Completion, Messages, Scored
from tunewise.backends.openai_identity import served_entry, server_identity, server_key
from tunewise.backends.openai_wire import (
    check_api_key,
    choice_grammar,
    cut_at_stop,
    forced_logprobs,
    http_detail,
    message_text,
    parse_label,
    parse_retry_after,
    readable,
    span_logprob,
    token_grammar,
    usage_count,
)
from tunewise.errors import TunewiseError, redact, register_secret
from tunewise.extras import require
from tunewise.task import _ENV_NAME, BackendSpec, _looks_like_key

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAISpec(BackendSpec):
    """The openai backend: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, TGI) or a
    hosted API. Its model is served, so it can be prompted, never tuned."""

    kind: Literal["openai"] = Field(
        "openai", description=BackendSpec.model_fields["kind"].description)
    base_url: str | list[str] | None = Field(
        None, description="openai backend: server URL(s); several are used round-robin."
    )
    api_key_env: str | None = Field(
        None, description="openai backend: NAME of the environment variable holding the key."
    )
    timeout_s: float = Field(
        60.0, gt=0,
        description="openai backend: seconds one attempt of a request may take in all "
        "(connect, send, read the whole answer); each retry gets its own.",
    )
    concurrency: int = Field(8, ge=1, description="openai backend: requests in flight.")
    max_retries: int = Field(
        6, ge=0, le=20,
        description="openai backend: retries of a request on 429, 5xx, timeouts (backoff).",
    )
    tokenizer: str | None = Field(
        None,
        description="openai backend: local tokenizer (e.g. smollm2-135m or an HF folder) "
        "whose chat template the server uses; gives exact show-prompt, token counts and "
        "log-prob scoring through the completions endpoint.",
    )
    score_method: Literal["auto", "logprob", "forced", "constrained"] = Field(
        "auto",
        description="openai backend: how labels are scored. logprob: the server echoes the "
        "prompt + label log-probs (needs a known chat template; vLLM). forced: the server "
        "generates exactly the label's tokens under a token-id grammar and reports their "
        "log-probs (llama.cpp servers; needs tokenizer). constrained: the label is "
        "generated (with a grammar where the server supports one) and parsed. auto picks "
        "logprob when possible, else constrained.",
    )

    prompt_only: ClassVar[bool] = True

    def build(self) -> OpenAIBackend:
        return OpenAIBackend(self)

    @model_validator(mode="after")
    def _forced_scores_label_only(self) -> OpenAISpec:
        if self.score_method == "forced":
            if self.score_end_of_turn and "score_end_of_turn" in self.model_fields_set:
                raise ValueError("score_end_of_turn: true cannot go with score_method: "
                                 "forced (llama.cpp never reports the end-of-turn log-prob)")
            object.__setattr__(self, "score_end_of_turn", False)
        return self

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        random_looking = len(value or "") >= 32 and any(c.isdigit() for c in value or "") and (
            any(c.islower() for c in value or ""))
        if value is not None and (
            _looks_like_key(value) or random_looking or not _ENV_NAME.fullmatch(value)
        ):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (e.g. "
                "OPENAI_API_KEY), not the key itself"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _url_without_secret(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not value:  # never fall back to a public API
            raise ValueError("an empty list names no server: give one URL or several, or "
                             "leave base_url out for the OpenAI API")
        for url in [value] if isinstance(value, str) else value or []:
            if not re.match(r"https?://", url):
                raise ValueError("base_url must start with http:// or https://")
            if _looks_like_key(url) or re.search(r"//[^/@]+@|[?&](api[_-]?)?key=", url):
                raise ValueError(
                    "base_url must not carry credentials; give the key's variable NAME in "
                    "api_key_env"
                )
        return value
SCORING_VERSION = "v1"  # bump when scoring semantics change: it is part of the cache key
RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx
MAX_RETRY_AFTER_S = 120.0  # longer Retry-After requests are capped to this
CONSTRAINED_MISS = -100.0  # log-prob given to the labels a constrained answer did not pick
CHARS_PER_TOKEN = 4  # rule of thumb for English BPE when no tokenizer is reachable

Job = Callable[[httpx.AsyncClient], Awaitable[Any]]


class _Retryable(Exception):
    """An attempt that may succeed if repeated (429, 5xx, timeout, connection error)."""

    def __init__(self, url: str, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.url, self.why, self.retry_after = url, why, retry_after


class HTTPStatusError(TunewiseError):
    """The server refused a request in a way retrying cannot fix (400, 401, 404, ...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, field="backend")
        self.status = status


class OpenAIBackend:
    """A model behind an OpenAI-compatible HTTP API."""

    def __init__(self, spec: OpenAISpec, *, backoff_s: float = 0.5) -> None:
        urls = DEFAULT_BASE_URL if spec.base_url is None else spec.base_url
        self.urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        if not self.urls:  # never fall back to a public API that would receive the key
            raise TunewiseError("base_url is an empty list: name the server(s), or leave "
                                "base_url out for the OpenAI API", field="backend.base_url")
        self.model = spec.model
        self.timeout_s = spec.timeout_s
        self.concurrency = spec.concurrency
        # CachedBackend sends 4 x batch_size requests per chunk and waits for the chunk's
        # slowest; answers are stored one by one anyway, so chunks can be long.
        self.batch_size = spec.concurrency * 4
        self.on_result: Callable[[int, Any], None] | None = None
        self.max_retries = spec.max_retries
        self.score_method = spec.score_method
        self.backoff_s = backoff_s
        self.tokenizer_name = spec.tokenizer
        self._headers = {"User-Agent": "tunewise"}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env, "")
            if not key:
                raise TunewiseError(
                    f"environment variable {spec.api_key_env} is not set; export the API "
                    "key in it", field="backend.api_key_env")
            register_secret(key)
            register_secret(key.strip())
            check_api_key(spec.api_key_env, key)
            self._headers["Authorization"] = f"Bearer {key}"
        self.score_end_of_turn = spec.score_end_of_turn
        self._settings_id = f"openai:{self.model}:score={self.score_method}"
        if self.tokenizer_name:
            self._settings_id += f":tok={self.tokenizer_name}"
        if not self.score_end_of_turn and self.score_method != "forced":  # forced says so
            self._settings_id += ":label-only"
        self._settings_id += f":{SCORING_VERSION}"
        self._id: str | None = None
        self._id_lock = threading.Lock()
        self.servers: list[dict[str, Any]] = []  # what the id was built from, per base URL
        self._rr = itertools.count()
        self._rr_lock = threading.Lock()
        self._tok: Any = None
        self._ssl: ssl.SSLContext | None = None
        self._features: dict[str, Any] = {}  # probed once: tokenize, apply-template, ...
        self._grammar = True  # cleared when the server rejects the grammar parameter
        self._counts: dict[str, int] = {}
        self._free: asyncio.Queue[str] | None = None  # servers not held by a scoring job
        self._store: Any = None  # where server identities are remembered (attach_store)
        self._unreachable: set[str] = set()  # base URLs that gave no answer to the probe

    @property
    def id(self) -> str:
        """Model, scoring settings and server identity: part of every cache key.

        The servers are asked once, on first use (not when the backend is built, so a task
        can be checked or estimated without them). The same weights behind the same URLs
        give the same id run after run; another model served under the same ``model:``
        name, or another server, gives another id, so no cached answer is reused.
        """
        with self._id_lock:
            if self._id is None:
                self.servers = self._recall(self._identify())
                self._id = f"{self._settings_id}:server={server_key(self.model, self.servers)}"
                if not all(s["verified"] for s in self.servers):
                    unknown = ", ".join(s["url"] for s in self.servers if not s["verified"])
                    log.warning("%s", redact(
                        f"{unknown}: /models names no model '{self.model}' (or no answer), "
                        "so cached answers are keyed by base URL and model name only"))
            return self._id

    def attach_store(self, store: Any) -> None:
        """Remember each server's identity in ``store`` (CachedBackend calls this), so a
        cached re-run with the server down still finds its answers (see :meth:`_recall`)."""
        self._store = store

    def _identity_key(self, url: str) -> str:
        blob = json.dumps(["openai-identity", url, self.model], ensure_ascii=True)
        return "identity:" + hashlib.sha256(blob.encode()).hexdigest()

    def _recall(self, servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Servers that did not answer at all take the identity they gave when last probed
        (one log line says so); servers that answered and named their model are remembered.

        Without this, a re-run whose answers are all cached would miss the cache only
        because the server is down: its id would fall back to the unverified URL-and-name
        form. A server that answers is never overridden: new weights give a new id.
        """
        store = self._store
        if store is None:
            return servers
        keys = {s["url"]: self._identity_key(s["url"]) for s in servers}
        down = [s["url"] for s in servers if s["url"] in self._unreachable]
        memory = store.get_memo([keys[u] for u in down]) if down else {}
        out, used = [], []
        for server in servers:
            known = memory.get(keys[server["url"]])
            if server["url"] in self._unreachable and known:
                out.append(known["identity"])
                used.append(f"{server['url']} (as probed "
                            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(known['at']))})")
            else:
                out.append(server)
        if used:
            log.warning("%s", redact("server unreachable; cached answers are looked up under "
                                     "the identity it last gave: " + ", ".join(used)))
        fresh = {keys[s["url"]]: {"identity": s, "at": time.time()} for s in servers
                 if s["verified"] and s["url"] not in self._unreachable}
        if fresh:
            store.put_memo(fresh)
        return out

    def _identify(self) -> list[dict[str, Any]]:
        """Each base URL's identity (see :func:`server_identity`), its probes concurrent.
        A URL none of whose probes got any answer is noted in ``_unreachable``."""

        async def probe(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
            root = self._root(url)
            failed: list[str] = []
            models, props, tags = await asyncio.gather(
                self._get_json(client, url + "/models", failed=failed),
                self._get_json(client, root + "/props", failed=failed),
                self._get_json(client, root + "/api/tags", failed=failed))
            if len(failed) == 3:
                self._unreachable.add(url)
            if models is not None:
                self._features.setdefault("models", models)
            return server_identity(url, self.model, models, props, tags)

        async def all_urls() -> list[dict[str, Any]]:
            async with self._client(3 * len(self.urls)) as client:
                return list(await asyncio.gather(*(probe(client, u)
                                                   for u in sorted(set(self.urls)))))

        return self._run_sync(all_urls)

    # ---- plumbing ------------------------------------------------------------------
    def _next_url(self) -> str:
        with self._rr_lock:
            return self.urls[next(self._rr) % len(self.urls)]

    @staticmethod
    def _root(url: str) -> str:
        """The server root, where non-OpenAI extras such as /tokenize live."""
        return url[:-3] if url.endswith("/v1") else url

    def _error(self, url: str, why: str) -> str:
        return redact(f"{url}: {why}")

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: the server's Retry-After, or exponential backoff;
        both with jitter, and never more than MAX_RETRY_AFTER_S in all."""
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None:
            after = min(after, MAX_RETRY_AFTER_S)
            wait = after + random.uniform(0, 0.05 + 0.1 * after)
        else:
            exp = self.backoff_s * 2 ** (state.attempt_number - 1)
            wait = min(exp, 30.0) + random.uniform(0, self.backoff_s)
        return min(wait, MAX_RETRY_AFTER_S)

    def _client(self, connections: int) -> httpx.AsyncClient:
        if self._ssl is None:  # building a TLS context costs ~50 ms: once per backend
            self._ssl = httpx.create_ssl_context()
        limits = httpx.Limits(max_connections=connections,
                              max_keepalive_connections=connections)
        return httpx.AsyncClient(headers=self._headers, timeout=self.timeout_s, limits=limits,
                                 verify=self._ssl)

    async def _send(self, client: httpx.AsyncClient, url: str, body: dict[str, Any] | None
                    ) -> httpx.Response:
        """One request (POST ``body``, or GET when None) that must be over, answer read in
        full, within ``timeout_s``: httpx's own timeouts bound each read, not the whole."""
        try:
            async with asyncio.timeout(self.timeout_s):
                if body is None:
                    return await client.get(url)
                return await client.post(url, json=body)
        except (TimeoutError, httpx.TimeoutException):
            raise _Retryable(url, f"no complete answer within {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise _Retryable(url, f"connection failed ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:  # a body that does not decode, a redirect loop
            raise _Retryable(url, f"unreadable answer ({type(exc).__name__})") from None

    async def _post_once(self, client: httpx.AsyncClient, url: str, body: dict[str, Any]
                         ) -> dict[str, Any]:
        resp = await self._send(client, url, body)
        code = resp.status_code
        if code in RETRY_STATUS or code >= 500:
            after = parse_retry_after(resp.headers.get("retry-after"))
            raise _Retryable(url, f"HTTP {code}{http_detail(resp)}", after)
        if code >= 400:
            hint = " (check the key)" if code in (401, 403) else ""
            raise HTTPStatusError(
                self._error(url, f"HTTP {code}{hint}{http_detail(resp)}"), code)
        try:
            data = resp.json()
        except ValueError:
            raise HTTPStatusError(self._error(url, "the answer is not JSON"), code) from None
        if not isinstance(data, dict):
            raise HTTPStatusError(self._error(url, "the answer is not a JSON object"), code)
        return data

    async def _post(self, client: httpx.AsyncClient, path: str, body: dict[str, Any],
                    url: str | None = None) -> dict[str, Any]:
        """POST with retries; the first attempt to ``url`` if given, each retry (and every
        attempt without ``url``) to the next base URL."""
        result: dict[str, Any] = {}
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.max_retries + 1), wait=self._wait,
                retry=retry_if_exception_type(_Retryable), reraise=True,
                before_sleep=lambda s: log.debug("retrying: %s",
                                                 redact(str(s.outcome.exception()))),
            ):
                with attempt:
                    first = url is not None and attempt.retry_state.attempt_number == 1
                    result = await self._post_once(
                        client, (url if first else self._next_url()) + path, body)
        except _Retryable as exc:
            raise TunewiseError(self._error(
                exc.url, f"{exc.why}; gave up after {self.max_retries + 1} attempts"),
                field="backend") from None
        return result

    async def _gather(self, jobs: list[Job], sink: Callable[[int, Any], None] | None
                      ) -> list[Any]:
        sem = asyncio.Semaphore(self.concurrency)
        async with self._client(self.concurrency) as client:

            async def one(pos: int, job: Job) -> tuple[int, Any]:
                async with sem:
                    return pos, await job(client)

            self._free = asyncio.Queue()
            for url in self.urls:
                self._free.put_nowait(url)
            tasks = [asyncio.ensure_future(one(i, job)) for i, job in enumerate(jobs)]
            done: dict[int, Any] = {}
            try:
                for fut in asyncio.as_completed(tasks):
                    pos, value = await fut
                    done[pos] = value
                    if sink is not None:
                        sink(pos, value)
            except BaseException:  # the first request that fails for good stops the call
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return [done[i] for i in range(len(jobs))]

    def _call(self, jobs: list[Job]) -> list[Any]:
        """Run jobs concurrently from synchronous code (even inside a running loop)."""
        if not jobs:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._gather(jobs, self.on_result))
        # Inside a running loop (a web handler): run in a thread, without the per-answer
        # sink (the store's connection belongs to this thread); the chunk stores them.
        return self._run_sync(lambda: self._gather(jobs, None))

    @staticmethod
    def _run_sync(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Run a coroutine to its end from synchronous code, in a thread when this thread
        already runs an event loop (a web handler)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(make())
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(make())).result()

    @contextlib.asynccontextmanager
    async def _server(self) -> AsyncIterator[str]:
        """Hold one base URL for a job's requests (its prompt stays in that server's cache);
        other jobs wait for a free one."""
        assert self._free is not None
        url = await self._free.get()
        try:
            yield url
        finally:
            self._free.put_nowait(url)

    async def _get_json(self, client: httpx.AsyncClient, url: str,
                        body: dict[str, Any] | None = None,
                        failed: list[str] | None = None) -> dict[str, Any] | None:
        """One un-retried request; its JSON object, or None for any failure (``failed``
        collects the URLs that got no answer: timeout, connection error, 429 or 5xx)."""
        try:
            resp = await self._send(client, url, body)
        except _Retryable:
            if failed is not None:
                failed.append(url)
            return None
        if resp.status_code != 200:
            return None
        try:
            data = resp.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _request(self, url: str, body: dict[str, Any] | None) -> httpx.Response:
        """One un-retried request from synchronous code, under the same total deadline
        (:meth:`_send`); raises :class:`_Retryable` on a timeout or connection failure."""

        async def go() -> httpx.Response:
            async with self._client(1) as client:
                return await self._send(client, url, body)

        return self._run_sync(go)

    def _try(self, path: str, body: dict[str, Any] | None, root: bool = True
             ) -> dict[str, Any] | None:
        """One un-retried request for an optional feature; None when it is not offered."""
        base = self._next_url()
        url = (self._root(base) if root else base) + path

        async def go() -> dict[str, Any] | None:
            async with self._client(1) as client:
                return await self._get_json(client, url, body)

        return self._run_sync(go)

    # ---- text ----------------------------------------------------------------------
    def _tokenizer(self) -> Any:
        if self._tok is None and self.tokenizer_name:
            require("local", feature=f"tokenizer '{self.tokenizer_name}'")
            from transformers import AutoTokenizer

            from tunewise.backends.local import resolve_model
            from tunewise.noise import quiet_libraries

            quiet_libraries()
            try:
                self._tok = AutoTokenizer.from_pretrained(resolve_model(self.tokenizer_name))
            except OSError as exc:
                raise TunewiseError(f"cannot load tokenizer '{self.tokenizer_name}' ({exc})"
                                    .splitlines()[0], field="backend.tokenizer") from None
        return self._tok

    def _server_template(self, prompt: Messages) -> str | None:
        """The prompt rendered by the server's /apply-template (llama.cpp), if offered."""
        if self._features.get("apply_template") is False:
            return None
        data = self._try("/apply-template", {"messages": prompt})
        if data is not None and isinstance(data.get("prompt"), str):
            self._features["apply_template"] = True
            return data["prompt"]
        if self._features.get("apply_template"):  # it worked before: do not guess now
            raise TunewiseError(self._error(self._root(self.urls[0]) + "/apply-template",
                                            "failed"), field="backend")
        self._features["apply_template"] = False
        return None

    def exact_template(self) -> bool:
        """True when render() gives the exact text the server's chat endpoint builds."""
        if self._tokenizer() is not None:
            return True
        return self._server_template([{"role": "user", "content": "hi"}]) is not None

    def render(self, prompt: Messages) -> str:
        """The prompt as the model sees it: the chat template when known, else readable."""
        tok = self._tokenizer()
        if tok is not None:
            return tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return self._server_template(prompt) or readable(prompt)

    def _local_count(self, text: str) -> int:
        tok = self._tokenizer()
        if tok is not None:
            return len(tok(text, add_special_tokens=False).input_ids)
        return max(1, round(len(text) / CHARS_PER_TOKEN))

    def _server_count(self, text: str) -> int | None:
        how = self._features.get("tokenize")
        if how is None:
            for name in ("extras", "tokenize"):
                self._features["tokenize"] = name
                if (n := self._server_count(text)) is not None:
                    return n
            self._features["tokenize"] = False
            return None
        if how == "extras":  # llama-cpp-python
            data = self._try("/extras/tokenize/count", {"input": text, "model": self.model},
                             root=True)
            return int(data["count"]) if data and "count" in data else None
        if how == "tokenize":  # llama.cpp server ("content"), vLLM ("prompt")
            data = self._try("/tokenize", {"content": text, "prompt": text, "model": self.model,
                                           "add_special": False})
            return len(data["tokens"]) if data and isinstance(data.get("tokens"), list) else None
        return None

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text``: local tokenizer, else the server's tokenizer, else ~4 chars."""
        if text in self._counts:
            return self._counts[text]
        if self._tokenizer() is not None:
            n = self._local_count(text)
        else:
            n = self._server_count(text) or self._local_count(text)
        if len(self._counts) < 100_000:
            self._counts[text] = n
        return n

    @property
    def context_length(self) -> int | None:
        """The served context window when the server says (vLLM ``max_model_len``)."""
        if "context" not in self._features:
            models = self._features.get("models") or self._try("/models", None, root=False)
            entry = served_entry(models, self.model) or {}
            length = entry.get("max_model_len")
            ok = isinstance(length, int) and not isinstance(length, bool) and length > 0
            self._features["context"] = length if ok else None
        return self._features["context"]

    # ---- generation ----------------------------------------------------------------
    def generate(self, prompts: list[Messages], max_tokens: int,
                 stop: list[str] | None = None) -> list[Completion]:
        """Greedy chat completions, ``concurrency`` at a time."""

        def job(prompt: Messages) -> Job:
            async def run(client: httpx.AsyncClient) -> Completion:
                body: dict[str, Any] = {"model": self.model, "messages": prompt,
                                        "temperature": 0, "max_tokens": max_tokens}
                if stop:
                    body["stop"] = stop[:4]  # the OpenAI API accepts at most four
                start = time.perf_counter()
                data = await self._post(client, "/chat/completions", body)
                latency = time.perf_counter() - start
                text = cut_at_stop(self._checked(message_text, data), stop)
                prompt_n = self._checked(lambda d: usage_count(d, "prompt_tokens"), data)
                completion_n = self._checked(lambda d: usage_count(d, "completion_tokens"), data)
                return Completion(text, prompt_n or self._local_count(readable(prompt)),
                                  completion_n or self._local_count(text), latency)

            return run

        return self._call([job(p) for p in prompts])

    def _checked(self, read: Callable[[dict[str, Any]], Any], data: dict[str, Any]) -> Any:
        try:
            return read(data)
        except ValueError as exc:
            raise TunewiseError(self._error(self.urls[0], f"unexpected answer: {exc}"),
                                field="backend") from None

    # ---- scoring -------------------------------------------------------------------
    def _resolve_method(self) -> str:
        if "method" in self._features:
            return self._features["method"]
        method = self.score_method
        if method == "forced":
            self._probe_forced()
        if method in ("auto", "logprob"):
            usable = self.exact_template() and self._echoes_logprobs()
            if method == "logprob" and not usable:
                raise TunewiseError(
                    "score_method logprob needs backend.tokenizer (or a server with "
                    "/apply-template) and a server that echoes prompt log-probs; use "
                    "score_method: constrained", field="backend.score_method")
            method = "logprob" if usable else "constrained"
        self._features["method"] = method
        return method

    def _probe_forced(self) -> None:
        """One tiny forced completion, so a server that cannot do it fails at once, with
        its reason, instead of after every retry of every item."""
        tok = self._tokenizer()
        if tok is None:
            raise TunewiseError("score_method forced needs backend.tokenizer (the token ids "
                                "of each label)", field="backend.tokenizer")
        ids = tok("Yes, thank you", add_special_tokens=False).input_ids[:2]
        url = self.urls[0]
        why = ""
        try:
            resp = self._request(url + "/completions", {
                "model": self.model, "prompt": "Hello", "max_tokens": len(ids), "temperature": 0,
                "logprobs": 1, "grammar": token_grammar(ids)})
        except _Retryable as exc:
            why = exc.why
        else:
            if resp.status_code != 200:
                why = f"HTTP {resp.status_code}{http_detail(resp)}"
            else:
                try:
                    forced_logprobs(resp.json(), len(ids))
                except ValueError as exc:  # also a body that is not JSON
                    why = str(exc)
        if why:
            raise TunewiseError(self._error(
                url, f"score_method forced does not work here: {why}. llama-cpp-python "
                "needs --logits_all true (LLAMA_LOGITS_ALL=1 for scripts/llama_server.sh); "
                "other servers: score_method constrained"), field="backend.score_method")

    def _echoes_logprobs(self) -> bool:
        data = self._try("/completions", {"model": self.model, "prompt": "Hello world",
                                          "max_tokens": 1, "temperature": 0, "echo": True,
                                          "logprobs": 1}, root=False)
        try:
            lp = data["choices"][0]["logprobs"]  # type: ignore[index]
            return any(x is not None for x in lp["token_logprobs"]) and bool(lp["text_offset"])
        except (KeyError, IndexError, TypeError):
            return False

    def score(self, prompts: list[Messages], choices: list[list[str]]) -> list[Scored]:
        """Log-probability of each choice (see the module docstring for the two methods)."""
        if not prompts:
            return []
        method = self._resolve_method()
        if method == "logprob":
            eot = getattr(self._tokenizer(), "eos_token", None) or ""
            eot = eot if self.score_end_of_turn else ""
            jobs = [self._logprob_job(self.render(p), opts, eot)
                    for p, opts in zip(prompts, choices, strict=True)]
        elif method == "forced":
            label_ids = {key: self._label_ids(list(key))
                         for key in dict.fromkeys(map(tuple, choices))}  # once per label set
            jobs = [self._forced_job(self.render(p), label_ids[tuple(opts)])
                    for p, opts in zip(prompts, choices, strict=True)]
        else:
            jobs = [self._constrained_job(p, opts)
                    for p, opts in zip(prompts, choices, strict=True)]
        return self._call(jobs)

    def _logprob_job(self, text: str, opts: list[str], eot: str) -> Job:
        # Tokens of each choice as it follows the prompt (joint tokenization, so merges
        # across the boundary count once), from the tokenizer or the server's tokenizer.
        n_prompt = self.count_tokens(text)
        sizes = [self.count_tokens(text + c + eot) - n_prompt for c in opts]

        async def run(client: httpx.AsyncClient) -> Scored:
            async with self._server() as url:
                return await one_server(client, url)

        async def one_server(client: httpx.AsyncClient, url: str) -> Scored:
            start = time.perf_counter()
            logps: list[float] = []
            for choice, n_choice in zip(opts, sizes, strict=True):  # in a row: prefix reuse
                full = text + choice + eot
                data = await self._post(client, "/completions", {
                    "model": self.model, "prompt": full, "max_tokens": 1, "temperature": 0,
                    "echo": True, "logprobs": 1}, url)

                def read(d: dict[str, Any], full: str = full, n: int = n_choice) -> float:
                    try:
                        answer = d["choices"][0]
                        generated = 0 if answer["text"] == full else 1  # EOS is not echoed
                        return span_logprob(answer["logprobs"]["token_logprobs"], n, generated)
                    except (KeyError, IndexError, TypeError) as exc:
                        raise ValueError(f"no echoed log-probs ({exc})") from None

                logps.append(self._checked(read, data))
            return Scored(logps, n_prompt, time.perf_counter() - start, method="logprob")

        return run

    def _label_ids(self, opts: list[str]) -> list[list[int]]:
        """Token ids of each label as the forced grammar will spell them."""
        tok = self._tokenizer()
        ids = [tok(c, add_special_tokens=False).input_ids for c in opts]
        special = set(tok.all_special_ids)
        for choice, x in zip(opts, ids, strict=True):
            if special & set(x):  # llama.cpp aborts on a grammar that forces a control token
                raise TunewiseError(f"label {choice!r} contains a special token; score_method "
                                    "forced cannot score it (use constrained)",
                                    field="backend.score_method")
        return ids

    def _forced_job(self, text: str, ids: list[list[int]]) -> Job:
        n_prompt = self.count_tokens(text)

        async def run(client: httpx.AsyncClient) -> Scored:
            async with self._server() as url:
                start = time.perf_counter()
                logps = [await self._forced_logprob(client, url, text, c) for c in ids]
            return Scored(logps, n_prompt, time.perf_counter() - start, method="forced")

        return run

    async def _forced_logprob(self, client: httpx.AsyncClient, url: str, text: str,
                              ids: list[int]) -> float:
        """Sum of the log-probs of ``ids`` after ``text``: the grammar makes the server
        generate exactly these tokens; the log-probs it reports are the model's own."""
        if not ids:
            return 0.0
        data = await self._post(client, "/completions", {
            "model": self.model, "prompt": text, "max_tokens": len(ids), "temperature": 0,
            "logprobs": 1, "grammar": token_grammar(ids)}, url)
        return sum(self._checked(lambda d: forced_logprobs(d, len(ids)), data))

    def _constrained_job(self, prompt: Messages, opts: list[str]) -> Job:
        async def run(client: httpx.AsyncClient) -> Scored:
            body: dict[str, Any] = {
                "model": self.model, "messages": prompt, "temperature": 0,
                "max_tokens": max(len(c) for c in opts) // 2 + 8,
            }
            if self._grammar:
                body["grammar"] = choice_grammar(opts)
                body["guided_choice"] = opts
            start = time.perf_counter()
            try:
                data = await self._post(client, "/chat/completions", body)
            except HTTPStatusError as exc:
                if "grammar" not in body or exc.status not in (400, 422):
                    raise
                self._grammar = False  # e.g. a hosted API: answer freely, parse the label
                body.pop("grammar")
                body.pop("guided_choice")
                data = await self._post(client, "/chat/completions", body)
            latency = time.perf_counter() - start
            hit = parse_label(self._checked(message_text, data), opts)
            logps = [0.0 if i == hit else CONSTRAINED_MISS for i in range(len(opts))]
            tokens = (self._checked(lambda d: usage_count(d, "prompt_tokens"), data)
                      or self._local_count(readable(prompt)))
            return Scored(logps, tokens, latency, method="constrained")

        return run
