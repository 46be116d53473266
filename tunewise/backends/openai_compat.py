"""OpenAI-compatible backend: vLLM, llama.cpp, Ollama, TGI servers or a hosted API.

The backend class is thin: it reads its settings, owns the key, and joins three parts,
each in its own module:

- :mod:`~tunewise.backends.openai_transport`: concurrency, retries with backoff and
  ``Retry-After``, a total deadline per attempt, round-robin over replicas, and each answer
  handed to the cache as it arrives;
- :mod:`~tunewise.backends.openai_probe`: who the servers are (the server part of the
  cache identity) and what they offer (tokenizer, chat template, echoed log-probs, forced
  grammar, context window);
- :mod:`~tunewise.backends.openai_scoring`: the three scoring strategies (``logprob``,
  ``forced``, ``constrained``);

plus the pure wire format (:mod:`~tunewise.backends.openai_wire`) and server identity
(:mod:`~tunewise.backends.openai_identity`), which touch no network.

- **The key stays secret.** It is read from the environment variable *named* in the task,
  goes only into the Authorization header, and is registered for redaction; it is never
  part of the backend id (the cache key), the store, logs or error lines.
- **Token counts** come from the server's ``usage``. ``count_tokens`` uses the local
  tokenizer when one is configured, else the server's tokenize endpoint (llama.cpp,
  llama-cpp-python, vLLM), else the ~4 characters per token rule of thumb.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, field_validator, model_validator

from tunewise.backends.base import Completion, Messages, Scored
from tunewise.backends.openai_identity import server_key
from tunewise.backends.openai_probe import ServerProbe
from tunewise.backends.openai_scoring import (
    CONSTRAINED_MISS,
    ConstrainedScoring,
    ForcedScoring,
    LogprobScoring,
)
from tunewise.backends.openai_transport import (
    MAX_RETRY_AFTER_S,
    HTTPStatusError,
    Job,
    Transport,
    _Retryable,
)
from tunewise.backends.openai_wire import (
    check_api_key,
    cut_at_stop,
    message_text,
    parse_label,
    parse_retry_after,
    read_answer,
    readable,
    span_logprob,
    token_grammar,
    usage_count,
)
from tunewise.errors import TunewiseError, redact, register_secret
from tunewise.extras import require
from tunewise.task import _ENV_NAME, BackendSpec, _looks_like_key

# Names tests and callers have always imported from this module.
__all__ = ["CONSTRAINED_MISS", "DEFAULT_BASE_URL", "MAX_RETRY_AFTER_S", "HTTPStatusError",
           "OpenAIBackend", "OpenAISpec", "_Retryable", "parse_label", "parse_retry_after",
           "span_logprob", "token_grammar"]

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
CHARS_PER_TOKEN = 4  # rule of thumb for English BPE when no tokenizer is reachable


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
        self.max_retries = spec.max_retries
        self.score_method = spec.score_method
        self.backoff_s = backoff_s
        self.tokenizer_name = spec.tokenizer
        headers = {"User-Agent": "tunewise"}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env, "")
            if not key:
                raise TunewiseError(
                    f"environment variable {spec.api_key_env} is not set; export the API "
                    "key in it", field="backend.api_key_env")
            register_secret(key)
            register_secret(key.strip())
            check_api_key(spec.api_key_env, key)
            headers["Authorization"] = f"Bearer {key}"
        self.transport = Transport(self.urls, headers, timeout_s=spec.timeout_s,
                                   concurrency=spec.concurrency, max_retries=spec.max_retries,
                                   backoff_s=backoff_s)
        self.probe = ServerProbe(self.transport, self.model)
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
        self._tok: Any = None
        self._counts: dict[str, int] = {}
        self.constrained = ConstrainedScoring(self.transport, self.model, self._local_count)
        self._scorer: LogprobScoring | ForcedScoring | ConstrainedScoring | None = None

    @property
    def on_result(self) -> Callable[[int, Any], None] | None:
        """Called with each answer as it arrives (set by :class:`CachedBackend`)."""
        return self.transport.on_result

    @on_result.setter
    def on_result(self, sink: Callable[[int, Any], None] | None) -> None:
        self.transport.on_result = sink

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
                self.servers = self.probe.recall(self.probe.identify())
                self._id = f"{self._settings_id}:server={server_key(self.model, self.servers)}"
                if not all(s["verified"] for s in self.servers):
                    unknown = ", ".join(s["url"] for s in self.servers if not s["verified"])
                    log.warning("%s", redact(
                        f"{unknown}: /models names no model '{self.model}' (or no answer), "
                        "so cached answers are keyed by base URL and model name only"))
            return self._id

    def attach_store(self, store: Any) -> None:
        """Remember each server's identity in ``store`` (CachedBackend calls this), so a
        cached re-run with the server down still finds its answers (see
        :meth:`ServerProbe.recall`)."""
        self.probe.store = store

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

    def exact_template(self) -> bool:
        """True when render() gives the exact text the server's chat endpoint builds."""
        if self._tokenizer() is not None:
            return True
        return self.probe.server_template([{"role": "user", "content": "hi"}]) is not None

    def render(self, prompt: Messages) -> str:
        """The prompt as the model sees it: the chat template when known, else readable."""
        tok = self._tokenizer()
        if tok is not None:
            return tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return self.probe.server_template(prompt) or readable(prompt)

    def _local_count(self, text: str) -> int:
        tok = self._tokenizer()
        if tok is not None:
            return len(tok(text, add_special_tokens=False).input_ids)
        return max(1, round(len(text) / CHARS_PER_TOKEN))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text``: local tokenizer, else the server's tokenizer, else ~4 chars."""
        if text in self._counts:
            return self._counts[text]
        if self._tokenizer() is not None:
            n = self._local_count(text)
        else:
            n = self.probe.server_count(text) or self._local_count(text)
        if len(self._counts) < 100_000:
            self._counts[text] = n
        return n

    @property
    def context_length(self) -> int | None:
        """The served context window when the server says (vLLM ``max_model_len``)."""
        return self.probe.context_length()

    # ---- generation ----------------------------------------------------------------
    def generate(self, prompts: list[Messages], max_tokens: int,
                 stop: list[str] | None = None) -> list[Completion]:
        """Greedy chat completions, ``concurrency`` at a time."""
        transport, url = self.transport, self.urls[0]

        def job(prompt: Messages) -> Job:
            async def run(client: httpx.AsyncClient) -> Completion:
                body: dict[str, Any] = {"model": self.model, "messages": prompt,
                                        "temperature": 0, "max_tokens": max_tokens}
                if stop:
                    body["stop"] = stop[:4]  # the OpenAI API accepts at most four
                start = time.perf_counter()
                data = await transport.post(client, "/chat/completions", body)
                latency = time.perf_counter() - start
                text = cut_at_stop(read_answer(message_text, data, url), stop)
                prompt_n = read_answer(lambda d: usage_count(d, "prompt_tokens"), data, url)
                completion_n = read_answer(lambda d: usage_count(d, "completion_tokens"), data,
                                           url)
                return Completion(text, prompt_n or self._local_count(readable(prompt)),
                                  completion_n or self._local_count(text), latency)

            return run

        return transport.call([job(p) for p in prompts])

    # ---- scoring -------------------------------------------------------------------
    def _resolve_method(self) -> str:
        features = self.probe.features
        if "method" in features:
            return features["method"]
        method = self.score_method
        if method == "forced":
            self.probe.check_forced(self._tokenizer())
        if method in ("auto", "logprob"):
            usable = self.exact_template() and self.probe.echoes_logprobs()
            if method == "logprob" and not usable:
                raise TunewiseError(
                    "score_method logprob needs backend.tokenizer (or a server with "
                    "/apply-template) and a server that echoes prompt log-probs; use "
                    "score_method: constrained", field="backend.score_method")
            method = "logprob" if usable else "constrained"
        features["method"] = method
        return method

    def _scoring(self) -> LogprobScoring | ForcedScoring | ConstrainedScoring:
        """The strategy the server supports (decided once; see :mod:`openai_scoring`)."""
        method = self._resolve_method()
        if self._scorer is None or self._scorer.method != method:
            if method == "logprob":
                eot = getattr(self._tokenizer(), "eos_token", None) or ""
                self._scorer = LogprobScoring(self.transport, self.model, self.render,
                                              self.count_tokens,
                                              eot if self.score_end_of_turn else "")
            elif method == "forced":
                self._scorer = ForcedScoring(self.transport, self.model, self.render,
                                             self.count_tokens, self._tokenizer())
            else:
                self._scorer = self.constrained
        return self._scorer

    def score(self, prompts: list[Messages], choices: list[list[str]]) -> list[Scored]:
        """Log-probability of each choice (see :mod:`openai_scoring` for the methods)."""
        if not prompts:
            return []
        return self.transport.call(self._scoring().jobs(prompts, choices))
