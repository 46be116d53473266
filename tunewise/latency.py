"""Real latency: single requests at batch 1, timed after a warm-up, apart from throughput.

The per-item times of a rung's batched predictions are batch time / batch size: a
throughput figure, not the latency one user waits for. So after a rung predicts, a sample
of its test prompts (``decision.latency_sample``, default 20) is sent one at a time after
one warm-up request, and each wall-clock time is kept: p50/p95 of those are the rung's
latency, which the verdict compares with ``latency_ms``.

The timed requests go through the store like every call, under their own cache key (a
``timing`` parameter) and attributed to ``latency:<rung>`` in the run's usage. A re-run
that finds them cached does not time anything again: it reads the stored timings back and
marks them ``replayed``, never presenting them as fresh.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tunewise.backends.base import CachedBackend, Completion, Messages, Scored
from tunewise.store import cached_map


class TimedBackend:
    """Sends each request alone (batch 1) through the cache, timing misses by wall clock.

    It stands in for the rung's backend inside ``rungs.base.answer``, so the timed
    requests use exactly the rung's own prompts and generation settings.
    """

    def __init__(self, backend: CachedBackend, timing: str) -> None:
        self.backend, self.timing = backend, timing

    def _call(self, kind: str, request: Any, params: dict[str, Any],
              run: Any) -> dict[str, Any]:
        def compute(_miss: list[int]) -> list[dict[str, Any]]:
            started = time.perf_counter()
            row = run()
            return [{**row, "latency_s": time.perf_counter() - started}]

        b = self.backend
        (out,) = cached_map(b.store, b.id, kind, [request], {**params, "timing": self.timing},
                            compute, run_id=b.run_id, rung=b.rung)
        return out

    def score(self, prompts: list[Messages], choices: list[list[str]]) -> list[Scored]:
        out = []
        for prompt, opts in zip(prompts, choices, strict=True):
            def run(prompt: Messages = prompt, opts: list[str] = opts) -> dict[str, Any]:
                (s,) = self.backend.inner.score([prompt], [opts])
                return {"response": {"logprobs": s.logprobs, "method": s.method},
                        "prompt_tokens": s.prompt_tokens, "completion_tokens": 0}

            r = self._call("score", {"prompt": prompt, "choices": opts}, {}, run)
            out.append(Scored(r["response"]["logprobs"], r["prompt_tokens"], r["latency_s"],
                              r["cached"], r["response"].get("method", "logprob")))
        return out

    def generate(self, prompts: list[Messages], max_tokens: int,
                 stop: list[str] | None = None) -> list[Completion]:
        out = []
        for prompt in prompts:
            def run(prompt: Messages = prompt) -> dict[str, Any]:
                (c,) = self.backend.inner.generate([prompt], max_tokens, stop)
                return {"response": c.text, "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens}

            r = self._call("generate", prompt, {"max_tokens": max_tokens,
                                                "stop": stop or []}, run)
            out.append(Completion(r["response"], r["prompt_tokens"], r["completion_tokens"],
                                  r["latency_s"], r["cached"]))
        return out


def single_request_latency(ctx: Any, backend: CachedBackend, examples: list[Any],
                           prompts: list[Messages], sample: int) -> dict[str, Any] | None:
    """p50/p95 of ``sample`` single requests (batch 1) after one warm-up request.

    Args:
        ctx: the run context (``answer`` reads the task's labels and generation settings).
        backend: the rung's backend; its calls are attributed to ``latency:<rung>``.
        examples, prompts: the rung's test items and prompts; the first ``sample`` are
            timed, the one after them warms up (or the first, when there are no more).
        sample: how many requests to time (0: none).

    Returns:
        ``{single_p50_ms, single_p95_ms, n, batch_size, replayed, note}`` or None.
    """
    from tunewise.rungs.base import answer

    if sample <= 0 or not examples:
        return None
    timed = backend.for_rung(f"latency:{backend.rung}")
    w = sample if len(examples) > sample else 0
    answer(ctx, TimedBackend(timed, "warm-up"), [examples[w]], [prompts[w]])
    preds = answer(ctx, TimedBackend(timed, "batch1"), examples[:sample], prompts[:sample])
    ms = [p.latency_s * 1000 for p in preds]
    replayed = all(p.cached for p in preds)
    note = ("read back from the cache: timed in an earlier run, not measured again"
            if replayed else f"{len(ms)} single requests timed after one warm-up")
    return {"single_p50_ms": float(np.percentile(ms, 50)),
            "single_p95_ms": float(np.percentile(ms, 95)), "n": len(ms), "batch_size": 1,
            "replayed": replayed, "note": note}


def throughput(latencies_s: list[float]) -> float | None:
    """Items per second at the run's batch size, from the measured per-item times."""
    total = sum(latencies_s)
    return len(latencies_s) / total if total > 0 else None
