"""Scoring strategies of the OpenAI-compatible backend: log-probs of each label choice.

- ``logprob``: each choice is appended to the prompt rendered with the model's chat
  template and sent to ``/completions`` with ``echo`` + ``logprobs``; the choice's token
  log-probs are summed (exactly what the local backend computes). This needs the template
  (``backend.tokenizer``, or a server with ``/apply-template``) and a server that echoes
  prompt log-probs.
- ``forced``: for llama.cpp servers, whose echoed log-probs cost seconds per request
  (llama-cpp-python sorts the vocabulary in Python for every prompt token): one
  ``/completions`` request per choice whose GBNF grammar admits exactly the choice's token
  ids (``<[id]>``, from the local tokenizer), so the server generates the choice and
  reports the log-prob of each of its tokens, computed before the grammar masks anything.
  An end-of-generation token is never reported, so these scores leave out the end-of-turn
  term (``score_end_of_turn``).
- ``constrained``: the model generates the label, restricted by a grammar where the server
  accepts one (llama.cpp ``grammar``, vLLM ``guided_choice``), and :func:`parse_label`
  maps the text to a label.

``Scored.method`` records which. A multi-request score (logprob, forced) keeps one server
for all the choices of an item, so the server's prompt cache evaluates the prompt once.
Each strategy turns (prompt, choices) into a transport *job*; the backend runs the jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tunewise.backends.base import Messages, Scored
from tunewise.backends.openai_transport import HTTPStatusError, Job, Transport
from tunewise.backends.openai_wire import (
    choice_grammar,
    forced_logprobs,
    message_text,
    parse_label,
    read_answer,
    readable,
    span_logprob,
    token_grammar,
    usage_count,
)
from tunewise.errors import TunewiseError

CONSTRAINED_MISS = -100.0  # log-prob given to the labels a constrained answer did not pick


class LogprobScoring:
    """Echoed prompt log-probs of the prompt followed by each choice."""

    method = "logprob"

    def __init__(self, transport: Transport, model: str, render: Callable[[Messages], str],
                 count_tokens: Callable[[str], int], eot: str) -> None:
        self.transport, self.model = transport, model
        self.render, self.count_tokens, self.eot = render, count_tokens, eot

    def jobs(self, prompts: list[Messages], choices: list[list[str]]) -> list[Job]:
        return [self._job(self.render(p), opts) for p, opts in zip(prompts, choices, strict=True)]

    def _job(self, text: str, opts: list[str]) -> Job:
        # Tokens of each choice as it follows the prompt (joint tokenization, so merges
        # across the boundary count once), from the tokenizer or the server's tokenizer.
        eot, transport = self.eot, self.transport
        n_prompt = self.count_tokens(text)
        sizes = [self.count_tokens(text + c + eot) - n_prompt for c in opts]

        async def run(client: httpx.AsyncClient) -> Scored:
            async with transport.server() as url:
                return await one_server(client, url)

        async def one_server(client: httpx.AsyncClient, url: str) -> Scored:
            start = time.perf_counter()
            logps: list[float] = []
            for choice, n_choice in zip(opts, sizes, strict=True):  # in a row: prefix reuse
                full = text + choice + eot
                data = await transport.post(client, "/completions", {
                    "model": self.model, "prompt": full, "max_tokens": 1, "temperature": 0,
                    "echo": True, "logprobs": 1}, url)

                def read(d: dict[str, Any], full: str = full, n: int = n_choice) -> float:
                    try:
                        answer = d["choices"][0]
                        generated = 0 if answer["text"] == full else 1  # EOS is not echoed
                        return span_logprob(answer["logprobs"]["token_logprobs"], n, generated)
                    except (KeyError, IndexError, TypeError) as exc:
                        raise ValueError(f"no echoed log-probs ({exc})") from None

                logps.append(read_answer(read, data, transport.urls[0]))
            return Scored(logps, n_prompt, time.perf_counter() - start, method="logprob")

        return run


class ForcedScoring:
    """Grammar-forced generation of each choice's token ids (llama.cpp servers)."""

    method = "forced"

    def __init__(self, transport: Transport, model: str, render: Callable[[Messages], str],
                 count_tokens: Callable[[str], int], tokenizer: Any) -> None:
        self.transport, self.model = transport, model
        self.render, self.count_tokens, self.tok = render, count_tokens, tokenizer

    def jobs(self, prompts: list[Messages], choices: list[list[str]]) -> list[Job]:
        label_ids = {key: self.label_ids(list(key))
                     for key in dict.fromkeys(map(tuple, choices))}  # once per label set
        return [self._job(self.render(p), label_ids[tuple(opts)])
                for p, opts in zip(prompts, choices, strict=True)]

    def label_ids(self, opts: list[str]) -> list[list[int]]:
        """Token ids of each label as the forced grammar will spell them."""
        tok = self.tok
        ids = [tok(c, add_special_tokens=False).input_ids for c in opts]
        special = set(tok.all_special_ids)
        for choice, x in zip(opts, ids, strict=True):
            if special & set(x):  # llama.cpp aborts on a grammar that forces a control token
                raise TunewiseError(f"label {choice!r} contains a special token; score_method "
                                    "forced cannot score it (use constrained)",
                                    field="backend.score_method")
        return ids

    def _job(self, text: str, ids: list[list[int]]) -> Job:
        n_prompt = self.count_tokens(text)

        async def run(client: httpx.AsyncClient) -> Scored:
            async with self.transport.server() as url:
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
        data = await self.transport.post(client, "/completions", {
            "model": self.model, "prompt": text, "max_tokens": len(ids), "temperature": 0,
            "logprobs": 1, "grammar": token_grammar(ids)}, url)
        return sum(read_answer(lambda d: forced_logprobs(d, len(ids)), data,
                               self.transport.urls[0]))


class ConstrainedScoring:
    """The model generates the label (under a grammar where the server takes one)."""

    method = "constrained"

    def __init__(self, transport: Transport, model: str,
                 local_count: Callable[[str], int]) -> None:
        self.transport, self.model, self.local_count = transport, model, local_count
        self.grammar = True  # cleared when the server rejects the grammar parameter

    def jobs(self, prompts: list[Messages], choices: list[list[str]]) -> list[Job]:
        return [self._job(p, opts) for p, opts in zip(prompts, choices, strict=True)]

    def _job(self, prompt: Messages, opts: list[str]) -> Job:
        transport = self.transport

        async def run(client: httpx.AsyncClient) -> Scored:
            body: dict[str, Any] = {
                "model": self.model, "messages": prompt, "temperature": 0,
                "max_tokens": max(len(c) for c in opts) // 2 + 8,
            }
            if self.grammar:
                body["grammar"] = choice_grammar(opts)
                body["guided_choice"] = opts
            start = time.perf_counter()
            try:
                data = await transport.post(client, "/chat/completions", body)
            except HTTPStatusError as exc:
                if "grammar" not in body or exc.status not in (400, 422):
                    raise
                self.grammar = False  # e.g. a hosted API: answer freely, parse the label
                body.pop("grammar")
                body.pop("guided_choice")
                data = await transport.post(client, "/chat/completions", body)
            latency = time.perf_counter() - start
            url = transport.urls[0]
            hit = parse_label(read_answer(message_text, data, url), opts)
            logps = [0.0 if i == hit else CONSTRAINED_MISS for i in range(len(opts))]
            tokens = (read_answer(lambda d: usage_count(d, "prompt_tokens"), data, url)
                      or self.local_count(readable(prompt)))
            return Scored(logps, tokens, latency, method="constrained")

        return run
