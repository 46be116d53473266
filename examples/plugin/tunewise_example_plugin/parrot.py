"""A backend: ``kind: parrot``, a model-free baseline that answers with the input's words.

``generate`` repeats the question (the last line of the prompt); ``score`` ranks each choice
by how many of its words the question contains. No model, no network: a floor that any
real model should beat. The whole backend is this file plus one entry point: the spec class
validates the task's ``backend:`` keys (``kind: parrot`` plus the common ones and its own
``echo_words``), and ``build()`` makes the backend.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from tunewise.backends.base import Completion, Messages, Scored
from tunewise.task import BackendSpec

_WORD = re.compile(r"\w+")


class ParrotSpec(BackendSpec):
    """``backend: {kind: parrot, echo_words: 8}``."""

    kind: Literal["parrot"] = Field("parrot", description="parrot: repeats the input.")
    echo_words: int = Field(8, ge=1, description="Most words of the input it repeats.")
    prompt_only = True  # nothing to fine-tune

    def build(self) -> ParrotBackend:
        return ParrotBackend(self)


class ParrotBackend:
    """The Backend protocol (``tunewise.backends.base.Backend``) in a few lines."""

    def __init__(self, spec: ParrotSpec) -> None:
        self.spec = spec
        self.batch_size = spec.batch_size
        self.id = f"parrot:v1:words={spec.echo_words}"  # part of every cache key

    def render(self, prompt: Messages) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))

    def generate(self, prompts: list[Messages], max_tokens: int,
                 stop: list[str] | None = None) -> list[Completion]:
        out = []
        for prompt in prompts:
            question = prompt[-1]["content"].rsplit("\n", 1)[-1]
            words = question.split()[: min(max_tokens, self.spec.echo_words)]
            out.append(Completion(" ".join(words), self.count_tokens(self.render(prompt)),
                                  len(words), 0.0))
        return out

    def score(self, prompts: list[Messages], choices: list[list[str]]) -> list[Scored]:
        out = []
        for prompt, options in zip(prompts, choices, strict=True):
            question = set(_WORD.findall(prompt[-1]["content"].rsplit("\n", 1)[-1].lower()))
            logps = [float(len(question & set(_WORD.findall(c.lower())))) - 0.01 * i
                     for i, c in enumerate(options)]
            out.append(Scored(logps, self.count_tokens(self.render(prompt)), 0.0))
        return out
