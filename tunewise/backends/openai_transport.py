"""HTTP transport of the OpenAI-compatible backend: concurrency, retries, deadlines, replicas.

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
- **Nothing finished is lost.** Each answer is handed to ``on_result`` as it arrives (set
  by :class:`CachedBackend`), so a request failing for good, Ctrl-C or a kill loses only
  what was still in flight.

It knows nothing of models, prompts or scoring: a *job* is a coroutine given the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from tunewise.backends.openai_wire import http_detail, parse_retry_after
from tunewise.errors import TunewiseError, redact

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx
MAX_RETRY_AFTER_S = 120.0  # longer Retry-After requests are capped to this

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


def server_root(url: str) -> str:
    """The server root, where non-OpenAI extras such as /tokenize live."""
    return url[:-3] if url.endswith("/v1") else url


class Transport:
    """Requests to one or more base URLs serving the same model."""

    def __init__(self, urls: list[str], headers: dict[str, str], *, timeout_s: float,
                 concurrency: int, max_retries: int, backoff_s: float) -> None:
        self.urls = urls
        self.headers = headers
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.on_result: Callable[[int, Any], None] | None = None
        self._rr = itertools.count()
        self._rr_lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        self._free: asyncio.Queue[str] | None = None  # servers not held by a scoring job

    def next_url(self) -> str:
        """The next base URL, round-robin."""
        with self._rr_lock:
            return self.urls[next(self._rr) % len(self.urls)]

    @staticmethod
    def error(url: str, why: str) -> str:
        """One error line naming the URL, secrets masked."""
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

    def client(self, connections: int) -> httpx.AsyncClient:
        """An async client with the headers, the deadline and ``connections`` slots."""
        if self._ssl is None:  # building a TLS context costs ~50 ms: once per backend
            self._ssl = httpx.create_ssl_context()
        limits = httpx.Limits(max_connections=connections,
                              max_keepalive_connections=connections)
        return httpx.AsyncClient(headers=self.headers, timeout=self.timeout_s, limits=limits,
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
                self.error(url, f"HTTP {code}{hint}{http_detail(resp)}"), code)
        try:
            data = resp.json()
        except ValueError:
            raise HTTPStatusError(self.error(url, "the answer is not JSON"), code) from None
        if not isinstance(data, dict):
            raise HTTPStatusError(self.error(url, "the answer is not a JSON object"), code)
        return data

    async def post(self, client: httpx.AsyncClient, path: str, body: dict[str, Any],
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
                        client, (url if first else self.next_url()) + path, body)
        except _Retryable as exc:
            raise TunewiseError(self.error(
                exc.url, f"{exc.why}; gave up after {self.max_retries + 1} attempts"),
                field="backend") from None
        return result

    async def _gather(self, jobs: list[Job], sink: Callable[[int, Any], None] | None
                      ) -> list[Any]:
        sem = asyncio.Semaphore(self.concurrency)
        async with self.client(self.concurrency) as client:

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

    def call(self, jobs: list[Job]) -> list[Any]:
        """Run jobs concurrently from synchronous code (even inside a running loop)."""
        if not jobs:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._gather(jobs, self.on_result))
        # Inside a running loop (a web handler): run in a thread, without the per-answer
        # sink (the store's connection belongs to this thread); the chunk stores them.
        return self.run_sync(lambda: self._gather(jobs, None))

    @staticmethod
    def run_sync(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Run a coroutine to its end from synchronous code, in a thread when this thread
        already runs an event loop (a web handler)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(make())
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(make())).result()

    @contextlib.asynccontextmanager
    async def server(self) -> AsyncIterator[str]:
        """Hold one base URL for a job's requests (its prompt stays in that server's cache);
        other jobs wait for a free one."""
        assert self._free is not None
        url = await self._free.get()
        try:
            yield url
        finally:
            self._free.put_nowait(url)

    async def get_json(self, client: httpx.AsyncClient, url: str,
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

    def request(self, url: str, body: dict[str, Any] | None) -> httpx.Response:
        """One un-retried request from synchronous code, under the same total deadline
        (:meth:`_send`); raises :class:`_Retryable` on a timeout or connection failure."""

        async def go() -> httpx.Response:
            async with self.client(1) as client:
                return await self._send(client, url, body)

        return self.run_sync(go)

    def try_(self, path: str, body: dict[str, Any] | None, root: bool = True
             ) -> dict[str, Any] | None:
        """One un-retried request for an optional feature; None when it is not offered."""
        base = self.next_url()
        url = (server_root(base) if root else base) + path

        async def go() -> dict[str, Any] | None:
            async with self.client(1) as client:
                return await self.get_json(client, url, body)

        return self.run_sync(go)
