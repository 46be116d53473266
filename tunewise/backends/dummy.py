"""A deterministic, dependency-free backend for tests (like DSPy's DummyLM).

It is not random noise: it behaves like a weak in-context learner, so tests of few-shot,
retrieval and caching can check that better context gives better answers.

- ``score``: a choice scores higher the more its words overlap the prompt and the more the
  shots whose input resembles the question give it as their answer; plus a small
  deterministic hash jitter and a length cost.
- ``generate``: answers with the assistant turn of the shot whose user message best
  overlaps the question; with no shots, with the sentence of the prompt that best overlaps
  the question's words (so a retrieved passage containing the answer helps); else echoes.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Literal

from pydantic import Field

from tunewise.backends.base import Completion, Messages, Scored
from tunewise.task import SEED_MAX, BackendSpec

_WORD = re.compile(r"[a-z0-9]+")


class DummySpec(BackendSpec):
    """The dummy backend: deterministic and model-free, for tests and dry runs."""

    kind: Literal["dummy"] = Field(
        "dummy", description=BackendSpec.model_fields["kind"].description)
    seed: int = Field(0, ge=0, le=SEED_MAX,
                      description="Seed of the dummy backend's deterministic choices.")

    def build(self) -> DummyBackend:
        return DummyBackend(seed=self.seed, batch_size=self.batch_size)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _jitter(*parts: str) -> float:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


class DummyBackend:
    """Deterministic stand-in for a language model."""

    def __init__(self, seed: int = 0, batch_size: int = 8) -> None:
        self.seed = seed
        self.batch_size = batch_size
        self.id = f"dummy:v1:seed={seed}"
        self.calls = 0  # forward passes actually made (tests count them)
        # Test-only: seconds per prompt, so a kill can land mid-rung (tests/test_resume.py).
        # Not part of ``id``: a slow dummy answers exactly like a fast one.
        self.delay_s = float(os.environ.get("TUNEWISE_DUMMY_DELAY_S") or 0)

    def _wait(self, n: int) -> None:
        if self.delay_s > 0:
            time.sleep(self.delay_s * n)

    def render(self, prompt: Messages) -> str:
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in prompt) + "<assistant>\n"

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + text.count("\n")

    def score(self, prompts: list[Messages], choices: list[list[str]]) -> list[Scored]:
        self.calls += len(prompts)
        self._wait(len(prompts))
        out = []
        for prompt, opts in zip(prompts, choices, strict=True):
            context = _words(" ".join(m["content"] for m in prompt))
            query = _words(prompt[-1]["content"])
            # Shots vote for their answer in proportion to how much they resemble the query.
            votes: dict[str, int] = {}
            for user, reply in zip(prompt, prompt[1:], strict=False):
                if user["role"] == "user" and reply["role"] == "assistant":
                    sim = len(_words(user["content"]) & query)
                    votes[reply["content"]] = votes.get(reply["content"], 0) + sim
            logps = []
            for choice in opts:
                cw = _words(choice)
                overlap = len(cw & context) + 2 * len(cw & query) + votes.get(choice, 0)
                logps.append(
                    overlap - 0.3 * len(cw) - 1.0 + 0.5 * _jitter(str(self.seed), choice,
                                                                   prompt[-1]["content"])
                )
            out.append(Scored(logps, self.count_tokens(self.render(prompt)), 0.001))
        return out

    def generate(self, prompts: list[Messages], max_tokens: int,
                 stop: list[str] | None = None) -> list[Completion]:
        self.calls += len(prompts)
        self._wait(len(prompts))
        out = []
        for prompt in prompts:
            # Every template puts the input on the last line of the last message; the lines
            # above it (retrieved passages) are context to answer from, not the question.
            context, _, last_line = prompt[-1]["content"].rpartition("\n")
            question = _words(last_line)
            best, best_overlap = None, 0
            for user, reply in zip(prompt, prompt[1:], strict=False):
                if user["role"] == "user" and reply["role"] == "assistant":
                    overlap = len(_words(user["content"]) & question)
                    if overlap > best_overlap:
                        best, best_overlap = reply["content"], overlap
            if best is None:
                sentences = re.split(r"(?<=[.!?])\s+|\n+", " ".join(
                    m["content"] for m in prompt[:-1]) + " " + (context or last_line))
                scored = [(len(_words(s) & question), s) for s in sentences if s.strip()]
                best = max(scored)[1] if scored else prompt[-1]["content"]
            text = " ".join(best.split()[:max_tokens])
            for s in stop or []:
                if s and s in text:
                    text = text[: text.index(s)]
            out.append(Completion(text, self.count_tokens(self.render(prompt)),
                                  self.count_tokens(text), 0.001))
        return out
