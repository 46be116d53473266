"""The Rung protocol, the registry, and the prediction step every rung shares.

A rung is one way of doing the task. ``prepare`` does the upfront work (choose shots, build
an index, train an adapter) and ``predict`` answers examples. Rungs never compute metrics.
A rung declares what it is on its class: ``name`` and ``meta`` (:class:`RungMeta`: family,
ladder position, data requirements, prompt parts). A new rung is one file plus one entry
point in the ``tunewise.rungs`` group (a built-in: one line in
``tunewise.plugins.BUILTIN_RUNGS``); the schema, the default ladder, the data checks and the
cost estimate read the rest from ``meta``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunewise.backends.base import CachedBackend, Messages
from tunewise.dataset import Document, Example, Split
from tunewise.errors import TunewiseError
from tunewise.plugins import RungMeta, rung
from tunewise.store import Store
from tunewise.task import TaskSpec


def __getattr__(name: str) -> dict[str, str]:
    """``FAMILY`` (rung name -> family), derived from the registered rungs when first read;
    new code asks ``tunewise.plugins.family(name)``."""
    if name == "FAMILY":
        from tunewise.plugins import family, rung_names

        return {n: family(n) or "" for n in rung_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Prediction:
    """One answer. ``probs`` is the distribution over labels for classification."""

    example_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool
    probs: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """Everything a rung may use; built once per run by the ladder."""

    task: TaskSpec
    examples: list[Example]
    split: Split
    labels: list[str] | None
    backend: CachedBackend
    store: Store
    run_id: str
    work_dir: Path
    corpus: list[Document] = field(default_factory=list)
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))
    shared: dict[str, Any] = field(default_factory=dict)  # lazily built helpers (embedder)
    model: str = ""  # name of the model (task.models) this context runs on
    peers: dict[str, RunContext] = field(default_factory=dict)  # every model's context, by name


@dataclass
class Prepared:
    """The outcome of ``prepare``: how to prompt, and what the preparation cost."""

    rung: str
    prompt_for: Callable[[Example], Messages]
    info: dict[str, Any] = field(default_factory=dict)
    upfront_s: float = 0.0
    backend: CachedBackend | None = None  # a rung-specific model (e.g. a LoRA adapter)


class Rung(Protocol):
    """One rung of the ladder."""

    name: str
    meta: RungMeta

    def requires(self, ctx: RunContext) -> str | None:
        """Why this rung cannot run for this task (None when it can)."""
        ...

    def prepare(self, ctx: RunContext) -> Prepared:
        """Upfront work; must not read the test split."""
        ...

    def predict(self, prepared: Prepared, examples: list[Example], ctx: RunContext
                ) -> list[Prediction]:
        """Answers for ``examples``."""
        ...


class RungUnavailable(TunewiseError):
    """The rung is registered but its implementation is not in this version."""


def get_rung(name: str) -> Rung:
    """Instantiate a registered rung (built-in or plugin) by name."""
    return rung(name).cls()


def softmax(logps: list[float]) -> list[float]:
    """Normalise log-probs over the label set."""
    top = max(logps)
    exps = [math.exp(x - top) for x in logps]
    total = sum(exps)
    return [e / total for e in exps]


def answer(ctx: RunContext, backend: CachedBackend, examples: list[Example],
           prompts: list[Messages]) -> list[Prediction]:
    """The prediction step all rungs share: label scoring or greedy generation."""
    if ctx.labels:
        scored = backend.score(prompts, [ctx.labels] * len(prompts))
        out = []
        for ex, s in zip(examples, scored, strict=True):
            probs = dict(zip(ctx.labels, softmax(s.logprobs), strict=True))
            best = max(probs, key=probs.__getitem__)
            out.append(Prediction(ex.id, best, s.prompt_tokens, 1, s.latency_s, s.cached,
                                  probs, {"method": s.method}))
        return out
    # An answer ends at the end of the model's turn, never at a newline: records, JSON and
    # multi-line answers must arrive whole (evaluate reads the answering part out of them).
    cap = ctx.task.backend.max_new_tokens
    done = backend.generate(prompts, cap, None)
    return [Prediction(ex.id, c.text, c.prompt_tokens, c.completion_tokens, c.latency_s,
                       c.cached, details={"truncated": True} if c.completion_tokens >= cap
                       else {})
            for ex, c in zip(examples, done, strict=True)]


class PromptRung:
    """Base for rungs whose prediction is 'render a prompt, ask the shared backend'."""

    name = ""
    meta: RungMeta

    def requires(self, ctx: RunContext) -> str | None:
        return None

    def predict(self, prepared: Prepared, examples: list[Example], ctx: RunContext
                ) -> list[Prediction]:
        backend = prepared.backend or ctx.backend  # the ladder attributes it to this rung
        return answer(ctx, backend, examples, [prepared.prompt_for(e) for e in examples])
