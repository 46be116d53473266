"""The Backend protocol and the store-backed cache every call goes through.

A backend turns chat prompts into completions (``generate``) or into the log-probability of
each candidate answer (``score``). Rungs never talk to a backend directly: they get a
:class:`CachedBackend`, which answers repeated calls from the store and records new ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tunewise.store import Store, cached_map, call_key

Messages = list[dict[str, str]]


@dataclass
class Completion:
    """A generated answer with what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool = False


@dataclass
class Scored:
    """Log-probability of each choice (same order as given) for one prompt."""

    logprobs: list[float]
    prompt_tokens: int
    latency_s: float
    cached: bool = False
    method: str = "logprob"


@runtime_checkable
class Backend(Protocol):
    """Where a model runs. ``id`` names model and settings and is part of every cache key."""

    id: str
    batch_size: int

    def generate(
        self, prompts: list[Messages], max_tokens: int, stop: list[str] | None = None
    ) -> list[Completion]:
        """Greedy completions of chat prompts."""
        ...

    def score(self, prompts: list[Messages], choices: list[list[str]]) -> list[Scored]:
        """Total log-probability of each choice as the assistant's full answer."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's tokenizer."""
        ...

    def render(self, prompt: Messages) -> str:
        """The exact text the model sees for ``prompt`` (for show-prompt)."""
        ...


Progress = Callable[[int], None]


class CachedBackend:
    """A backend whose every call is looked up in, and written to, the store.

    Work is sent to the inner backend in chunks so that finished chunks are saved before
    the next starts: a run killed mid-rung loses at most one chunk. A backend with an
    ``on_result`` attribute (remote ones) is handed a callback that stores each answer as
    it arrives, so for it a failure, Ctrl-C or kill loses nothing that finished.
    """

    def __init__(self, inner: Backend, store: Store, run_id: str | None = None,
                 rung: str = "", chunk: int | None = None) -> None:
        self.inner = inner
        self.store = store
        self.run_id = run_id
        self.rung = rung
        self.chunk = chunk or max(inner.batch_size * 4, 8)
        self.progress: Progress | None = None
        self._texts: dict[str, Any] = {}  # memo of render / count_tokens, shared by rungs
        attach = getattr(inner, "attach_store", None)
        if attach is not None:  # e.g. the openai backend remembers its server's identity
            attach(store)

    @property
    def id(self) -> str:
        return self.inner.id

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    def for_rung(self, rung: str) -> CachedBackend:
        """The same backend, with calls attributed to ``rung``."""
        other = CachedBackend(self.inner, self.store, self.run_id, rung, self.chunk)
        other._texts = self._texts
        return other

    def count_tokens(self, text: str) -> int:
        return self._remembered("count_tokens", text, self.inner.count_tokens)

    def render(self, prompt: Messages) -> str:
        return self._remembered("render", prompt, self.inner.render)

    def _remembered(self, kind: str, arg: Any, compute: Callable[[Any], Any]) -> Any:
        """``compute(arg)`` remembered in the store under the backend id: a re-run answered
        from the cache then sizes and shows prompts without loading the tokenizer (for the
        local backend that means without importing torch)."""
        key = call_key(self.id, kind, arg, {})
        if key not in self._texts:
            found = self.store.get_memo([key])
            if key in found:
                self._texts[key] = found[key]
            else:
                value = compute(arg)
                self.store.put_memo({key: value})
                self._texts[key] = value
        return self._texts[key]

    def _run(self, kind: str, requests: list[Any], params: dict[str, Any],
             compute: Callable[[list[int]], list[dict[str, Any]]],
             convert: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for start in range(0, len(requests), self.chunk):
            idx = list(range(start, min(start + self.chunk, len(requests))))

            def chunk_compute(miss: list[int], idx: list[int] = idx) -> list[dict[str, Any]]:
                wanted = [idx[m] for m in miss]
                streams = hasattr(self.inner, "on_result")
                if streams:  # a remote backend hands over each answer as it arrives
                    self.inner.on_result = lambda pos, res: self._keep(  # type: ignore[attr-defined]
                        kind, requests[wanted[pos]], params, convert(res))
                try:
                    return compute(wanted)
                finally:
                    if streams:
                        self.inner.on_result = None  # type: ignore[attr-defined]

            batch = cached_map(self.store, self.id, kind, [requests[i] for i in idx], params,
                               chunk_compute, run_id=self.run_id, rung=self.rung)
            results.extend(batch)
            if self.progress:
                self.progress(len(idx))
        return results

    def _keep(self, kind: str, request: Any, params: dict[str, Any], row: dict[str, Any]
              ) -> None:
        """Store one finished call at once, so a failure or a kill later in the chunk
        loses nothing that finished (its use is logged with the chunk, if it completes)."""
        cached_map(self.store, self.id, kind, [request], params, lambda miss: [row])

    def generate(self, prompts: list[Messages], max_tokens: int,
                 stop: list[str] | None = None) -> list[Completion]:
        params = {"max_tokens": max_tokens, "stop": stop or []}

        def convert(c: Completion) -> dict[str, Any]:
            return {"response": c.text, "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens, "latency_s": c.latency_s}

        def compute(indices: list[int]) -> list[dict[str, Any]]:
            done = self.inner.generate([prompts[i] for i in indices], max_tokens, stop)
            return [convert(c) for c in done]

        rows = self._run("generate", prompts, params, compute, convert)
        return [Completion(r["response"], r["prompt_tokens"], r["completion_tokens"],
                           r["latency_s"], r["cached"]) for r in rows]

    def score(self, prompts: list[Messages], choices: list[list[str]]) -> list[Scored]:
        requests = [{"prompt": p, "choices": c} for p, c in zip(prompts, choices, strict=True)]

        def convert(s: Scored) -> dict[str, Any]:
            return {"response": {"logprobs": s.logprobs, "method": s.method},
                    "prompt_tokens": s.prompt_tokens, "completion_tokens": 0,
                    "latency_s": s.latency_s}

        def compute(indices: list[int]) -> list[dict[str, Any]]:
            done = self.inner.score([prompts[i] for i in indices],
                                    [choices[i] for i in indices])
            return [convert(s) for s in done]

        rows = self._run("score", requests, {}, compute, convert)
        return [Scored(r["response"]["logprobs"], r["prompt_tokens"], r["latency_s"],
                       r["cached"], r["response"].get("method", "logprob")) for r in rows]
